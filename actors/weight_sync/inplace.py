"""In-place shared-memory transport (CPU, one node): the trainer writes straight into engine weights.

`shm` copies every byte twice (trainer -> staging file -> vLLM's parameters), which bounds it at 2x
the memcpy floor (3.5-4x measured). Here each CPU engine moves its parameters, once at start-up,
into one file under /dev/shm; the sender maps those files and copies each trainer tensor directly to
its place in every engine: one copy per engine, no staging.

Where a checkpoint tensor lives inside vLLM's parameters (q/k/v share `qkv_proj`, gate/up share
`gate_up_proj`) is not hard-coded: the engine loads a marker tensor through vLLM's own loader and
looks for it, which also proves the layout is one contiguous, untransposed range (otherwise it
refuses, and `shm` remains). Needs the CPU direct-reload layout (plain linear weights).

Semantics: the engine is drained and paused for the whole write (its weights change in place), so
the pause equals the copy, about `shm`'s reload time. A failure after the first write leaves the
engine with mixed weights: it is told to abort and marks itself unhealthy (as with streaming).

Protocol: `connect_transport` once (the engine half, `InplaceReceiver`, shares the weights and
returns their places as `BucketEntry`s of its file); per version `begin_update` (drain), the
writes, one `apply_update` listing what was written (the worker checks it against its spec; the
engine has nothing left to do), `finish_update`.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from actors.weight_sync.base import Receiver, SyncStats, WeightSender, WeightSyncError
from actors.weight_sync.buckets import BucketEntry, unpack_bucket

logger = logging.getLogger(__name__)


def _vllm_param_name(hf_name: str, packed: dict[str, list[str]]) -> str:
    for fused, parts in packed.items():
        for part in parts:
            if f".{part}." in hf_name:
                return hf_name.replace(f".{part}.", f".{fused}.")
    return hf_name


def share_model_weights(model: torch.nn.Module, spec: dict[str, tuple[tuple[int, ...], str]],
                        shm_dir: str = "/dev/shm") -> tuple[str, int, list[BucketEntry]]:
    """Engine side: move every parameter into one shared file; return (path, bytes, where each
    served checkpoint tensor lies in it)."""
    from actors.weight_sync.shm import _create_segment

    params = dict(model.named_parameters())  # a tied lm_head is listed once
    total = sum(p.numel() * p.element_size() for p in params.values())
    # The engine's pid in the name: remove_stale_segments frees the file once that process is gone.
    segment = _create_segment(os.path.join(shm_dir, f"labrl-ws-{os.getpid()}-engine-{uuid.uuid4().hex[:8]}"),
                              total)
    start: dict[str, int] = {}
    offset = 0
    with torch.no_grad():
        for name, p in params.items():
            nbytes = p.numel() * p.element_size()
            view = segment.tensor[offset:offset + nbytes].view(p.dtype).view(p.shape)
            view.copy_(p.data)
            p.data = view
            start[name], offset = offset, offset + nbytes
    packed = getattr(model, "packed_modules_mapping", {}) or {}
    layout = [_locate(model, params, start, name, shape, packed) for name, (shape, _) in spec.items()]
    return segment.path, total, layout


def _locate(model: torch.nn.Module, params: dict[str, torch.nn.Parameter], start: dict[str, int], name: str,
            shape: tuple[int, ...], packed: dict[str, list[str]]) -> BucketEntry:
    """Load a marker for `name` through vLLM's loader and find the contiguous range it landed in."""
    target = _vllm_param_name(name, packed)
    if target not in params:
        raise RuntimeError(f"shm_inplace: checkpoint tensor {name!r} has no vLLM parameter {target!r}")
    p = params[target]
    saved = p.data.clone()
    numel = 1
    for dim in shape:
        numel *= int(dim)
    marker = torch.arange(1, numel + 1, dtype=torch.float64).view(shape).to(p.dtype)
    with torch.no_grad():
        p.data.fill_(float("nan"))
        model.load_weights([(name, marker)])
        flat = p.data.view(-1)
        hit = (~torch.isnan(flat)).nonzero().view(-1)
        first = int(hit[0]) if hit.numel() else -1
        # The loader may also zero padding (vLLM pads the vocabulary rows): written, but not ours.
        outside = torch.cat([flat[:first], flat[first + numel:]]) if first >= 0 else flat
        ok = (first >= 0 and torch.equal(flat[first:first + numel], marker.view(-1))
              and not torch.nan_to_num(outside, nan=0.0).any())
        p.data.copy_(saved)
    if not ok:
        raise RuntimeError(f"shm_inplace: {name!r} {tuple(shape)} does not load as one contiguous, untransposed "
                           f"range of {target!r} {tuple(p.shape)} ({hit.numel()} elements written for {numel}; "
                           f"tensor-parallel or quantized engine?); use sync.transport=shm")
    return BucketEntry(name, [int(d) for d in shape], str(p.dtype).removeprefix("torch."),
                       start[target] + first * p.element_size(), numel * p.element_size())


class InplaceSender(WeightSender):
    """Trainer side: pause every engine, copy each tensor into each engine's file, resume."""

    transport = "shm_inplace"

    def __init__(self, receivers: Sequence[Any], bucket_bytes: int, timeout_s: float) -> None:
        from actors.weight_sync.shm import remove_stale_segments, require_one_node

        super().__init__(receivers, bucket_bytes, timeout_s)
        require_one_node(self)
        for label, info in self.infos.items():
            if int(info.get("tensor_parallel_size", 1)) != 1:
                raise WeightSyncError(f"shm_inplace needs tensor_parallel_size 1; {label} has "
                                      f"{info['tensor_parallel_size']} (use shm)")
        remove_stale_segments()  # files of engines that died (they cannot clean up)
        refs = self.call_all("connect_transport", self.transport, {"spec": self.spec}, timeout_s, True)
        shared = self.wait(refs, "connect (engine weights into /dev/shm)")
        # per engine: its file, where each tensor lies in it, and views of those places
        self.targets: list[tuple[torch.Tensor, list[BucketEntry], dict[str, torch.Tensor]]] = []
        for label in self.labels:
            info = shared[label][0]  # one vLLM worker process (tensor_parallel_size 1)
            mapped = torch.from_file(info["path"], shared=True, size=int(info["nbytes"]), dtype=torch.uint8)
            entries = [BucketEntry.from_wire(w) for w in info["entries"]]
            self.targets.append((mapped, entries, dict(unpack_bucket(mapped, entries))))

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> SyncStats:
        start = time.perf_counter()

        def write() -> int:
            total = 0
            with torch.no_grad():
                for name, tensor in self.validated(named_tensors):
                    for _, _, views in self.targets:
                        if name in views:  # a tied lm_head has no place of its own
                            views[name].copy_(tensor)
                    total += tensor.numel() * tensor.element_size()
            # validated() saw every served name: each engine's whole layout was written
            refs = {label: r.apply_update.remote(self.transport, {"entries": entries}, self.timeout_s)
                    for label, r, (_, entries, _) in zip(self.labels, self.receivers, self.targets)}
            self.wait(refs, f"apply_update to version {version} (check what was written)")
            return total

        total, pause = self.streamed(version, write)
        seconds = time.perf_counter() - start
        logger.info("shm_inplace weight sync v%d: %.1f MB in %.3f s (pause %.3f s)", version, total / 1e6,
                    seconds, pause)
        return SyncStats(version=version, seconds=seconds, bytes=total, gb_per_s=total / seconds / 1e9,
                         num_buckets=0, generation_pause_s=pause, stage_s=0.0, apply_s=seconds)

    def close(self) -> None:
        self.targets = []


class InplaceReceiver(Receiver):
    """Engine half: share the weights once; afterwards the trainer writes them while the worker
    holds generation paused, so begin and apply have nothing to do in the engine and finish only
    rebuilds the packed copies CPU layers compute through (generation.cpu_gemm=packed)."""

    def connect(self, engine: Any, setup: dict[str, Any]) -> dict[str, Any]:
        if not engine.direct:
            raise RuntimeError("shm_inplace needs a CPU engine with plain weights (cpu_direct_reload)")
        with engine.context():
            path, nbytes, entries = share_model_weights(engine.model, setup["spec"])
        return {"path": path, "nbytes": nbytes, "entries": [e.to_wire() for e in entries]}

    def begin(self, engine: Any, setup: Any) -> None:
        pass

    def apply(self, engine: Any, payload: dict[str, Any]) -> None:
        pass

    def finish(self, engine: Any) -> None:
        engine.weights_changed()  # the trainer wrote the plain weights: rebuild packed copies
