"""Shared-memory transport (CPU, trainer and GenerationWorkers on one node).

Sender: tensors are packed bucket by bucket into files under /dev/shm (one file per bucket); then a
manifest (segment paths, entries) goes to every worker by one Ray RPC, `apply_update(..., version=v)`
(a one-shot update). Receiver (inside vLLM's worker process, via the worker extension): each segment is mapped
(`torch.from_file(shared=True)`, zero-copy) and the entries are handed to vLLM's in-place reload as
views. One staging copy serves every worker on the node.

Why the whole model is staged before any worker reloads: the manifest can then be validated as a
whole (a missing or misshapen parameter is refused before vLLM is touched, so the old version keeps
serving), and vLLM's layer-wise reload keeps references to loaded tensors until a layer is complete,
so buffers must not be reused during one reload anyway. Staging happens while the workers keep
generating; only the reload itself pauses generation.

Segments are kept between syncs by default (`keep_segments=True`): on this VM first-touch page
faults run at ~0.1-0.2 GB/s, ten times slower than memcpy, so re-faulting fresh pages on every sync
would dominate its cost. The price is one model-sized staging area in /dev/shm while the sender
lives (`close()` frees it).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import ray
import torch

from actors.weight_sync.base import Receiver, SyncStats, WeightSender, WeightSyncError
from actors.weight_sync.buckets import BucketEntry, pack_buckets, unpack_bucket

logger = logging.getLogger(__name__)


@dataclass
class _Segment:
    path: str
    nbytes: int
    tensor: torch.Tensor  # uint8 view of the whole mapping


def _create_segment(path: str, nbytes: int) -> _Segment:
    directory = os.path.dirname(path)
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    if free < nbytes:
        raise WeightSyncError(f"shm transport: {directory} has {free / 2**30:.2f} GiB free, a bucket needs "
                              f"{nbytes / 2**30:.2f} GiB (the whole model is staged there during a sync)")
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, nbytes)
    finally:
        os.close(fd)
    return _Segment(path, nbytes, torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8))


def remove_stale_segments(shm_dir: str = "/dev/shm") -> list[str]:
    """Unlink staging segments left by senders whose process is gone (killed trainers cannot
    clean up; tmpfs pages would otherwise stay allocated until reboot)."""
    removed = []
    for entry in os.listdir(shm_dir) if os.path.isdir(shm_dir) else []:
        if not entry.startswith("labrl-ws-"):
            continue
        pid = entry.split("-")[2]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                os.unlink(os.path.join(shm_dir, entry))
                removed.append(entry)
            except OSError:
                pass
    if removed:
        logger.warning("removed %d stale weight-sync segment(s) from %s", len(removed), shm_dir)
    return removed


def require_one_node(sender: WeightSender) -> None:
    """shm transports reach only workers on the sender's node."""
    here = ray.get_runtime_context().get_node_id()
    for label, info in sender.infos.items():
        if info["node_id"] != here:
            raise WeightSyncError(f"{sender.transport} transport needs every GenerationWorker on the sender's "
                                  f"node {here[:12]}; {label} is on node {info['node_id'][:12]} (use gloo)")


class ShmSender(WeightSender):
    """Stage in /dev/shm, then one one-shot `apply_update("shm", manifest)` RPC per worker, in parallel.

    `background_reload`: `send` returns once every worker has stopped generating (drained, gate
    closed) and started its reload, so the trainer computes its next step while the engines load;
    requests wait at the closed gates, so none is served by the old weights after `send` returns.
    The next `send` first waits for those reloads (the staging area is rewritten then) and raises
    their errors; a failed reload marks its worker unhealthy meanwhile. The pause and reload
    figures in `SyncStats` are then those of the previous version's reload.
    """

    transport = "shm"

    def __init__(self, receivers: Sequence[Any], bucket_bytes: int, timeout_s: float,
                 keep_segments: bool = True, shm_dir: str = "/dev/shm", background_reload: bool = False) -> None:
        super().__init__(receivers, bucket_bytes, timeout_s)
        require_one_node(self)
        self.keep_segments = keep_segments
        self.background_reload = background_reload and keep_segments
        self._reloading: tuple[int, dict[str, Any]] | None = None  # (version, await_update refs)
        self._last_reload: dict[str, Any] = {}
        self.shm_dir = shm_dir
        self._tag = f"labrl-ws-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._segments: list[_Segment] = []
        self._created = 0
        remove_stale_segments(shm_dir)

    def _segment(self, index: int, nbytes: int) -> torch.Tensor:
        if index < len(self._segments) and self._segments[index].nbytes >= nbytes:
            return self._segments[index].tensor
        path = os.path.join(self.shm_dir, f"{self._tag}-{self._created}")
        self._created += 1
        segment = _create_segment(path, nbytes)
        if index < len(self._segments):
            self._unlink(self._segments[index])
            self._segments[index] = segment
        else:
            self._segments.append(segment)
        return segment.tensor

    def settle(self) -> dict[str, Any]:
        """Wait for the reloads a background `send` left running; their results by worker."""
        if self._reloading is not None:
            version, refs = self._reloading
            self._reloading = None
            self._last_reload = self.wait(refs, f"reload to version {version} (left running by the previous sync)")
        return self._last_reload

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> SyncStats:
        previous = self.settle()
        start = time.perf_counter()
        entries: list[BucketEntry] = []
        used: list[int] = []

        def on_full(index: int, buffer: torch.Tensor, bucket: list[BucketEntry]) -> None:
            used.append(index)
            entries.extend(bucket)

        try:
            num_buckets, total = pack_buckets(self.validated(named_tensors), self.bucket_bytes,
                                              self._segment, on_full)
            stage_s = time.perf_counter() - start
            segments = [{"path": self._segments[i].path, "nbytes": self._segments[i].nbytes} for i in used]
            payload = {"segments": segments, "entries": entries}
            background = (True,) if self.background_reload else ()
            results = self.wait(self.call_all("apply_update", self.transport, payload, self.timeout_s, version,
                                              *background),
                                f"apply_update to version {version} (drain -> reload -> resume)")
            if self.background_reload:
                self._reloading = (version, self.call_all("await_update", version))
                results = previous or results  # this version's pause is known at the next send
        finally:
            if not self.keep_segments:
                self.close()
        seconds = time.perf_counter() - start
        pause = max(r["pause_s"] if "pause_s" in r else r["drain_s"] for r in results.values())
        stats = SyncStats(version=version, seconds=seconds, bytes=total, gb_per_s=total / seconds / 1e9,
                          num_buckets=num_buckets, generation_pause_s=pause, stage_s=stage_s,
                          apply_s=seconds - stage_s)
        logger.info("shm weight sync v%d: %.1f MB in %.3f s (stage %.3f s, apply %.3f s, pause %.3f s)",
                    version, total / 1e6, seconds, stage_s, stats.apply_s, pause)
        return stats

    @staticmethod
    def _unlink(segment: _Segment) -> None:
        try:
            os.unlink(segment.path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        for segment in getattr(self, "_segments", []):
            self._unlink(segment)
        self._segments = []

    def __del__(self) -> None:
        self.close()


class ShmReceiver(Receiver):
    """Engine half, one-shot: `apply` maps the manifest's segments (a failure there touches
    nothing: reported as `refused`) and reloads every weight from them. Mappings are kept while the
    sender reuses a segment (same path), so later syncs do not page-fault again."""

    def __init__(self) -> None:
        self._maps: dict[str, torch.Tensor] = {}

    def begin(self, engine: Any, setup: Any) -> None:
        """Nothing to prepare: `apply` reloads everything at once."""

    def finish(self, engine: Any) -> None:
        pass

    def apply(self, engine: Any, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            staged = self.weights(payload)
        except Exception as err:  # noqa: BLE001 - reported to the caller as a non-fatal refusal
            return {"refused": f"{type(err).__name__}: {err}", "pid": os.getpid()}
        start = time.perf_counter()
        engine.reload(staged)
        del staged
        aliased = self.aliased(engine.model)
        if aliased:
            raise RuntimeError(f"after reload, model tensors alias the shared-memory staging area "
                               f"(a loader kept a view instead of copying): {aliased[:5]}")
        return {"reload_s": time.perf_counter() - start, "pid": os.getpid()}

    def weights(self, payload: dict[str, Any]) -> list[tuple[str, torch.Tensor]]:
        """Map (or reuse) every segment and return zero-copy views of all entries."""
        segments = payload["segments"]
        wanted = {s["path"] for s in segments}
        for path in list(self._maps):
            if path not in wanted:
                del self._maps[path]
        buffers = []
        for seg in segments:
            path, nbytes = seg["path"], int(seg["nbytes"])
            mapped = self._maps.get(path)
            if mapped is None or mapped.numel() != nbytes:
                if not os.path.exists(path):
                    raise FileNotFoundError(f"shm segment {path} is gone (sender closed or on another node)")
                mapped = torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8)
                self._maps[path] = mapped
            buffers.append(mapped)
        views = []
        for entry in payload["entries"]:
            views.extend(unpack_bucket(buffers[entry.bucket], [entry]))
        return views

    def aliased(self, model: torch.nn.Module) -> list[str]:
        """Names of model tensors whose storage lies inside a mapping: a loader that kept a view
        instead of copying would let the next staging write into live weights."""
        ranges = [(t.data_ptr(), t.data_ptr() + t.numel()) for t in self._maps.values()]
        bad = []
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            ptr = tensor.data_ptr()
            if any(lo <= ptr < hi for lo, hi in ranges):
                bad.append(name)
        return bad
