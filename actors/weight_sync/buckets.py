"""Pack a lazy stream of named tensors into flat byte buckets, and unpack them again.

Every transport moves buckets (one flat uint8 buffer + a list of entries), not single tensors:
per-tensor messages are what makes naive weight sync 10x slower than the link (OpenRLHF sends one
NCCL broadcast per parameter). Each tensor is copied into the bucket as soon as it arrives, so a
ZeRO-3 gathered parameter can be freed immediately and the sender never holds more than one bucket.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from actors.weight_sync.base import dtype_from_name, dtype_name

# Offsets are aligned so that every entry can be viewed as its dtype without a copy.
ALIGN = 64


@dataclass
class BucketEntry:
    """One tensor on the wire: where it lies in a flat byte buffer and how to view it. `bucket` is
    the index of the bucket it was packed into (shm's manifest spans every bucket, one segment
    each; a streamed payload is one bucket). Senders and GenerationWorker pass these objects; only at the
    engine boundary (vLLM's collective_rpc serialises plain values, not dataclasses) they travel as
    lists, `to_wire` / `from_wire`."""

    name: str
    shape: list[int]
    dtype: str
    offset: int
    nbytes: int
    bucket: int = 0

    def to_wire(self) -> list:
        return [self.name, list(self.shape), self.dtype, self.offset, self.nbytes, self.bucket]

    @classmethod
    def from_wire(cls, item: list) -> BucketEntry:
        name, shape, dtype, offset, nbytes, bucket = item
        return cls(name, list(shape), dtype, int(offset), int(nbytes), int(bucket))


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _copy_into(dst: torch.Tensor, tensor: torch.Tensor) -> None:
    """Copy `tensor` into the uint8 slice `dst`.

    CPU -> CPU copies go through numpy (one plain memcpy per tensor). torch's `copy_` splits every
    copy over its OpenMP threads; on an oversubscribed machine each of those fork/joins waits for a
    descheduled thread, and per-tensor copies of a 100M model ran at 0.2-0.5 GB/s against 3-5 GB/s
    single-threaded (measured on this VM at load ~15 on 2 cores).
    """
    if dst.device.type == "cpu" and tensor.device.type == "cpu" and tensor.is_contiguous():
        flat = tensor.reshape(-1).view(torch.uint8)
        dst.numpy()[:] = flat.numpy()
    else:
        dst.view(tensor.dtype).view(tensor.shape).copy_(tensor, non_blocking=False)


def pack_buckets(
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    bucket_bytes: int,
    get_buffer: Callable[[int, int], torch.Tensor],
    on_full: Callable[[int, torch.Tensor, list[BucketEntry]], None],
) -> tuple[int, int]:
    """Copy tensors into buckets of at most `bucket_bytes` (a larger tensor gets a bucket alone).

    `get_buffer(index, min_bytes)` returns a uint8 buffer of at least `min_bytes` for bucket
    `index`; `on_full(index, buffer, entries)` is called when a bucket is sealed (the caller ships
    it). Returns (number of buckets, payload bytes).
    """
    index, offset, total = 0, 0, 0
    entries: list[BucketEntry] = []
    buffer: torch.Tensor | None = None
    for name, tensor in named_tensors:
        tensor = tensor.detach()
        nbytes = tensor.numel() * tensor.element_size()
        # Against bucket_bytes, not the buffer's size: a reused buffer that once held an oversize
        # tensor is bigger, and filling it would make every later bucket that big.
        if buffer is not None and entries and offset + nbytes > bucket_bytes:
            on_full(index, buffer, entries)
            index, offset, entries, buffer = index + 1, 0, [], None
        if buffer is None:
            buffer = get_buffer(index, max(bucket_bytes, nbytes))
        _copy_into(buffer[offset:offset + nbytes], tensor)
        entries.append(BucketEntry(name, list(tensor.shape), dtype_name(tensor.dtype), offset, nbytes, index))
        offset = _aligned(offset + nbytes)
        total += nbytes
    if entries and buffer is not None:
        on_full(index, buffer, entries)
        index += 1
    return index, total


def unpack_bucket(buffer: torch.Tensor, entries: Iterable[BucketEntry]) -> Iterator[tuple[str, torch.Tensor]]:
    """Zero-copy views of a bucket's tensors (valid as long as `buffer` is)."""
    for e in entries:
        dtype = dtype_from_name(e.dtype)
        yield e.name, buffer[e.offset:e.offset + e.nbytes].view(dtype).view(e.shape)


__all__ = ["ALIGN", "BucketEntry", "pack_buckets", "unpack_bucket"]
