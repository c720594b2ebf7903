"""A driver-side pool of EnvWorker actors: load-balances episode groups, replaces dead workers.

Every submitted group is tracked until its result is collected. If the worker running it dies,
the worker is replaced and the group re-run from scratch, so its episodes are neither lost nor
trained twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import ray
from ray.exceptions import RayActorError

from actors.router import GenerationRouter
from envs.dataset import Task
from envs.registry import Solver
from envs.worker import EnvWorker, EnvWorkerSettings
from rollout.trajectory import Trajectory

logger = logging.getLogger(__name__)


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
    def __init__(self, num_workers: int, settings: EnvWorkerSettings, router: GenerationRouter | None,
                 num_cpus: float = 0.25, resources: dict[str, float] | None = None,
                 max_attempts: int = 3):
        self.settings = settings
        self.router = router
        self.max_attempts = max_attempts
        self._actor_cls = ray.remote(EnvWorker).options(
            num_cpus=num_cpus, resources=resources or {}, max_concurrency=1000)
        self.workers = [self._spawn() for _ in range(num_workers)]
        self.jobs: dict[ray.ObjectRef, GroupJob] = {}
        self.replaced_workers = 0
        self.rerun_groups = 0

    def _spawn(self):
        return self._actor_cls.remote(self.settings, self.router)

    def wait_ready(self, timeout_s: float = 600.0) -> None:
        try:
            ray.get([w.ping.remote() for w in self.workers], timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"env workers not ready after {timeout_s:.0f}s "
                               "(not enough CPUs in the cluster for rollout.num_env_workers?)") from None

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
        if not _alive(self.workers[job.worker_index]):
            self._replace(job.worker_index, err)
        if job.attempts >= self.max_attempts:
            raise RuntimeError(f"group {job.group_id} failed {job.attempts} times; last error: {err}")
        ref = self.workers[job.worker_index].run_group.remote(
            job.task, job.group_size, job.group_id, job.solver)
        job.attempts += 1
        self.jobs[ref] = job
        self.rerun_groups += 1

    def set_router(self, router: GenerationRouter) -> None:
        """Point every worker at `router`; a worker found dead is replaced (its replacement starts
        with `router`) and its unfinished groups re-run when `collect` sees them fail."""
        self.router = router
        refs = [w.set_router.remote(router) for w in self.workers]
        for index, ref in enumerate(refs):
            try:
                ray.get(ref)
            except RayActorError as err:
                self._replace(index, err)

    def _replace(self, index: int, err: Exception) -> None:
        logger.warning("env worker %d died (%s); replacing it", index, type(err).__name__)
        self.workers[index] = self._spawn()
        self.replaced_workers += 1

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
        self.workers, self.jobs = [], {}


def _alive(actor) -> bool:
    try:
        ray.get(actor.ping.remote(), timeout=10)
        return True
    except Exception:  # noqa: BLE001 - any failure to answer means the actor is gone
        return False
