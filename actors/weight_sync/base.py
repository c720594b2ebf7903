"""The weight-sync interface: one `WeightSender.send(named_tensors, version)`, several transports.

The trainer rank-0 actor owns a sender built by `make_sender`; the receivers are GenerationWorker
handles. Every transport shares the same guarantees, which are the reason this module exists:

* the named tensors are consumed lazily, bucket by bucket (ZeRO-3 gathers one parameter at a time),
  so the trainer never holds a second full copy of the model;
* names and shapes are checked against what the workers serve *before* anything reaches vLLM, so a
  bad sync raises `WeightSyncError` and the old version keeps serving;
* a worker's version changes only after its reload succeeded; a reload that fails half-way marks
  the worker unhealthy (it refuses to generate) instead of silently serving mixed weights;
* every wait on a worker has a timeout whose message names the worker and the phase that hung.

Every transport drives the same GenerationWorker protocol: `connect_transport` once per sender
(where the transport needs a set-up in the engine), then per version `begin_update` ->
`apply_update` per bucket -> `finish_update` (`abort_update` on failure), or one
`apply_update(..., version=v)` carrying the whole update (shm). A transport's engine half is a
`Receiver` living in vLLM's worker process; `actors.weight_sync.registry` names both halves.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # Ray is imported where it is used: the bucket data plane runs without it
    import ray

logger = logging.getLogger(__name__)

# name -> (shape, dtype name); dtype names are torch's without the "torch." prefix.
WeightSpec = dict[str, tuple[tuple[int, ...], str]]


class WeightSyncError(RuntimeError):
    """A sync failed; the message names the worker(s), the phase and the cause."""


@dataclass
class SyncStats:
    """What one `send` cost. `generation_pause_s` is the longest time any worker refused to
    generate (drain + reload + resume); `stage_s` / `apply_s` split `seconds` into the sender's
    packing and the workers' reload."""

    version: int
    seconds: float
    bytes: int
    gb_per_s: float
    num_buckets: int
    generation_pause_s: float
    stage_s: float = 0.0
    apply_s: float = 0.0


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype name {name!r}")  # noqa: TRY004 - a bad name, not a bad type
    return dtype


def check_tensor(name: str, shape: Sequence[int], spec: WeightSpec, optional: set[str]) -> str | None:
    """Return why `name` with `shape` cannot be loaded by workers serving `spec` (None if it can).

    dtypes may differ (vLLM casts while loading), names and shapes may not: a mismatch would either
    crash inside vLLM's loader half-way through a reload or silently load nothing.
    """
    if name not in spec:
        if name in optional:
            return None
        near = ", ".join(sorted(spec)[:3])
        return f"unknown parameter {name!r} (the workers serve names like {near}, ...)"
    want = tuple(spec[name][0])
    if tuple(shape) != want:
        return f"parameter {name!r} has shape {tuple(shape)} but the workers expect {want}"
    return None


def rpc_deadline(timeout_s: float) -> float:
    """Workers enforce `timeout_s` themselves (with a message naming the phase); the sender waits a
    little longer so that message wins, and still catches a worker that is hung or dead."""
    return timeout_s + min(10.0, max(1.0, 0.2 * timeout_s))


def wait_workers(refs: Mapping[str, ray.ObjectRef], timeout_s: float, phase: str) -> dict[str, Any]:
    """`actors.calls.wait_all` for a sync phase: every failure, a hang included, is a
    `WeightSyncError` naming the workers (keys of `refs`) and `phase`."""
    from actors.calls import wait_all

    return wait_all(refs, timeout_s, f"weight sync {phase}", error=WeightSyncError, hang_error=WeightSyncError)


def describe_receivers(receivers: Sequence[Any], timeout_s: float) -> dict[str, dict[str, Any]]:
    """Ask every GenerationWorker who it is (name, node, served weight spec); keyed by a label
    used in every later error message."""
    labels = [f"worker[{i}] actor={r._actor_id.hex()[:12]}" for i, r in enumerate(receivers)]
    infos = wait_workers({lab: r.describe.remote() for lab, r in zip(labels, receivers)}, timeout_s,
                         "describe (handshake)")
    return {f"{lab} name={infos[lab]['name']!r}": infos[lab] for lab in labels}


class WeightSender(abc.ABC):
    """Pushes a new policy version to every receiver; blocking; raises `WeightSyncError`."""

    transport = "abstract"  # its name in the registry

    def __init__(self, receivers: Sequence[Any], bucket_bytes: int, timeout_s: float) -> None:
        if not receivers:
            raise ValueError("a weight sender needs at least one GenerationWorker receiver")
        if bucket_bytes <= 0:
            raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
        self.receivers = list(receivers)
        self.bucket_bytes = bucket_bytes
        self.timeout_s = timeout_s
        self.infos = describe_receivers(self.receivers, timeout_s)
        self.labels = list(self.infos)
        first = next(iter(self.infos.values()))
        self.spec: WeightSpec = {k: (tuple(v[0]), v[1]) for k, v in first["weight_spec"].items()}
        self.optional: set[str] = set(first["optional_names"])
        for label, info in self.infos.items():
            if set(info["weight_spec"]) != set(self.spec):
                raise WeightSyncError(f"{label} serves a different model than {self.labels[0]}")

    @abc.abstractmethod
    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> SyncStats:
        """Consume `named_tensors` once, bucket by bucket, and make every receiver serve `version`."""

    def close(self) -> None:
        """Release transport resources (shared memory, process groups)."""

    def call_all(self, method: str, *args: Any) -> dict[str, ray.ObjectRef]:
        """`method(*args)` on every receiver, keyed by its label."""
        return {label: getattr(r, method).remote(*args) for label, r in zip(self.labels, self.receivers)}

    def streamed(self, version: int, stream: Callable[[], int]) -> tuple[int, float]:
        """begin_update -> `stream()` (applies the buckets, returns bytes sent) -> finish_update on
        every receiver; returns (bytes, longest generation pause). Any failure after begin tells
        every receiver to abort (its weights are partly replaced: it marks itself unhealthy)."""
        try:
            self.wait(self.call_all("begin_update", self.transport, version, None, self.timeout_s),
                      f"begin_update to version {version} (drain, prepare)")
            total = stream()
            results = self.wait(self.call_all("finish_update", version, self.timeout_s),
                                f"finish_update to version {version}")
        except BaseException as err:
            refs = self.call_all("abort_update", f"{type(err).__name__}: {err}")
            try:
                wait_workers(refs, 60.0, "abort_update")
            except WeightSyncError as abort_err:
                logger.error("abort after a failed sync did not reach every worker: %s", abort_err)
            raise WeightSyncError(f"{self.transport} sync to version {version} failed after the engines were "
                                  f"paused; every worker was told to abort and is now unhealthy (weights "
                                  f"partly replaced): {err}") from err
        return total, max(r["pause_s"] for r in results.values())

    def wait(self, refs: Mapping[str, ray.ObjectRef], phase: str) -> dict[str, Any]:
        """Wait for one phase on the receivers under the sender's timeout."""
        return wait_workers(refs, rpc_deadline(self.timeout_s), phase)

    def validated(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield the tensors after checking each against the served spec; on the first bad one,
        drain the rest of the iterator (ZeRO-3 gathers are collectives: the other trainer ranks
        must not be left waiting) and raise. Also raises if a served name never came."""
        seen: set[str] = set()
        iterator = iter(named_tensors)
        exhausted = False
        try:
            for name, tensor in iterator:
                problem = check_tensor(name, tensor.shape, self.spec, self.optional)
                if problem is None and name in seen:
                    problem = f"parameter {name!r} was sent twice"
                if problem is not None:
                    raise WeightSyncError(f"weight sync rejected before any worker changed: {problem}")
                seen.add(name)
                yield name, tensor
            exhausted = True
        finally:
            if not exhausted:  # rejected here, or the transport failed while consuming
                for _ in iterator:
                    pass
        missing = sorted(set(self.spec) - seen)
        if missing:
            raise WeightSyncError(f"weight sync rejected before any worker changed: {len(missing)} served "
                                  f"parameter(s) were not sent, e.g. {missing[:5]}")


class Receiver:
    """A transport's engine half, inside vLLM's worker process: one instance per transport and
    process, kept between updates (mappings, process groups). `engine` is that process's
    `actors.vllm_extension.EngineWeights` (the served model, its device and rank, and the ways to
    load weights into it). Plain values only come in and go out (vLLM serialises them); `apply`'s
    payload arrives with its entries as `BucketEntry` objects.

    Streaming transports keep the default begin / finish (vLLM's layer-wise reload around the
    buckets); a one-shot transport's `apply` is a whole update (no begin or finish) and may return
    {"refused": reason} when it failed before touching any weight."""

    def connect(self, engine: Any, setup: Any) -> Any:
        """Once per sender (GenerationWorker.connect_transport)."""
        raise NotImplementedError(f"{type(self).__name__} has no connect step")

    def begin(self, engine: Any, setup: Any) -> None:
        engine.begin()

    def apply(self, engine: Any, payload: dict[str, Any]) -> dict[str, Any] | None:
        raise NotImplementedError

    def finish(self, engine: Any) -> None:
        engine.finish()
