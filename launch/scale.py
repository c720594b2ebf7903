"""`labrl scale`: throughput vs resources on the current cluster, one short training run per point.

    labrl scale                                   # env workers 1,2,4; engines 1,2; trainer ranks 1,2
    labrl scale --axis rollout.num_env_workers=2,4,8,16 --axis generation.num_workers=1,2,4 \
        --config configs/qwen2.5-7b-8gpu.yaml grpo.num_steps=6
    labrl scale --grid ...                        # every combination instead of one axis at a time

Each point is `python -m launch.train` in its own process with the point's overrides (a fresh
process per point: actors, vLLM engines and shared memory are all released between points, and a
crashed point cannot poison the next). With `cluster.address` or RAY_ADDRESS set, every point joins
that cluster. Throughput comes from the point's metrics.jsonl, over the GRPO steps after
`--warmup-steps`: trajectories/s and generated tokens/s are batch totals divided by summed step wall
time (so asynchronous overlap counts, idle waits too). Writes scale.csv, scale.md (table) and
scale.png (throughput vs each axis, other axes at their first value) into `--out`.

`labrl scale --predict RUN_DIR [--gpus 8] [--params 7e9 | --model-config CONFIG.json]
[--gpus-per-engine K] [--compare RUN_DIR ...]` runs nothing: it reads one run's timers and predicts
the best split of a GPU budget between engines and trainer ranks (launch/scale_model.py,
docs/scaling_model.md), writing scale_prediction.md into `--out`.

Why not a single long-lived Ray session: `launch.train` owns its cluster connection and shutdown,
and measuring the real entrypoint keeps these numbers honest about start-up order and placement.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configs.schema import LabrlConfig
from configs.loading import ConfigError, load_config
from launch.scale_model import DEFAULT_DP_OVERHEAD, PredictRequest, write_prediction
from monitor.run_logger import LOG_FORMAT

logger = logging.getLogger("labrl.scale")

DEFAULT_AXES = {"rollout.num_env_workers": ["1", "2", "4"], "generation.num_workers": ["1", "2"],
                "trainer.num_ranks": ["1", "2"]}
# A short run: few GRPO steps, a token warm start, a tiny evaluation; W&B off (one run per point).
SHORT_RUN = ["grpo.num_steps=5", "sft.num_demos=64", "sft.steps=10", "eval.num_tasks=16",
             "env.num_heldout_tasks=16", "logging.progress_bar=false", "logging.wandb_mode=disabled"]
COLUMNS = ["point", "status", "cpus", "gpus", "steps_measured", "trajectories_per_s", "tokens_per_s",
           "train_tokens_per_s", "step_s", "sync_s", "wall_s"]

Runner = Callable[[list[str], float], tuple[int, str]]


@dataclass
class Point:
    """One sweep point: its axis values (as override strings) and, after running, its row."""

    values: dict[str, str]
    row: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return "_".join(f"{k.rsplit('.', 1)[-1]}{v}" for k, v in self.values.items())

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.values.items()]


def parse_axes(specs: Sequence[str]) -> dict[str, list[str]]:
    """`["a.b=1,2,4", ...]` -> {"a.b": ["1", "2", "4"]}; the defaults when `specs` is empty."""
    if not specs:
        return {k: list(v) for k, v in DEFAULT_AXES.items()}
    axes: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or "." not in key or not values:
            raise ConfigError(f"--axis {spec!r} must look like section.field=v1,v2,...")
        axes[key.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    return axes


def make_points(axes: dict[str, list[str]], grid: bool = False) -> list[Point]:
    """One axis at a time (the base point = every axis at its first value, then each other value of
    each axis), or the full grid."""
    keys = list(axes)
    if grid:
        return [Point(dict(zip(keys, combo))) for combo in itertools.product(*axes.values())]
    base = {k: v[0] for k, v in axes.items()}
    points = [Point(dict(base))]
    for k in keys:
        points += [Point({**base, k: v}) for v in axes[k][1:]]
    return points


def resources_of(cfg: LabrlConfig) -> tuple[float, float]:
    """CPUs and GPUs the run reserves: the placement plan's per-role totals and the env workers."""
    from cluster.placement import plan_placement

    totals: dict[str, float] = {}
    for d in plan_placement(cfg).demands:
        for k, v in d.total().items():
            totals[k] = totals.get(k, 0.0) + v
    env_cpus = cfg.rollout.num_env_workers * cfg.rollout.cpus_per_env_worker
    return totals.get("CPU", 0.0) + env_cpus, totals.get("GPU", 0.0)


def measure(metrics_path: Path, warmup_steps: int = 1) -> dict[str, float]:
    """Throughput over the GRPO steps in metrics.jsonl after the first `warmup_steps` (kept when
    nothing would be left)."""
    steps = [r for r in (json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip())
             if "timing/step_s" in r]
    if not steps:
        raise ValueError(f"{metrics_path}: no GRPO step records (timing/step_s)")
    measured = steps[warmup_steps:] or steps
    wall = sum(r["timing/step_s"] for r in measured)
    train_tps = [r["train/tokens_per_s"] for r in measured if "train/tokens_per_s" in r]
    return {
        "steps_measured": len(measured),
        "trajectories_per_s": sum(r.get("rollout/num_trajectories", 0.0) for r in measured) / max(wall, 1e-9),
        "tokens_per_s": sum(r.get("rollout/num_generated_tokens", 0.0) for r in measured) / max(wall, 1e-9),
        "train_tokens_per_s": sum(train_tps) / len(train_tps) if train_tps else float("nan"),
        "step_s": wall / len(measured),
        "sync_s": sum(r.get("timing/sync_s", 0.0) for r in measured) / len(measured),
    }


def subprocess_runner(args: list[str], timeout_s: float) -> tuple[int, str]:
    """Run `python -m launch.train ARGS`; returns (exit code, last lines of its output)."""
    cmd = [sys.executable, "-m", "launch.train", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        return 124, out[-2000:]
    return proc.returncode, (proc.stdout + proc.stderr)[-2000:]


def run_sweep(config: str | None, overrides: list[str], points: list[Point], out_dir: Path,
              runner: Runner = subprocess_runner, warmup_steps: int = 1,
              timeout_s: float = 3600.0) -> list[dict[str, Any]]:
    """Run every point (configs are validated for all points first) and write the reports."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cfgs = {p.name: load_config(config, SHORT_RUN + overrides + p.overrides) for p in points}
    rows = []
    for i, p in enumerate(points):
        runs_root = out_dir / "runs" / p.name
        cpus, gpus = resources_of(cfgs[p.name])
        args = ([*(["--config", config] if config else []), *SHORT_RUN, *overrides, *p.overrides,
                 f"logging.runs_root={runs_root}", f"run_name=scale-{p.name}"])
        logger.info("point %d/%d %s (%g CPUs, %g GPUs)", i + 1, len(points), p.name, cpus, gpus)
        start = time.monotonic()
        rc, tail = runner(args, timeout_s)
        row: dict[str, Any] = {"point": p.name, "cpus": cpus, "gpus": gpus, **p.values,
                               "wall_s": round(time.monotonic() - start, 1)}
        metrics = sorted(runs_root.glob("*/metrics.jsonl"))
        if rc == 0 and metrics:
            row.update(status="ok", **measure(metrics[-1], warmup_steps))
        else:
            row["status"] = f"failed (exit {rc})"
            logger.warning("point %s failed (exit %d):\n%s", p.name, rc, tail)
        rows.append(row)
    write_reports(rows, list(points[0].values) if points else [], out_dir)
    return rows


def write_reports(rows: list[dict[str, Any]], axis_keys: list[str], out_dir: Path) -> None:
    columns = COLUMNS[:1] + axis_keys + COLUMNS[1:]
    with open(out_dir / "scale.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |")
    (out_dir / "scale.md").write_text("\n".join(lines) + "\n")
    plot(rows, axis_keys, out_dir / "scale.png")
    logger.info("scaling table:\n%s", "\n".join(lines))


def _cell(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def plot(rows: list[dict[str, Any]], axis_keys: list[str], path: Path) -> None:
    """Trajectories/s (left axis) and generated tokens/s (right axis) against each swept field,
    using the points whose other axes sit at their base (first) value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("status") == "ok"]
    base = {k: rows[0][k] for k in axis_keys} if rows else {}
    fig, axes = plt.subplots(1, max(1, len(axis_keys)), figsize=(4.5 * max(1, len(axis_keys)), 3.6),
                             squeeze=False)
    for ax, key in zip(axes[0], axis_keys):
        series = [r for r in ok if all(r[k] == base[k] for k in axis_keys if k != key)]
        if all(_is_number(r[key]) for r in series):  # numeric axes in value order; others as given
            series.sort(key=lambda r: float(r[key]))
        xs = [float(r[key]) if _is_number(r[key]) else str(r[key]) for r in series]
        ax.plot(xs, [r["trajectories_per_s"] for r in series], "o-", color="tab:blue")
        ax.set_xlabel(key)
        ax.set_ylabel("trajectories / s", color="tab:blue")
        twin = ax.twinx()
        twin.plot(xs, [r["tokens_per_s"] for r in series], "s--", color="tab:orange")
        twin.set_ylabel("generated tokens / s", color="tab:orange")
        ax.set_title(key.rsplit(".", 1)[-1])
    fig.suptitle("labrl throughput vs resources")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="labrl scale", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="base YAML config (default: configs/default.yaml)")
    p.add_argument("--axis", action="append", default=[], metavar="SECTION.FIELD=V1,V2,...",
                   help="a swept field (repeatable); default: env workers, engines, trainer ranks")
    p.add_argument("--grid", action="store_true", help="every combination, not one axis at a time")
    p.add_argument("--out", default=None, help="output directory (default: results/scale-<time>)")
    p.add_argument("--warmup-steps", type=int, default=1, help="GRPO steps left out of the measurement")
    p.add_argument("--timeout-s", type=float, default=3600.0, help="per point")
    p.add_argument("overrides", nargs="*", help="overrides for every point, e.g. grpo.num_steps=8")
    add_predict_args(p.add_argument_group("prediction (--predict: no runs, a scaling model)"))
    return p.parse_args(argv)


def add_predict_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--predict", metavar="RUN_DIR", default=None,
                   help="predict the best engines/ranks split from this run's timers instead of sweeping")
    g.add_argument("--gpus", type=int, default=8, help="GPU budget to split (default 8)")
    g.add_argument("--params", type=float, default=None, help="target parameter count, e.g. 7e9")
    g.add_argument("--model-config", default=None, help="target HF config.json (parameters counted from it)")
    g.add_argument("--gpus-per-engine", type=int, default=1, help="GPUs of one engine (tensor parallel)")
    g.add_argument("--compare", nargs="+", default=[], metavar="RUN_DIR",
                   help="measured runs to compare the model's predictions with")
    g.add_argument("--recompute", action="store_const", const=True, default=None,
                   help="the target trains with activation recompute (8N FLOPs/token; default: as measured)")
    g.add_argument("--dp-overhead", type=float, default=DEFAULT_DP_OVERHEAD,
                   help="data-parallel overhead c in eff(R) = 1/(1+c(R-1))")


def predict_main(args: argparse.Namespace) -> int:
    """`--predict`: write the scaling model's report; 2 when the run cannot support a prediction."""
    if args.params is not None and args.model_config:
        logger.error("give --params or --model-config, not both")
        return 2
    if args.overrides:
        logger.warning("overrides %s ignored: --predict runs nothing", args.overrides)
    req = PredictRequest(args.predict, args.gpus, args.params, args.model_config, args.gpus_per_engine,
                         tuple(args.compare), args.recompute, args.dp_overhead, args.warmup_steps)
    try:
        path = write_prediction(req, args.out or "results")
    except (ValueError, OSError, KeyError) as err:
        logger.error("cannot predict: %s", err)
        return 2
    logger.info("wrote %s", path)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    args = parse_args(argv)
    if args.predict:
        return predict_main(args)
    out = Path(args.out or f"results/scale-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        points = make_points(parse_axes(args.axis), args.grid)
        rows = run_sweep(args.config, args.overrides, points, out, warmup_steps=args.warmup_steps,
                         timeout_s=args.timeout_s)
    except ConfigError as err:
        logger.error("%s", err)
        return 2
    logger.info("wrote %s/scale.{csv,md,png}", out)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
