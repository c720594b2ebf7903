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
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
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
        raise ValueError(f"unknown dtype name {name!r}")
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


def missing_names(sent: Iterable[str], spec: WeightSpec) -> list[str]:
    return sorted(set(spec) - set(sent))


def rpc_deadline(timeout_s: float) -> float:
    """Workers enforce `timeout_s` themselves (with a message naming the phase); the sender waits a
    little longer so that message wins, and still catches a worker that is hung or dead."""
    return timeout_s + min(10.0, max(1.0, 0.2 * timeout_s))


def wait_all(refs: dict[str, ray.ObjectRef], timeout_s: float, phase: str) -> dict[str, Any]:
    """`ray.get` every ref with one deadline; raise one error naming every worker that failed.

    Keys of `refs` are worker descriptions. A worker that hangs is reported as hung in `phase`;
    a dead actor or a raised exception is reported with its cause.
    """
    import ray

    deadline = time.monotonic() + timeout_s
    results: dict[str, Any] = {}
    errors: list[str] = []
    for who, ref in refs.items():
        left = max(0.0, deadline - time.monotonic())
        try:
            results[who] = ray.get(ref, timeout=left)
        except ray.exceptions.GetTimeoutError:
            errors.append(f"{who}: no answer within {timeout_s:.1f} s during {phase} (hung or overloaded)")
        except ray.exceptions.RayActorError as err:
            errors.append(f"{who}: actor died during {phase}: {type(err).__name__}: {_first_line(err)}")
        except Exception as err:  # noqa: BLE001 - collect every worker's failure into one message
            errors.append(f"{who}: {phase} failed: {_root_message(err)}")
    if errors:
        raise WeightSyncError(f"weight sync {phase} failed on {len(errors)} of {len(refs)} worker(s):\n  "
                              + "\n  ".join(errors))
    return results


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else ""


def _root_message(err: BaseException) -> str:
    """Ray wraps remote exceptions (RayTaskError(...)); show the innermost cause's message."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    return f"{type(err).__name__}: {_first_line(err)}"


def describe_receivers(receivers: Sequence[Any], timeout_s: float) -> dict[str, dict[str, Any]]:
    """Ask every GenerationWorker who it is (name, node, served weight spec); keyed by a label
    used in every later error message."""
    labels = [f"worker[{i}] actor={r._actor_id.hex()[:12]}" for i, r in enumerate(receivers)]
    infos = wait_all({lab: r.describe.remote() for lab, r in zip(labels, receivers)}, timeout_s,
                     "describe (handshake)")
    return {f"{lab} name={infos[lab]['name']!r}": infos[lab] for lab in labels}


class WeightSender(abc.ABC):
    """Pushes a new policy version to every receiver; blocking; raises `WeightSyncError`."""

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
        missing = missing_names(seen, self.spec)
        if missing:
            raise WeightSyncError(f"weight sync rejected before any worker changed: {len(missing)} served "
                                  f"parameter(s) were not sent, e.g. {missing[:5]}")


def make_sender(transport: str, receivers: list[Any], bucket_bytes: int = 256 << 20,
                timeout_s: float = 300.0, **options: Any) -> WeightSender:
    """Build the sender for `transport`: "shm" (CPU, same node), "gloo" (CPU broadcast from the
    trainer's rank 0, any node), "nccl" (GPU broadcast, any node), or "cuda_ipc" (GPU, trainer and
    workers on the same device).

    `options` go to the transport (e.g. `master_address`/`master_port` for nccl and gloo,
    `keep_segments` for shm).
    """
    if transport == "shm":
        from actors.weight_sync.shm import ShmSender

        return ShmSender(receivers, bucket_bytes, timeout_s, **options)
    if transport in ("nccl", "gloo"):
        from actors.weight_sync.broadcast import GlooSender, NcclSender

        sender = NcclSender if transport == "nccl" else GlooSender
        return sender(receivers, bucket_bytes, timeout_s, **options)
    if transport == "shm_inplace":
        from actors.weight_sync.inplace import InplaceSender

        return InplaceSender(receivers, bucket_bytes, timeout_s, **options)
    if transport == "cuda_ipc":
        from actors.weight_sync.cuda_ipc import CudaIpcSender

        return CudaIpcSender(receivers, bucket_bytes, timeout_s, **options)
    raise ValueError(f"unknown weight-sync transport {transport!r}; choose shm, shm_inplace, gloo, nccl or cuda_ipc")
