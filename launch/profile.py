"""`labrl profile --config FILE [--checkpoint DIR] -k K [--split train|heldout] [--num-tasks N]`.

Reward profiling: sample the policy K times on each task and write, per task, reward mean / std /
min / max, pass@1 and pass@K (`profile.jsonl`), a per-environment summary table (logged, W&B and
`profile_summary.json`) and histograms (`profile_hist.png`). Feed `profile.jsonl` back into
training with `env.task_filter_profile=PATH` to skip tasks that give GRPO no signal.
Sampling uses `generation.temperature`, the distribution GRPO trains on.
"""

from __future__ import annotations

import argparse
import json
import logging

from configs.schema import LabrlConfig
from launch.policy_session import base_parser, pick_tasks, run_command, sampling_run
from monitor.plots import plot_profile_histogram
from monitor.text_table import format_table
from monitor.profiling import profile_tasks, summarize, summary_table, write_profiles
from rollout.play import run_tasks

logger = logging.getLogger("labrl")

PROFILE_FILE = "profile.jsonl"


def parser() -> argparse.ArgumentParser:
    p = base_parser("labrl profile", "Reward profiling: sample the policy k times per task.")
    p.add_argument("--split", choices=("train", "heldout"), default="train")
    return p


def profile(args: argparse.Namespace, cfg: LabrlConfig) -> dict[str, float]:
    k = args.samples_per_task
    with sampling_run(cfg, "profile", args.checkpoint, args.out) as run:
        tasks = pick_tasks(run.dataset, args.split, args.num_tasks)
        logger.info("profiling %d %s tasks x %d samples", len(tasks), args.split, k)
        trajs = run_tasks(run.pool, tasks, samples_per_task=k, desc="profile",
                          progress=cfg.logging.progress_bar)
        profiles = profile_tasks(trajs, k)
        write_profiles(run.out_dir / PROFILE_FILE, profiles)
        summary = summarize(profiles)
        table = summary_table(profiles)
        (run.out_dir / "profile_summary.json").write_text(json.dumps({"summary": summary, "table": table}, indent=2))
        plot_profile_histogram(profiles, run.out_dir / "profile_hist.png")
        run.run_log.log(summary, step=0)
        run.run_log.log_table("profile/summary", list(table[0]) if table else [], table, step=0)
        per_task = [p.to_dict() for p in profiles]
        run.run_log.log_table("profile/tasks", [c for c in per_task[0] if c != "reasons"] if per_task else [],
                              per_task, step=0)
        logger.info("reward profile (%s split, k=%d):\n%s", args.split, k, format_table(table))
        logger.info("%.0f%% of tasks have zero reward variance; profile written to %s "
                    "(train with env.task_filter_profile=%s)", 100 * summary.get("profile/zero_variance_frac", 0),
                    run.out_dir / PROFILE_FILE, run.out_dir / PROFILE_FILE)
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_command(argv, parser(), profile)


if __name__ == "__main__":
    raise SystemExit(main())
