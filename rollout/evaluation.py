"""Evaluate the current policy on held-out tasks through the env workers: pass@1 with a 95% CI."""

from __future__ import annotations

import logging
import time

from tqdm import tqdm

from envs.dataset import Task
from envs.pool import EnvWorkerPool
from envs.registry import Solver
from monitor.eval_stats import heldout_metrics
from monitor.rollout_metrics import rollout_metrics
from rollout.trajectory import Trajectory

logger = logging.getLogger(__name__)


def run_tasks(pool: EnvWorkerPool, tasks: list[Task], samples_per_task: int = 1, solver: Solver = "policy",
              timeout_s: float = 1800.0, desc: str = "eval", progress: bool = True) -> list[Trajectory]:
    """Play every task `samples_per_task` times; returns trajectories in task order."""
    for i, task in enumerate(tasks):
        pool.submit(task, samples_per_task, f"{desc}-{task.id}", solver=solver, order=i)
    results: dict[int, list[Trajectory]] = {}
    deadline = time.monotonic() + timeout_s
    with tqdm(total=len(tasks), desc=desc, disable=not progress) as bar:
        while len(results) < len(tasks):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{desc}: {len(results)}/{len(tasks)} tasks finished after {timeout_s:.0f}s")
            for job, trajs in pool.collect(timeout_s=1.0, num_returns=len(tasks) - len(results)):
                results[job.tags["order"]] = trajs
                bar.update(1)
    return [t for i in range(len(tasks)) for t in results[i]]


def evaluate(pool: EnvWorkerPool, tasks: list[Task], label: str, samples_per_task: int = 1,
             progress: bool = True) -> tuple[dict[str, float], list[float]]:
    """Held-out metrics (pass@1 with a task-level 95% interval, pass@k, maj@k, rollout metrics);
    and the per-task success rates in task order, for a paired comparison on the same tasks."""
    trajs = run_tasks(pool, tasks, samples_per_task, desc=f"eval {label}", progress=progress)
    metrics = rollout_metrics(trajs, prefix=f"eval_{label}")
    summary, per_task = heldout_metrics(trajs, samples_per_task, prefix=f"eval_{label}")
    metrics.update(summary)
    logger.info("held-out success %s: %.3f +- %.3f (%d tasks x %d samples)", label,
                metrics[f"eval_{label}/pass@1"], metrics[f"eval_{label}/ci95"], len(tasks), samples_per_task)
    return metrics, [t.pass_at_1 for t in per_task]
