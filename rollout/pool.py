"""A driver-side pool of EnvWorker actors: load-balances episode groups, replaces dead workers.

Every submitted group is tracked until its result is collected. If the worker running it dies,
the worker is replaced and the group re-run from scratch, so its episodes are neither lost nor
trained twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from actors.calls import alive, wait_all
from actors.router import GenerationRouter
from configs.schema import RolloutConfig
from envs.dataset import Task
from envs.registry import Solver
from rollout.env_worker import EnvWorker, EnvWorkerSpec
from rollout.trajectory import Trajectory

logger = logging.getLogger(__name__)

# Share of `rollout.env_worker_resource` each env worker takes (as cluster/placement.py reserves it):
# a node advertising 1 unit hosts up to 1000 workers, so the resource pins without limiting.
ENV_WORKER_RESOURCE_UNITS = 0.001


@dataclass
class GroupJob:
    task: Task
    group_size: int
    group_id: str
    solver: Solver
    worker_index: int
    attempts: int = 1
    tags: dict = field(default_factory=dict)


class EnvWorkerPool:
    """`rollout.num_env_workers` EnvWorker actors, each with `rollout.cpus_per_env_worker` CPUs
    (and `ENV_WORKER_RESOURCE_UNITS` of `rollout.env_worker_resource` when set), all built from
    `spec`. `router` may be None until the generation workers exist (`set_router`); until then only
    scripted-solver groups can run."""

    def __init__(self, spec: EnvWorkerSpec, rollout: RolloutConfig, router: GenerationRouter | None = None,
                 max_attempts: int = 3):
        self.spec = spec
        self.router = router
        self.max_attempts = max_attempts
        pin = rollout.env_worker_resource  # e.g. keep env workers on CPU-only nodes
        self._actor_cls = ray.remote(EnvWorker).options(
            num_cpus=rollout.cpus_per_env_worker,
            resources={pin: ENV_WORKER_RESOURCE_UNITS} if pin else {}, max_concurrency=1000)
        self.workers = [self._spawn() for _ in range(rollout.num_env_workers)]
        self.jobs: dict[ray.ObjectRef, GroupJob] = {}
        self.replaced_workers = 0
        self.rerun_groups = 0

    def _spawn(self):
        return self._actor_cls.remote(self.spec, self.router)

    def wait_ready(self, timeout_s: float = 600.0) -> None:
        """Every worker answers a ping; TimeoutError names the ones that did not (too few CPUs in
        the cluster for rollout.num_env_workers x cpus_per_env_worker?)."""
        try:
            wait_all({f"env worker {i}": w.ping.remote() for i, w in enumerate(self.workers)}, timeout_s,
                     "env worker start-up")
        except TimeoutError as err:
            raise TimeoutError(f"{err}\n  (does the cluster have the CPUs for rollout.num_env_workers x "
                               "rollout.cpus_per_env_worker?)") from None

    def _least_loaded(self) -> int:
        load = [0] * len(self.workers)
        for job in self.jobs.values():
            load[job.worker_index] += 1
        return min(range(len(self.workers)), key=load.__getitem__)

    def submit(self, task: Task, group_size: int, group_id: str, solver: Solver = "policy",
               **tags) -> ray.ObjectRef:
        index = self._least_loaded()
        ref = self.workers[index].run_group.remote(task, group_size, group_id, solver)
        self.jobs[ref] = GroupJob(task, group_size, group_id, solver, index, tags=tags)
        return ref

    @property
    def num_in_flight(self) -> int:
        return len(self.jobs)

    def collect(self, timeout_s: float, num_returns: int = 1) -> list[tuple[GroupJob, list[Trajectory]]]:
        """Finished groups (waits up to `timeout_s` for at least `num_returns`)."""
        if not self.jobs:
            return []
        ready, _ = ray.wait(list(self.jobs), num_returns=min(num_returns, len(self.jobs)),
                            timeout=timeout_s)
        done = []
        for ref in ready:
            job = self.jobs.pop(ref)
            try:
                done.append((job, ray.get(ref)))
            except RayActorError as err:
                self._recover(job, err)
        return done

    def _recover(self, job: GroupJob, err: Exception) -> None:
        """Replace the dead worker (once) and re-run the group, up to `max_attempts` times."""
        if not alive(self.workers[job.worker_index]):
            self._replace(job.worker_index, err)
        if job.attempts >= self.max_attempts:
            raise RuntimeError(f"group {job.group_id} failed {job.attempts} times; last error: {err}")
        ref = self.workers[job.worker_index].run_group.remote(
            job.task, job.group_size, job.group_id, job.solver)
        job.attempts += 1
        self.jobs[ref] = job
        self.rerun_groups += 1

    def cancel_all(self) -> int:
        """Cancel every group still running (their results would come from a policy being rolled
        back); returns how many. They produced nothing, so they leave the accounting untouched."""
        for ref in self.jobs:
            ray.cancel(ref)
        cancelled, self.jobs = len(self.jobs), {}
        return cancelled

    def set_router(self, router: GenerationRouter, timeout_s: float = 120.0) -> None:
        """Point every worker at `router`; a worker found dead is replaced (its replacement starts
        with `router`) and its unfinished groups re-run when `collect` sees them fail. A worker
        that does not answer within `timeout_s` (a trivial call: it is wedged) is a TimeoutError
        naming it, not a driver waiting forever."""
        self.router = router
        refs = [w.set_router.remote(router) for w in self.workers]
        deadline = time.monotonic() + timeout_s
        for index, ref in enumerate(refs):
            try:
                ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
            except RayActorError as err:
                self._replace(index, err)
            except GetTimeoutError:
                raise TimeoutError(f"env worker {index} did not answer set_router within {timeout_s:.0f} s "
                                   "(pointing it at the new generation workers); it is wedged or its node "
                                   "is overloaded") from None

    def _replace(self, index: int, err: Exception) -> None:
        logger.warning("env worker %d died (%s); replacing it", index, type(err).__name__)
        self.workers[index] = self._spawn()
        self.replaced_workers += 1

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
        self.workers, self.jobs = [], {}

