"""Asynchronous GRPO (`rollout.max_staleness` 1, 2) against synchronous (0): wall clock and success.

    python -m benchmarks.async_vs_sync                       # 4 steps of 32, 2 envs x 3 staleness
    python -m benchmarks.async_vs_sync --staleness 0 1 --envs latency --steps 3
    python -m benchmarks.async_vs_sync --full                # default-config sizes (long)

Every run is a real `launch.run.TrainingRun` of `configs/default.yaml` (dynamic sampling on) with
the same overrides except `rollout.max_staleness`: same start policy, same tasks in the same order,
same number of optimizer steps and trajectories per step. The start policy is the default run's
SFT checkpoint (its model and `sft` section: reference and novice demonstrations), built once and
cached under results/cache/ (~7 minutes here the first time), so each run starts from a policy
that succeeds sometimes and has something to learn; SFT is off in the runs. A run that trained no
trajectory measured nothing: the benchmark says so and exits non-zero. Two environments: plain
stoichiometry (tools answer at once) and `benchmarks.latency_env:SPEC` (each tool call waits
100-500 ms). Runs of one environment go in alternating order (0,1,2 then 2,1,0) to spread load drift.

Reported per run: GRPO wall time (sum of `timing/step_s` in metrics.jsonl: the training loop, without
engine start-up and evaluations), the speed-up sync / async, trajectories trained (accounting),
time waiting for rollouts vs training, mean staleness, and held-out pass@1 before and after GRPO.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from monitor.text_table import format_table
from benchmarks.common import RESULTS_DIR, emit, ratio, setup_logging, start_local_ray

logger = logging.getLogger("benchmarks.async_vs_sync")

ENVS = {"plain": "stoichiometry", "latency": "benchmarks.latency_env:SPEC"}
RUNS_ROOT = RESULTS_DIR / "async_vs_sync_runs"
CACHE_DIR = RESULTS_DIR / "cache"


def base_overrides(args: argparse.Namespace) -> list[str]:
    """Everything but environment, staleness and start policy: identical for every run."""
    return [f"grpo.num_steps={args.steps}", f"grpo.batch_size={args.batch_size}", f"grpo.group_size={args.group_size}",
            f"eval.num_tasks={args.eval_tasks}", f"env.num_heldout_tasks={args.eval_tasks}",
            f"env.num_train_tasks={args.train_tasks}", f"env.max_turns={args.max_turns}",
            f"generation.max_new_tokens={args.max_new_tokens}", f"seed={args.seed}",
            f"logging.runs_root={RUNS_ROOT}", "logging.wandb_mode=disabled", "logging.progress_bar=false",
            "logging.sample_every=0", "checkpoint.every_steps=0",
            "checkpoint.every_minutes=0"]


def start_policy(args: argparse.Namespace) -> str:
    """The shared start policy: the default config's model after its SFT recipe (cached by its settings)."""
    from configs.loading import load_config
    from envs.registry import get_env_spec
    from launch import components as C
    from launch.preflight import novice_fraction
    from models.loading import load_tokenizer

    cfg = load_config(None, base_overrides(args))
    key = json.dumps({"model": cfg.model.model_dump(), "sft": cfg.sft.model_dump(), "env": ENVS["plain"],
                      "difficulties": cfg.env.difficulties, "seed": cfg.seed}, sort_keys=True)
    out = CACHE_DIR / f"async_start_policy-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    if (out / "sft" / "config.json").is_file():
        logger.info("start policy from cache: %s", out / "sft")
        return str(out / "sft")
    t0 = time.perf_counter()
    spec = get_env_spec(cfg.env.name, cfg.env.options)
    init_dir = C.prepare_model(cfg, out)
    pool = C.make_env_pool(cfg, init_dir, router=None)
    try:
        pool.wait_ready()
        tasks = C.make_dataset(cfg, spec).tasks("train")[: cfg.sft.num_demos]
        demos, _ = C.demonstrations(pool, tasks, round(novice_fraction(cfg, spec) * len(tasks)), progress=False)
    finally:
        pool.shutdown()
    C.run_sft(cfg, init_dir, out / "sft", C.demonstration_samples(demos),
              pad_token_id=load_tokenizer(init_dir).pad_token_id)
    logger.info("start policy built in %.0f s (%d demos): %s", time.perf_counter() - t0, len(demos), out / "sft")
    return str(out / "sft")


def grpo_timings(run_dir: Path) -> dict[str, float]:
    """Sums over the GRPO steps in metrics.jsonl, plus the final accounting and mean staleness."""
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if line.strip() and "timing/step_s" in line]
    steps = [m for m in steps if "timing/step_s" in m]
    if not steps:
        raise RuntimeError(f"{run_dir}: no GRPO step metrics")
    last = steps[-1]
    return {"grpo_wall_s": sum(m["timing/step_s"] for m in steps),
            "wait_rollout_s": sum(m["timing/wait_rollout_s"] for m in steps),
            "train_s": sum(m["timing/train_s"] for m in steps), "sync_s": sum(m["timing/sync_s"] for m in steps),
            "steps": len(steps), "trained": last.get("accounting/trained", float("nan")),
            "dropped": sum(v for k, v in last.items() if k.startswith("accounting/dropped/")),
            "staleness_mean": sum(m.get("rollout/staleness_mean", 0.0) for m in steps) / len(steps),
            "refill_rounds": sum(m.get("rollout/refill_rounds", 0.0) for m in steps),
            "surplus": last.get("accounting/dropped/surplus", 0.0)}


def one_run(env_key: str, staleness: int, oversample: int, policy_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    from configs.loading import load_config
    from launch.run import TrainingRun

    overrides = base_overrides(args) + [f"run_name=async-{env_key}-s{staleness}-o{oversample}",
                                        f"grpo.oversample_groups={oversample}", f"env.name={ENVS[env_key]}",
                                        f"rollout.max_staleness={staleness}", f"model.path={policy_dir}",
                                        "sft.enabled=false"]
    run = TrainingRun(load_config(None, overrides))
    t0 = time.perf_counter()
    summary = run.execute()
    total = time.perf_counter() - t0
    row = {"env": env_key, "staleness": staleness, "oversample": oversample, "run_total_s": total, "run_dir": str(run.run_dir),
           **grpo_timings(run.run_dir),
           "pass_at_1_before": summary.get("eval_sft/pass@1"), "pass_at_1_after": summary.get("eval_grpo/pass@1"),
           "ci95_after": summary.get("eval_grpo/ci95")}
    logger.info("%s staleness %d oversample %d: GRPO %.1f s (run %.0f s), trained %s, pass@1 %.3f -> %.3f", env_key,
                staleness, oversample, row["grpo_wall_s"], total, row["trained"], row["pass_at_1_before"] or 0, row["pass_at_1_after"] or 0)
    return row


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """speedup = sync GRPO wall time / this run's (one environment at a time): against the synchronous
    run with the same over-sampling, and against the first one listed (`--oversample`'s first value)."""
    for row in rows:
        def sync_time(oversample: int) -> float:
            sync = [r for r in rows if r["env"] == row["env"] and r["staleness"] == 0 and r["oversample"] == oversample]
            return sync[0]["grpo_wall_s"] if sync else float("nan")
        row["speedup_vs_sync"] = ratio(sync_time(row["oversample"]), row["grpo_wall_s"])
        row["speedup_vs_first_sync"] = ratio(sync_time(rows[0]["oversample"]), row["grpo_wall_s"])
        # Share of the loop the trainer sat idle waiting for rollouts: less sensitive to load drift
        # than wall time, since a uniformly slower machine stretches waiting and training alike.
        row["wait_frac"] = ratio(row["wait_rollout_s"], row["grpo_wall_s"])


COLUMNS = [("env", "env", ""), ("staleness", "staleness", "d"), ("oversample", "oversample", "d"),
           ("refill rounds", "refill_rounds", ".0f"),
           ("surplus", "surplus", ".0f"), ("GRPO s", "grpo_wall_s", ".1f"),
           ("x vs sync", "speedup_vs_sync", ".2f"), ("x vs first sync", "speedup_vs_first_sync", ".2f"), ("wait s", "wait_rollout_s", ".1f"),
           ("wait frac", "wait_frac", ".2f"), ("train s", "train_s", ".1f"),
           ("sync s", "sync_s", ".1f"), ("trained", "trained", ".0f"), ("stale mean", "staleness_mean", ".2f"),
           ("pass@1 before", "pass_at_1_before", ".3f"), ("pass@1 after", "pass_at_1_after", ".3f"),
           ("+-", "ci95_after", ".3f")]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", nargs="+", default=list(ENVS), choices=list(ENVS))
    p.add_argument("--staleness", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--eval-tasks", type=int, default=32)
    p.add_argument("--train-tasks", type=int, default=4000,
                   help="the default's: its SFT demonstrations play them, and the held-out tasks stay unseen")
    p.add_argument("--max-turns", type=int, default=6)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--oversample", type=int, nargs="+", default=[0],
                   help="grpo.oversample_groups values, each run at every staleness: extra groups drawn with "
                        "each batch (dynamic sampling); the first is the baseline of 'x vs first sync'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full", action="store_true", help="default-config sizes: 20 steps x 64, 200 eval tasks")
    args = p.parse_args(argv)
    if args.full:
        args.steps, args.batch_size, args.eval_tasks = 20, 64, 200
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    setup_logging()
    import ray


    start_local_ray(3)
    try:
        policy_dir = start_policy(args)
        rows = []
        for i, env_key in enumerate(args.envs):
            for j, oversample in enumerate(args.oversample):
                order = args.staleness if (i + j) % 2 == 0 else list(reversed(args.staleness))
                rows += [one_run(env_key, s, oversample, policy_dir, args) for s in order]
    finally:
        ray.shutdown()
    rows.sort(key=lambda r: (args.envs.index(r["env"]), args.oversample.index(r["oversample"]), r["staleness"]))
    add_ratios(rows)
    emit("async_vs_sync", {"config": vars(args), "start_policy": policy_dir, "results": rows},
         format_table(rows, COLUMNS))
    check_measured(rows)
    return {"results": rows}


def check_measured(rows: list[dict[str, Any]]) -> None:
    """Exit non-zero when a run trained no trajectory: its speed-up is not a measurement."""
    untrained = [f"{r['env']} staleness {r['staleness']} oversample {r['oversample']}" for r in rows
                 if not r["trained"] > 0]
    if untrained:
        raise SystemExit(f"async_vs_sync measured nothing: no trajectory was trained in {', '.join(untrained)} "
                         "(every group dropped? see accounting/dropped/* in the runs' metrics.jsonl)")


if __name__ == "__main__":
    main()
