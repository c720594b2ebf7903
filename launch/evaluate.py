"""`labrl eval --config FILE [--checkpoint DIR] [-k K] [--num-tasks N]`: held-out evaluation.

Samples the policy K times on each held-out task (the config's dataset, so the tasks are the ones
training never saw) at `eval.temperature`, and reports pass@1 (with a 95% CI), pass@K and
majority vote maj@K, plus the usual rollout metrics. Writes `eval.jsonl` (per task) and
`eval_summary.json` in the output directory; W&B gets the same numbers under `eval/`.
"""

from __future__ import annotations

import argparse
import json
import logging

from configs.schema import LabrlConfig
from launch.policy_session import base_parser, pick_tasks, run_command, sampling_run
from monitor.evaluation import evaluate
from monitor.run_logger import append_jsonl

logger = logging.getLogger("labrl")


def parser() -> argparse.ArgumentParser:
    return base_parser("labrl eval", "Held-out evaluation: pass@1, pass@k and majority vote.")


def evaluate_heldout(args: argparse.Namespace, cfg: LabrlConfig) -> dict[str, float]:
    k = args.samples_per_task
    cfg = cfg.model_copy(deep=True)
    cfg.generation.temperature = cfg.eval.temperature  # the pool samples with generation settings
    num_tasks = args.num_tasks if args.num_tasks is not None else cfg.eval.num_tasks
    with sampling_run(cfg, "eval", args.checkpoint, args.out) as run:
        tasks = pick_tasks(run.dataset, "heldout", num_tasks)
        logger.info("evaluating %d held-out tasks x %d samples (temperature %g)", len(tasks), k,
                    cfg.eval.temperature)
        metrics, per_task = evaluate(run.pool, tasks, "eval", k, progress=cfg.logging.progress_bar)
        append_jsonl(run.out_dir / "eval.jsonl", [t.to_dict() for t in per_task])
        (run.out_dir / "eval_summary.json").write_text(json.dumps(metrics, indent=2))
        run.run_log.log(metrics, step=0)
        logger.info("held-out results written to %s", run.out_dir)
    return metrics


def main(argv: list[str] | None = None) -> int:
    return run_command(argv, parser(), evaluate_heldout)


if __name__ == "__main__":
    raise SystemExit(main())
