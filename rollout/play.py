"""Play a list of tasks through the env pool and return the trajectories in task order.

Used for scripted-solver demonstrations (behaviour cloning) and held-out evaluation
(`monitor.evaluation`), so both see episodes played exactly as in training.
"""

from __future__ import annotations

import time

from tqdm import tqdm

from envs.dataset import Task
from envs.registry import Solver
from rollout.pool import EnvWorkerPool
from rollout.trajectory import Trajectory


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
