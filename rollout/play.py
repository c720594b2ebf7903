"""Play a list of tasks through the env pool and return the trajectories in task order.

Used for scripted-solver demonstrations (behaviour cloning) and held-out evaluation
(`monitor.evaluation`), so both see episodes played exactly as in training.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable

from tqdm import tqdm

from envs.dataset import Task
from envs.registry import Solver
from rollout.pool import EnvWorkerPool
from rollout.trajectory import Trajectory


def collect_until(pool: EnvWorkerPool, missing: Callable[[], int], on_group: Callable[[Any, list[Trajectory]], None],
                  timeout_s: float, what: Callable[[], str], where: Callable[[Any], bool] | None = None) -> None:
    """Hand finished groups (those `where` accepts) to `on_group` until `missing()` is 0; after
    `timeout_s` raise a TimeoutError saying `what()` (how far it got)."""
    deadline = time.monotonic() + timeout_s
    while missing() > 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what()} after {timeout_s:.0f}s (env workers or generation workers hung?)")
        for job, trajs in pool.collect(timeout_s=1.0, num_returns=missing(), where=where):
            on_group(job, trajs)


def run_tasks(pool: EnvWorkerPool, tasks: list[Task], samples_per_task: int = 1, solver: Solver = "policy",
              timeout_s: float = 1800.0, desc: str = "eval", progress: bool = True) -> list[Trajectory]:
    """Play every task `samples_per_task` times; returns trajectories in task order. Only these
    groups are collected: training groups in flight meanwhile (an evaluation between steps) stay."""
    play_id = uuid.uuid4().hex
    for i, task in enumerate(tasks):
        pool.submit(task, samples_per_task, f"{desc}-{task.id}", solver=solver, order=i, play=play_id)
    results: dict[int, list[Trajectory]] = {}
    with tqdm(total=len(tasks), desc=desc, disable=not progress) as bar:
        def keep(job: Any, trajs: list[Trajectory]) -> None:
            results[job.tags["order"]] = trajs
            bar.update(1)

        collect_until(pool, lambda: len(tasks) - len(results), keep, timeout_s,
                      lambda: f"{desc}: {len(results)}/{len(tasks)} tasks finished",
                      where=lambda job: job.tags.get("play") == play_id)
    return [t for i in range(len(tasks)) for t in results[i]]
