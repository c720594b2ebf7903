"""The `labrl` command: `labrl {train,profile,eval,report,scale} [options]` (`labrl CMD --help`)."""

from __future__ import annotations

import sys

from launch import evaluate, profile, report, scale, train

COMMANDS = {"train": train.main, "profile": profile.main, "eval": evaluate.main, "report": report.main,
            "scale": scale.main}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        names = ", ".join(COMMANDS)
        sys.stderr.write(f"usage: labrl {{{names}}} [options]\n")
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
