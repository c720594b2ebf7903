"""Shared driver of the streaming transports (nccl, gloo, cuda_ipc): begin -> bucket, ... -> finish.

GPU memory rules out staging a second full model, so buckets stream through one reused buffer
and each worker loads a bucket as it arrives (vLLM's layer-wise reload keeps a layer's tensors until
the layer is complete, then processes it). Consequence, stated plainly: a failure *after* the first
bucket leaves the workers with some layers new and some old, so they are told to abort and mark
themselves unhealthy; the router then stops using them. Validation against the served spec runs on
each tensor before its bucket is shipped, so name/shape errors in the first bucket change nothing;
only a bad tensor later in the stream (or a missing name) costs the workers.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from actors.weight_sync.base import SyncStats, WeightSender, WeightSyncError
from actors.weight_sync.buckets import BucketEntry, pack_buckets

if TYPE_CHECKING:  # Ray is imported where it is used: the bucket data plane runs without it
    import ray

logger = logging.getLogger(__name__)


def require_cuda(transport: str) -> torch.device:
    if not torch.cuda.is_available():
        raise WeightSyncError(f"{transport} transport requires a CUDA GPU in the sender's process "
                              f"(use 'shm' on CPU)")
    return torch.device("cuda", torch.cuda.current_device())


class StreamingSender(WeightSender):
    transport = "streaming"
    device_type = "cuda"  # where buckets are packed

    def __init__(self, receivers: Sequence[Any], bucket_bytes: int, timeout_s: float) -> None:
        self.device = require_cuda(self.transport) if self.device_type == "cuda" else torch.device("cpu")
        super().__init__(receivers, bucket_bytes, timeout_s)
        self._buffer: torch.Tensor | None = None

    def _get_buffer(self, index: int, nbytes: int) -> torch.Tensor:
        if self._buffer is None or self._buffer.numel() < nbytes:
            self._buffer = None
            self._buffer = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        return self._buffer

    @abc.abstractmethod
    def _ship(self, index: int, data: torch.Tensor, entries: list[BucketEntry]) -> None:
        """Deliver one bucket (`data` = its used bytes) to every receiver and wait until loaded."""

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> SyncStats:
        start = time.perf_counter()
        counts: list[int] = []

        def on_full(index: int, buffer: torch.Tensor, entries: list[BucketEntry]) -> None:
            used = entries[-1].offset + entries[-1].nbytes
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()  # packing copies are done
            self._ship(index, buffer[:used], entries)

        def stream() -> int:
            num_buckets, total = pack_buckets(self.validated(named_tensors), self.bucket_bytes,
                                              self._get_buffer, on_full)
            counts.append(num_buckets)
            return total

        total, pause = self.streamed(version, stream)
        seconds = time.perf_counter() - start
        logger.info("%s weight sync v%d: %.1f MB in %.3f s (%d buckets)", self.transport, version,
                    total / 1e6, seconds, counts[0])
        return SyncStats(version=version, seconds=seconds, bytes=total, gb_per_s=total / seconds / 1e9,
                         num_buckets=counts[0], generation_pause_s=pause, stage_s=0.0, apply_s=seconds)


def wait_stream(device: torch.device, refs: dict[str, ray.ObjectRef], timeout_s: float, phase: str) -> None:
    """Wait for the current stream's queued work (an NCCL collective) with a deadline. A worker
    that never joins the collective would otherwise hang the trainer forever."""
    import ray

    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))
    deadline = time.monotonic() + timeout_s
    while not event.query():
        if time.monotonic() > deadline:
            ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=0)
            silent = [who for who, ref in refs.items() if ref not in ready]
            raise WeightSyncError(f"{phase}: GPU transfer did not complete within {timeout_s:.1f} s; workers "
                                  f"still inside the receive call: {silent or 'none (they failed: see logs)'}; "
                                  f"the NCCL group is now unusable, rebuild the sender")
        time.sleep(0.001)
