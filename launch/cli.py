"""The `labrl` command: `labrl {train,profile,eval,report,scale,scale-run,build-model} [options]` (`labrl CMD --help`)."""

from __future__ import annotations

import importlib
import os
import sys

# Imported on use: each command pulls in Ray, torch and vLLM, seconds during which a SIGTERM would
# find no handler (`launch.train` installs its own first thing).
COMMANDS = {"train": "launch.train", "profile": "launch.profile", "eval": "launch.evaluate",
            "report": "launch.report", "scale": "launch.scale", "scale-run": "launch.scale_run",
            "build-model": "launch.model_kit"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        names = ", ".join(COMMANDS)
        sys.stderr.write(f"usage: labrl {{{names}}} [options]\n")
        return 2
    # User code named by import path in a config (an env spec, a reference solver) lives beside the
    # user, as with `python -m`: the console script alone would not find it.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
