"""GenerationRouter: spreads generate calls over GenerationWorkers from inside env-worker actors.

A small picklable object (only actor handles travel; counters start fresh in each process), so the
driver builds one and passes it to every env worker. Least-outstanding routing is per process: each
env worker balances its own requests, which approximates global balance when every env worker runs
many episodes, without a central router actor on the hot path.

A worker that died (Ray actor error) or refuses work because a failed reload left it unhealthy is
reported (logged at WARNING, and named when no worker is left), skipped from then on, and the
request is retried on another worker. Replacements, and engines added or retired during the run
(elastic capacity), reach every env worker as a new member list (`set_workers`), adopted in place so
that episodes already running route their next turn by it too.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass
from typing import Any

import ray

from actors.types import GenerationOutput, SamplingSpec, WorkerUnhealthyError

logger = logging.getLogger(__name__)

_DEAD_ERRORS: tuple[type[BaseException], ...] = tuple(
    t for t in (getattr(ray.exceptions, "RayActorError", None), getattr(ray.exceptions, "ActorUnavailableError", None))
    if t is not None)


class NoWorkerAvailableError(RuntimeError):
    """Every GenerationWorker is dead or unhealthy."""


@dataclass
class WorkerFailure:
    worker: str
    error: str


class GenerationRouter:
    """`timeout_s` (optional) bounds one generate call; a timeout is raised (naming the worker), not
    failed over, because a slow worker is not a dead one."""

    def __init__(self, workers: list[Any], timeout_s: float | None = None) -> None:
        self.timeout_s = timeout_s
        self._workers: list[Any] = []
        self._reset_state()
        self.set_workers(workers)

    def _reset_state(self) -> None:
        self._outstanding: dict[str, int] = {}
        self._excluded: set[str] = set()
        self._failures: list[WorkerFailure] = []
        self._tiebreak = itertools.count()

    def __getstate__(self) -> dict[str, Any]:
        return {"workers": self._workers, "excluded": set(self._excluded), "timeout_s": self.timeout_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._workers = []
        self._reset_state()
        self.set_workers(state["workers"])
        self._excluded = set(state["excluded"])
        self.timeout_s = state.get("timeout_s")

    @staticmethod
    def _key(handle: Any) -> str:
        return handle._actor_id.hex()

    @property
    def workers(self) -> list[Any]:
        return list(self._workers)

    def set_workers(self, handles: list[Any]) -> None:
        """Replace the worker set (e.g. after restarting dead workers); exclusions are cleared."""
        self._workers = list(handles)
        self._excluded = set()
        self._outstanding = {self._key(h): self._outstanding.get(self._key(h), 0) for h in self._workers}

    def _pick(self) -> Any | None:
        live = [h for h in self._workers if self._key(h) not in self._excluded]
        if not live:
            return None
        turn = next(self._tiebreak)
        # fewest outstanding first; ties rotate so idle workers share the first requests
        return min(live, key=lambda h: (self._outstanding.get(self._key(h), 0),
                                        (live.index(h) - turn) % len(live)))

    def _exclude(self, handle: Any, err: BaseException) -> None:
        key = self._key(handle)
        if key in self._excluded:
            return
        self._excluded.add(key)
        text = str(err).strip().splitlines()
        failure = WorkerFailure(worker=f"actor={key[:12]}", error=f"{type(err).__name__}: {text[0] if text else ''}")
        self._failures.append(failure)
        logger.warning("GenerationRouter: dropping worker %s (%s); %d worker(s) left", failure.worker,
                       failure.error, len(self._workers) - len(self._excluded))

    async def generate(self, prompt_token_ids: list[int], spec: SamplingSpec) -> GenerationOutput:
        """Generate on the least-loaded live worker; fail over to another one if it dies."""
        while True:
            handle = self._pick()
            if handle is None:
                raise NoWorkerAvailableError(
                    f"no GenerationWorker left ({len(self._workers)} configured); failures: "
                    + "; ".join(f"{f.worker}: {f.error}" for f in self._failures))
            key = self._key(handle)
            self._outstanding[key] = self._outstanding.get(key, 0) + 1
            try:
                return await asyncio.wait_for(handle.generate.remote(prompt_token_ids, spec), self.timeout_s)
            except asyncio.TimeoutError as err:
                raise TimeoutError(f"GenerationRouter: worker actor={key[:12]} did not answer generate within "
                                   f"{self.timeout_s} s") from err
            except WorkerUnhealthyError as err:
                self._exclude(handle, err)
            except _DEAD_ERRORS as err:
                self._exclude(handle, err)
            finally:
                self._outstanding[key] = max(0, self._outstanding.get(key, 1) - 1)
