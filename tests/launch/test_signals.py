"""SIGTERM (what Slurm, Kubernetes and `ray job stop` send) ends `python -m launch.train` in every
phase: while its local Ray is starting (ray.init replaces the driver's SIGTERM handler with its own),
while the trainer and the vLLM engine start, and in GRPO (which checkpoints first). Each time the
driver exits with 130 within a bound and leaves none of its Ray processes behind.

Each driver runs in its own process session with its own Ray temp dir (RAY_TMPDIR), so its Ray
processes are exactly those whose command line names that dir, and nothing else on the machine is
touched. The phase is read from the driver's log lines (and, for Ray's start, from its session dir
appearing), so the signal lands in that phase whatever the machine's speed.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from launch.run_state import STATE_FILE
from tests.cluster.ray_procs import ROOT, kill_under, processes_under, ray_env

TINY = ["sft.num_demos=32", "sft.steps=5", "grpo.batch_size=8", "grpo.group_size=4", "eval.num_tasks=4",
        "env.num_train_tasks=64", "env.num_heldout_tasks=4", "logging.progress_bar=false",
        "generation.max_model_len=512", "rollout.max_staleness=1", "logging.wandb_mode=disabled",
        "grpo.dynamic_sampling=false"]
logger = logging.getLogger(__name__)
PHASE_TIMEOUT_S = 420  # reaching GRPO takes ~2 min on a quiet 2-core machine
EXIT_BOUND_S = 90
EXIT_SIGNAL = 130


class Driver:
    """`python -m launch.train` with its output collected line by line; its Ray lives in
    `<tmp>/ray` (a short path: Ray's socket paths are limited to 107 bytes)."""

    def __init__(self, runs_root: Path, overrides: list[str]) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="lrs", dir="/tmp"))
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "launch.train", *TINY, f"logging.runs_root={runs_root}", *overrides],
            cwd=ROOT, env=ray_env(self.tmp, auth_mode=None), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines[-60:])

    def wait_for(self, ready: Callable[[], bool], phase: str) -> None:
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while not ready():
            if self.proc.poll() is not None:
                pytest.fail(f"the driver exited ({self.proc.returncode}) before {phase}:\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{phase} not reached in {PHASE_TIMEOUT_S} s:\n{self.output()}")
            time.sleep(0.2)

    def logged(self, text: str) -> Callable[[], bool]:
        return lambda: any(text in line for line in self.lines)

    def terminate(self) -> tuple[int, float]:
        """SIGTERM to the driver alone; its exit code and how long it took to exit."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=EXIT_BOUND_S)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.monotonic() - start
        self._reader.join(timeout=10)
        assert rc is not None, f"still running {EXIT_BOUND_S} s after SIGTERM:\n{self.output()}"
        return rc, took

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        kill_under(self.tmp)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _leftover_ray(tmp: Path, grace_s: float = 30) -> list[str]:
    """Ray processes of this driver's temp dir still alive after a grace period (ray.shutdown
    signals its daemons without waiting for them)."""
    deadline = time.monotonic() + grace_s
    while (left := processes_under(tmp / "ray")) and time.monotonic() < deadline:
        time.sleep(0.5)
    return [f"pid {p.pid}: {p.name()}" for p in left if p.is_running()]


def _stop_in(runs_root: Path, overrides: list[str], phase: str,
             reached: Callable[[Driver], Callable[[], bool]]) -> tuple[Driver, float]:
    driver = Driver(runs_root, overrides)
    try:
        driver.wait_for(reached(driver), phase)
        rc, took = driver.terminate()
        assert rc == EXIT_SIGNAL, f"exit {rc} after SIGTERM during {phase}:\n{driver.output()}"
        assert "stopped by signal" in driver.output()
        left = _leftover_ray(driver.tmp)
        assert not left, f"Ray processes left after SIGTERM during {phase}: {left}"
        logger.info("SIGTERM during %s: exit %d after %.1f s", phase, rc, took)
        return driver, took
    finally:
        driver.kill()


def test_sigterm_while_ray_starts(tmp_path):
    """The session dir appears as soon as ray.init starts the head: the driver is inside ray.init,
    which would install its own SIGTERM handler (`connect` holds the signal until it returns)."""
    driver, took = _stop_in(tmp_path, ["grpo.num_steps=2"], "Ray start-up",
                            lambda d: (d.tmp / "ray" / "session_latest").exists)
    assert not driver.logged("started a local Ray instance")(), "the signal came after Ray had started"
    assert took < EXIT_BOUND_S


def test_sigterm_while_engines_start(tmp_path):
    """Trainer ranks ready, the vLLM engine still building."""
    driver, _ = _stop_in(tmp_path, ["grpo.num_steps=2"], "engine start-up",
                         lambda d: d.logged("rank(s) ready in"))
    assert not driver.logged("held-out eval_sft")()


def test_sigterm_in_grpo_checkpoints_then_exits(tmp_path):
    """Far more steps than the run gets to: the signal lands in GRPO, which checkpoints first."""
    driver, _ = _stop_in(tmp_path, ["grpo.num_steps=500"], "GRPO", lambda d: d.logged("weight sync v1"))
    assert driver.logged("stop signal: checkpointing")(), driver.output()
    assert list(tmp_path.glob(f"*/{STATE_FILE}")), "no committed checkpoint in the run directory"
