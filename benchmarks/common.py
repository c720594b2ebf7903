"""What every benchmark here shares: the results folder, machine facts, tables, the JSON line.

Each benchmark prints a table and then exactly one JSON line (`{"benchmark": NAME, ...}`) on
stdout, and writes the same object to `results/<NAME>.json`. Progress goes to logging (stderr).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from monitor.run_logger import LOG_FORMAT

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "results"

# (header, key, format spec) of one table column; a callable key computes the cell from the row.


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format=LOG_FORMAT)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def machine_info() -> dict[str, Any]:
    """nproc, memory, CPU model, load and date: the context every number here needs."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"nproc": os.cpu_count(), "mem_total_gib": round(_mem_total_gib(), 1), "cpu_model": _cpu_model(),
            "loadavg_1_5_15": [round(x, 2) for x in load], "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def start_local_ray(num_cpus: int, resources: dict[str, float] | None = None) -> None:
    """A local Ray cluster like `cluster.ray_cluster.connect` starts (repository on the workers'
    PYTHONPATH), but without forwarding worker output to stdout, which holds only the results."""
    import ray

    if ray.is_initialized():
        return
    env_vars = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
                "TOKENIZERS_PARALLELISM": "false"}
    ray.init(address="local", num_cpus=num_cpus, resources=resources or {}, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING, runtime_env={"env_vars": env_vars})


def emit(name: str, result: dict[str, Any], table: str) -> Path:
    """Print the table and the JSON line; write `results/<name>.json` (and the table as
    `results/<name>.txt`). Returns the JSON file's path."""
    result = {"benchmark": name, "machine": machine_info(), **result}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    (RESULTS_DIR / f"{name}.txt").write_text(table.rstrip("\n") + "\n")
    sys.stdout.write(table.rstrip("\n") + "\n" + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()
    return path


def git_commit(with_changes: bool = False) -> str:
    """The checkout's short commit ("unknown" outside git); `with_changes`: "+changes" when tracked
    files differ from it (a figure measured on a working tree)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+changes" if with_changes and git("status", "--porcelain", "--untracked-files=no") else "")


def run_training(cmd: list[str], runs_root: Path, log_path: Path, timeout_s: float) -> tuple[int, Path | None, float]:
    """Run a `python -m launch.train` command (its output to `log_path`); returns the exit code
    (124: timed out), the run directory it made under `runs_root` (None if none) and the wall time."""
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        try:
            rc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    run_dirs = sorted(p.parent for p in runs_root.glob("*/config.json"))
    return rc, (run_dirs[-1] if run_dirs else None), time.monotonic() - t0
