"""Admission control and update bookkeeping for GenerationWorker, kept apart from the vLLM calls.

`EngineGate` decides when requests may enter the engine. Every request passes the gate and records
the served version *before* it is submitted; a weight update closes the gate and waits until no
admitted request is left. That is why each output has exactly one policy version: nothing admitted
under version v can still be running when v+1 is loaded. (vLLM's own `pause_generation(mode="wait")`
is not enough: a request admitted just before the pause could still be queued inside the engine
and then run on the new weights while labelled with the old version.)

`UpdateState` tracks health: once vLLM's weights may be half-replaced the worker is unhealthy for
good (generation raises), because serving an unknown mixture of two versions silently is worse
than losing a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from actors.types import WorkerUnhealthyError
from actors.weight_sync.base import WeightSpec, check_tensor, dtype_from_name
from actors.weight_sync.buckets import BucketEntry

logger = logging.getLogger(__name__)


class UpdateState:
    def __init__(self, name: str) -> None:
        self.name = name
        self.healthy = True
        self.reason = ""
        self.open = False
        self.transport = ""
        self.target = -1
        self.loaded: set[str] = set()
        self.accepted: int | None = None  # a version the next update may carry though not newer

    def check_healthy(self) -> None:
        if not self.healthy:
            raise WorkerUnhealthyError(f"{self.name} is unhealthy: {self.reason}")

    def mark_unhealthy(self, reason: str) -> None:
        self.healthy, self.reason = False, reason
        logger.error("%s marked unhealthy: %s", self.name, reason)

    def check_can_update(self, current: int, new: int) -> None:
        self.check_healthy()
        if self.open:
            raise RuntimeError(f"{self.name}: an update to version {self.target} is still open")
        if new <= current and new != self.accepted:
            raise ValueError(f"{self.name}: update to version {new} is not newer than the served version {current}")
        self.accepted = None  # once

    def start(self, transport: str, version: int) -> None:
        self.open, self.transport, self.target, self.loaded = True, transport, version, set()

    def expect_open(self, what: str, transport: str | None = None) -> None:
        self.check_healthy()
        if not self.open:
            raise RuntimeError(f"{self.name}: {what} called without begin_update")
        if transport is not None and transport != self.transport:
            raise RuntimeError(f"{self.name}: {what} over {transport!r} during an update begun over "
                               f"{self.transport!r}")

    def close(self) -> None:
        self.open = False

    async def run(self, engine: Any, method: str, args: tuple, timeout_s: float, phase: str,
                  fatal: bool) -> list[Any]:
        """collective_rpc with a timeout; if `fatal`, any failure marks the worker unhealthy."""
        consequence = "; the worker's weights may be half-replaced, it is marked unhealthy" if fatal else ""
        try:
            return await asyncio.wait_for(engine.collective_rpc(method, args=args), timeout_s)
        except asyncio.TimeoutError as err:
            if fatal:
                self.mark_unhealthy(f"{phase} did not finish within {timeout_s:.1f} s")
            raise TimeoutError(f"{self.name}: {phase} did not finish within {timeout_s:.1f} s{consequence}") from err
        except Exception as err:
            if fatal:
                self.mark_unhealthy(f"{phase} failed: {type(err).__name__}: {err}")
            raise RuntimeError(f"{self.name}: {phase} failed: {type(err).__name__}: {err}{consequence}") from err


class EngineGate:
    """Admission gate + in-flight tracking; see the module docstring."""

    def __init__(self, name: str, mode: str, on_busy: Callable[[bool], None] | None = None) -> None:
        self.name = name
        self.mode = mode
        self.on_busy = on_busy  # told when the first request enters and when the last one leaves
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight: set[str] = set()
        self._paused_at: float | None = None
        self.held_in_engine: str | None = None  # "keep"/"recompute": requests wait inside vLLM

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @contextlib.asynccontextmanager
    async def request(self, update: UpdateState) -> AsyncIterator[str]:
        # Re-check after every wake-up: a pause may close the gate again between the wake-up and
        # this task running. No await between the final check and registering.
        while not self._open.is_set():
            await self._open.wait()
        update.check_healthy()
        request_id = uuid.uuid4().hex
        if not self._in_flight and self.on_busy is not None:
            self.on_busy(True)
        self._in_flight.add(request_id)
        self._idle.clear()
        try:
            yield request_id
        finally:
            self._in_flight.discard(request_id)
            if not self._in_flight:
                self._idle.set()
                if self.on_busy is not None:
                    self.on_busy(False)

    async def pause(self, engine: Any, timeout_s: float, mode: str | None = None) -> float:
        """Close the gate, then settle the admitted requests by `mode` (default: the gate's):
        drain ("wait"), abort then drain ("abort"), or hold them inside vLLM ("keep", "recompute").

        After a drain vLLM itself is not paused: with the gate closed and nothing admitted it has
        no request to step, so a reload through collective_rpc runs on an idle engine (this saves
        two engine round trips per sync). Callers that changed weights clear the prefix cache
        before resuming.
        """
        if self._paused_at is not None:
            raise RuntimeError(f"{self.name} is already paused")
        mode = mode or self.mode
        start = time.perf_counter()
        self._open.clear()
        self._paused_at = start
        try:
            if mode in ("keep", "recompute"):
                await asyncio.wait_for(engine.pause_generation(mode="keep", clear_cache=False), timeout_s)
                self.held_in_engine = mode
                return time.perf_counter() - start
            if mode == "abort" and self._in_flight:
                await engine.abort(list(self._in_flight))
            try:
                await asyncio.wait_for(self._idle.wait(), timeout_s)
            except asyncio.TimeoutError as err:
                raise TimeoutError(f"{self.name}: {len(self._in_flight)} in-flight request(s) did not drain "
                                   f"within {timeout_s:.1f} s (phase: drain before weight reload); nothing "
                                   f"was changed and generation resumed") from err
        except BaseException:
            self._open.set()
            self._paused_at = None
            raise
        return time.perf_counter() - start

    async def resume(self, engine: Any) -> float:
        """Reopen the gate (and vLLM's scheduler, if requests were held in it); returns the pause."""
        if self._paused_at is None:
            return 0.0
        if self.held_in_engine:
            await asyncio.wait_for(engine.resume_generation(), 60.0)
            self.held_in_engine = None
        paused = time.perf_counter() - self._paused_at
        self._paused_at = None
        self._open.set()
        return paused


def _entry_problems(entries: Sequence[BucketEntry], spec: WeightSpec, optional: set[str]) -> list[str]:
    problems, seen = [], set()
    for e in entries:
        problem = check_tensor(e.name, e.shape, spec, optional)
        if problem is None and e.name in seen:
            problem = f"parameter {e.name!r} appears twice"
        if problem is None:
            numel = 1
            for dim in e.shape:
                numel *= int(dim)
            if numel * dtype_from_name(e.dtype).itemsize != int(e.nbytes):
                problem = f"parameter {e.name!r}: {e.nbytes} bytes do not match shape {tuple(e.shape)} of {e.dtype}"
        if problem:
            problems.append(problem)
        seen.add(e.name)
    return problems


def check_bucket(entries: Sequence[BucketEntry], spec: WeightSpec, optional: Sequence[str]) -> str | None:
    problems = _entry_problems(entries, spec, set(optional))
    return "; ".join(problems[:5]) if problems else None


def check_full_manifest(name: str, entries: Sequence[BucketEntry], spec: WeightSpec,
                        optional: Sequence[str]) -> None:
    """Refuse a complete manifest before anything is touched: the old version keeps serving."""
    problems = _entry_problems(entries, spec, set(optional))
    missing = sorted(set(spec) - {e.name for e in entries})
    if missing:
        problems.append(f"{len(missing)} served parameter(s) missing, e.g. {missing[:5]}")
    if problems:
        raise ValueError(f"{name} refused the weight update (still serving its old version): "
                         + "; ".join(problems[:5]))


def engine_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """Entries as plain lists: vLLM's collective_rpc serialises no dataclasses."""
    return {**payload, "entries": [e.to_wire() for e in payload["entries"]]}
