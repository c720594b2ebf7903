"""A driver-side pool of EnvWorker actors: load-balances episode groups, replaces dead workers,
grows and shrinks during a run.

Every submitted group is tracked until its result is collected. If the worker running it dies,
the worker is replaced and the group re-run from scratch, so its episodes are neither lost nor
trained twice.

Elastic capacity (`launch/elastic.py`): `add_workers` starts new workers, which take groups once
they answer a ping (a worker whose resources do not appear within `rollout.capacity_timeout_s` is
given up, logged). `retire_workers` takes workers out of the rotation at once; each one finishes the
groups it is running and is killed when the last is collected (retiring hands nothing back: a
group is short, and re-running it elsewhere would only waste its episodes). A retiring worker that
dies has its groups re-run on the others, as any dead worker's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

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
    worker: Any  # the EnvWorker actor running it
    attempts: int = 1
    tags: dict = field(default_factory=dict)

    @property
    def worker_id(self) -> str:
        return self.worker._actor_id.hex()


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
        self.capacity_timeout_s = rollout.capacity_timeout_s
        self.workers = [self._spawn() for _ in range(rollout.num_env_workers)]
        self.jobs: dict[ray.ObjectRef, GroupJob] = {}
        self.replaced_workers = 0
        self.rerun_groups = 0
        self.starting: dict[ray.ObjectRef, tuple[Any, float]] = {}  # ping ref -> (worker, deadline)
        self.retiring: list[Any] = []

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

    def _least_loaded(self) -> Any:
        self._admit_started()
        if not self.workers:
            raise RuntimeError("no env worker in rotation (every one retired?)")
        load = {_key(w): 0 for w in self.workers}
        for job in self.jobs.values():
            if job.worker_id in load:
                load[job.worker_id] += 1
        return min(self.workers, key=lambda w: load[_key(w)])

    def submit(self, task: Task, group_size: int, group_id: str, solver: Solver = "policy",
               **tags) -> ray.ObjectRef:
        worker = self._least_loaded()
        ref = worker.run_group.remote(task, group_size, group_id, solver)
        self.jobs[ref] = GroupJob(task, group_size, group_id, solver, worker, tags=tags)
        return ref

    @property
    def num_in_flight(self) -> int:
        return len(self.jobs)

    def collect(self, timeout_s: float, num_returns: int = 1,
                where: Callable[[GroupJob], bool] | None = None) -> list[tuple[GroupJob, list[Trajectory]]]:
        """Finished groups (waits up to `timeout_s` for at least `num_returns`); `where`: only the
        jobs it accepts (a held-out evaluation between steps leaves the training groups in flight)."""
        refs = [ref for ref, job in self.jobs.items() if where is None or where(job)]
        if not refs:
            return []
        ready, _ = ray.wait(refs, num_returns=min(num_returns, len(refs)), timeout=timeout_s)
        done = []
        for ref in ready:
            job = self.jobs.pop(ref)
            try:
                done.append((job, ray.get(ref)))
            except RayActorError as err:
                self._recover(job, err)
        self._reap_retired()
        return done

    def _recover(self, job: GroupJob, err: Exception) -> None:
        """Replace the dead worker (once; a retiring one is not) and re-run the group, up to
        `max_attempts` times."""
        worker = job.worker
        if any(w is worker for w in self.workers) and not alive(worker):
            worker = self._replace(worker, err)
        elif not any(w is worker for w in self.workers):  # retiring, or already replaced
            worker = self._least_loaded()
        if job.attempts >= self.max_attempts:
            raise RuntimeError(f"group {job.group_id} failed {job.attempts} times; last error: {err}")
        ref = worker.run_group.remote(job.task, job.group_size, job.group_id, job.solver)
        job.attempts += 1
        job.worker = worker
        self.jobs[ref] = job
        self.rerun_groups += 1

    # ---- elastic capacity ----------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Workers in rotation plus those starting (what the next decisions build on)."""
        return len(self.workers) + len(self.starting)

    def add_workers(self, n: int) -> None:
        """Start `n` workers; each joins the rotation once it answers (`_admit_started`)."""
        deadline = time.monotonic() + self.capacity_timeout_s
        for _ in range(n):
            worker = self._spawn()
            self.starting[worker.ping.remote()] = (worker, deadline)

    def _admit_started(self) -> None:
        if not self.starting:
            return
        ready, _ = ray.wait(list(self.starting), num_returns=len(self.starting), timeout=0)
        for ref in ready:
            worker, _ = self.starting.pop(ref)
            try:
                ray.get(ref)
            except RayActorError as err:
                logger.warning("a new env worker died before its first group (%s); not replaced", err)
                continue
            worker.set_router.remote(self.router)
            self.workers.append(worker)
            logger.info("env worker added: %d in rotation", len(self.workers))
        now = time.monotonic()
        for ref, (worker, deadline) in list(self.starting.items()):
            if now > deadline:
                del self.starting[ref]
                ray.kill(worker, no_restart=True)
                logger.warning("a new env worker got no resources within rollout.capacity_timeout_s=%g s; "
                               "going on with %d", self.capacity_timeout_s, len(self.workers))

    def wait_started(self, timeout_s: float) -> int:
        """Block until every starting worker joined or was given up (tests, `scale-run --wait`);
        returns how many are in rotation."""
        deadline = time.monotonic() + timeout_s
        while self.starting and time.monotonic() < deadline:
            ray.wait(list(self.starting), num_returns=len(self.starting),
                     timeout=max(0.0, min(1.0, deadline - time.monotonic())))
            self._admit_started()
        return len(self.workers)

    def retire_workers(self, n: int) -> int:
        """Take up to `n` workers out of the rotation, the least loaded first (never the last one);
        returns how many. Their running groups finish; then they are killed (`_reap_retired`)."""
        n = min(n, len(self.workers) - 1)
        for _ in range(max(0, n)):
            worker = self._least_loaded()
            self.workers = [w for w in self.workers if w is not worker]
            self.retiring.append(worker)
        self._reap_retired()
        return max(0, n)

    def _reap_retired(self) -> None:
        busy = {job.worker_id for job in self.jobs.values()}
        for worker in [w for w in self.retiring if _key(w) not in busy]:
            ray.kill(worker, no_restart=True)
            self.retiring = [w for w in self.retiring if w is not worker]
            logger.info("retired env worker stopped (its groups were collected): %d in rotation", len(self.workers))

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
        refs = [w.set_router.remote(router) for w in self.workers + self.retiring]
        deadline = time.monotonic() + timeout_s
        for index, ref in enumerate(refs):
            try:
                ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
            except RayActorError as err:
                if index < len(self.workers):
                    self._replace(self.workers[index], err)
            except GetTimeoutError:
                raise TimeoutError(f"env worker {index} did not answer set_router within {timeout_s:.0f} s "
                                   "(pointing it at the new generation workers); it is wedged or its node "
                                   "is overloaded") from None

    def _replace(self, worker: Any, err: Exception) -> Any:
        index = next(i for i, w in enumerate(self.workers) if w is worker)
        logger.warning("env worker %d died (%s); replacing it", index, type(err).__name__)
        self.workers[index] = self._spawn()
        self.replaced_workers += 1
        return self.workers[index]

    def shutdown(self) -> None:
        for w in self.workers + self.retiring + [w for w, _ in self.starting.values()]:
            ray.kill(w)
        self.workers, self.jobs, self.retiring, self.starting = [], {}, [], {}


def _key(worker: Any) -> str:
    return worker._actor_id.hex()

