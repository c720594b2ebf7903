"""Learning regression: does the default run still learn as much as the last recorded run?

    python -m benchmarks.learning_regression            # run, compare with the last record
    python -m benchmarks.learning_regression --record   # ... and append this run to the record

One fixed-seed training run of the real entrypoint (`python -m launch.train`, the default config
plus `--overrides`), then its held-out gain (success after GRPO minus after SFT, paired over the
same tasks) against the last entry of `benchmarks/results/learning_regression.jsonl` with the same
seed and overrides (on the same CPU model when there is one), kept in the repository with the
commit, CPU and command of each recorded run.

Exit status 1 when the run trained nothing, when its own gain is not significant (its 95% interval
reaches 0), or when it is significantly below the record (the difference's interval, from the two
runs' intervals, lies below 0). A different CPU model than the record's is reported beside the
verdict: machines differ in floating point, and a record from the same CPU model is the comparison
of like with like.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT, RESULTS_DIR, emit, git_commit, machine_info, run_training, setup_logging
from monitor.run_logger import read_json, read_jsonl

logger = logging.getLogger("benchmarks.learning_regression")
RECORD = REPO_ROOT / "benchmarks" / "results" / "learning_regression.jsonl"
QUIET = ["logging.wandb_mode=disabled", "logging.progress_bar=false", "checkpoint.every_steps=0",
         "checkpoint.every_minutes=0"]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One training run; its held-out figures, wall time and accounting."""
    runs_root = (args.out / time.strftime("%Y%m%d-%H%M%S")).resolve()
    runs_root.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "launch.train", *QUIET, f"seed={args.seed}", *args.overrides,
           f"logging.runs_root={runs_root}", "run_name=learning-regression"]
    logger.info("command: %s", shlex.join(["python", *cmd[1:]]))
    rc, run_dir, wall = run_training(cmd, runs_root, runs_root / "train.log", args.timeout_s)
    summary = read_json(run_dir / "summary.json") if run_dir else {}
    rows = read_jsonl(run_dir / "metrics.jsonl") if run_dir else []
    steps = [r for r in rows if "timing/step_s" in r]
    curve = [(r["eval/updates"], r["eval/pass@1"]) for r in rows if "eval/updates" in r]
    return {"command": shlex.join(["python", "-m", "launch.train", *cmd[3:-2]]), "exit_code": rc,
            "wall_s": round(wall, 1), "run_dir": str(run_dir), "seed": args.seed, "overrides": args.overrides,
            "sft": summary.get("eval_sft/pass@1"), "grpo": summary.get("eval_grpo/pass@1"),
            "gain": summary.get("grpo/improvement"), "gain_ci95": summary.get("grpo/improvement_ci95"),
            "trained": steps[-1].get("accounting/trained", 0.0) if steps else 0.0, "steps": len(steps),
            "curve": sorted(curve), "sft_sha256": weights_sha256(run_dir / "sft_model") if run_dir else None}


def weights_sha256(model_dir: Path) -> str | None:
    """Digest of a checkpoint's weight files: two runs that agree here trained the same SFT model
    (the cross-CPU question of `sft.numerics` asked of the weights, not of a score)."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def same_sft_checkpoint(run: dict[str, Any], record: dict[str, Any] | None) -> str:
    if record is None or not run.get("sft_sha256") or not record.get("sft_sha256"):
        return "SFT checkpoint: no recorded digest to compare with"
    same = run["sft_sha256"] == record["sft_sha256"]
    return (f"SFT checkpoint: {'the same weights as' if same else 'different weights from'} the record's "
            f"(sha256 {run['sft_sha256'][:12]} vs {record['sft_sha256'][:12]})")


def last_record(history: list[dict[str, Any]], seed: int, overrides: list[str],
                cpu_model: str | None = None) -> dict[str, Any] | None:
    """The newest recorded run with this seed and these overrides (seeds differ by more than a
    regression), on this CPU model when one was recorded there (CPU models round differently)."""
    same = [r for r in history if r.get("seed") == seed and r.get("overrides", []) == overrides]
    here = [r for r in same if r.get("cpu_model") == cpu_model]
    return (here or same or [None])[-1]


def verdict(run: dict[str, Any], record: dict[str, Any] | None) -> list[str]:
    """Why this run is a regression ([] when it is not)."""
    if run["exit_code"] != 0 or run["gain"] is None:
        return [f"the training run failed (exit {run['exit_code']}); log: {run['run_dir']}/train.log"]
    problems = []
    if not run["trained"]:
        problems.append("no trajectory was trained: the run measured nothing")
    if run["gain"] - run["gain_ci95"] <= 0:
        problems.append(f"held-out gain {run['gain']:+.3f} +- {run['gain_ci95']:.3f} is not significant")
    if record is not None:
        diff = run["gain"] - record["gain"]
        half = math.hypot(run["gain_ci95"], record["gain_ci95"])
        if diff + half < 0:
            problems.append(f"gain {run['gain']:+.3f} is below the record's {record['gain']:+.3f} "
                            f"(commit {record['commit']}) by {-diff:.3f} +- {half:.3f}")
    return problems


def table(run: dict[str, Any], record: dict[str, Any] | None, cpu: str) -> str:
    def row(name: str, r: dict[str, Any]) -> str:
        return (f"{name:<22} {r['sft']:.3f}    {r['grpo']:.3f}    {r['gain']:+.3f} +- {r['gain_ci95']:.3f}  "
                f"{r['wall_s']:>6.0f} s  {r.get('commit', '')} {r.get('cpu_model', cpu)}")
    lines = ["run                    sft      grpo     gain (95%)        wall      commit / CPU"]
    if record is not None:
        lines.append(row("record", record))
    if run["gain"] is not None:
        lines.append(row("this run", run))
        lines.append("held-out curve (updates: pass@1): " + ", ".join(f"{u:.0f}: {p:.3f}" for u, p in run["curve"]))
        lines.append(same_sft_checkpoint(run, record))
    if record is not None and record.get("cpu_model") != cpu:
        lines.append(f"note: the record ran on {record.get('cpu_model')}, this run on {cpu}: not like for like")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overrides", nargs="*", default=[], help="config overrides (default: the default config)")
    p.add_argument("--record", action="store_true", help="append this run to " + str(RECORD.relative_to(REPO_ROOT)))
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "learning_regression_runs")
    p.add_argument("--timeout-s", type=float, default=3600.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    machine = machine_info()
    record = last_record(read_jsonl(RECORD), args.seed, args.overrides, machine["cpu_model"])
    commit = git_commit(with_changes=True)  # the code the run starts from, not what HEAD is by its end
    run = measure(args)
    run.update(commit=commit, cpu_model=machine["cpu_model"], date=machine["date"])
    problems = verdict(run, record)
    text = table(run, record, machine["cpu_model"])
    emit("learning_regression", {"run": run, "record": record, "problems": problems}, text)
    if problems:
        sys.stderr.write("learning regression:\n" + "\n".join(f"  {p}" for p in problems) + "\n")
        return 1
    if args.record:
        RECORD.parent.mkdir(parents=True, exist_ok=True)
        with RECORD.open("a") as f:
            f.write(json.dumps(run) + "\n")
        logger.info("recorded in %s", RECORD)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
