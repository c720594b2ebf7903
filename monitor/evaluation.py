"""Held-out evaluation of the served policy: pass@1 with a task-level 95% interval, pass@k, maj@k
and the rollout metrics. The one path behind the training run's evaluations after SFT and after
GRPO and behind `labrl eval`."""

from __future__ import annotations

import logging

from envs.dataset import Task
from monitor.eval_stats import TaskEval, heldout_metrics
from monitor.rollout_metrics import rollout_metrics
from rollout.play import run_tasks
from rollout.pool import EnvWorkerPool

logger = logging.getLogger(__name__)


def evaluate(pool: EnvWorkerPool, tasks: list[Task], prefix: str, samples_per_task: int = 1,
             progress: bool = True) -> tuple[dict[str, float], list[TaskEval]]:
    """Metrics under `<prefix>/` and the per-task results in task order (for paired comparisons
    of the same tasks before and after training)."""
    trajs = run_tasks(pool, tasks, samples_per_task, desc=prefix, progress=progress)
    metrics, per_task = heldout_metrics(trajs, samples_per_task, prefix=prefix)
    metrics.update(rollout_metrics(trajs, prefix=prefix))
    # A masked episode (the verifier could not judge it) scores 0 here; the same rows are masked in
    # every evaluation of a run, so paired before/after comparisons stay fair. Its count is logged.
    metrics[f"{prefix}/masked"] = float(sum(t.masked for t in trajs))
    logger.info("held-out %s: pass@1 %.3f +- %.3f, pass@%d %.3f, maj@%d %.3f (%d tasks x %d samples)", prefix,
                metrics[f"{prefix}/pass@1"], metrics[f"{prefix}/ci95"], samples_per_task,
                metrics[f"{prefix}/pass@{samples_per_task}"], samples_per_task,
                metrics[f"{prefix}/maj@{samples_per_task}"], len(tasks), samples_per_task)
    return metrics, per_task
