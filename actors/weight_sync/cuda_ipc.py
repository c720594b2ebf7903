"""CUDA IPC transport (trainer and vLLM colocated on the same GPU).

Each bucket is packed into one reused GPU buffer in the trainer; its CUDA IPC handle (torch's
`reduce_tensor`, pickled to bytes because only plain values survive collective_rpc) goes by Ray
RPC; the vLLM worker opens it, clones the bucket into its own memory and loads from the clone. The
clone costs one bucket of GPU memory and a device-to-device copy, and buys a simple lifetime rule:
when the RPC returns, the trainer may overwrite its buffer, even though vLLM's layer-wise loader
still holds views of the bucket until each layer is complete.

Devices are matched by UUID, not index: Ray gives each actor its own CUDA_VISIBLE_DEVICES, so the
same GPU can have different indices in the trainer and in vLLM.

Untested on this machine (no GPU); `tests/actors/test_gpu_transports.py` runs it where a GPU exists.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Sequence
from typing import Any

import torch

from actors.weight_sync.base import Receiver, WeightSyncError
from actors.weight_sync.buckets import BucketEntry, unpack_bucket
from actors.weight_sync.streaming import StreamingSender

logger = logging.getLogger(__name__)

_STORAGE_DEVICE_ARG = 6  # position of storage_device in torch's rebuild_cuda_tensor arguments


def device_uuid(index: int) -> str:
    return str(torch.cuda.get_device_properties(index).uuid)


class CudaIpcSender(StreamingSender):
    transport = "cuda_ipc"

    def __init__(self, receivers: Sequence[Any], bucket_bytes: int, timeout_s: float) -> None:
        super().__init__(receivers, bucket_bytes, timeout_s)
        self.uuid = device_uuid(self.device.index)
        for label, info in self.infos.items():
            uuids = info.get("gpu_uuids") or []
            if not uuids or any(u != self.uuid for u in uuids):
                raise WeightSyncError(f"cuda_ipc transport needs every vLLM worker on the trainer's GPU "
                                      f"{self.uuid}; {label} uses {uuids or 'no GPU'} (use nccl)")

    def _ship(self, index: int, data: torch.Tensor, entries: list[BucketEntry]) -> None:
        self.wait(self.call_all("apply_update", self.transport, ipc_bucket(data, self.uuid, entries), self.timeout_s),
                  f"receive bucket {index} (cuda_ipc)")


def ipc_bucket(data: torch.Tensor, uuid: str, entries: list[BucketEntry]) -> dict[str, Any]:
    """One bucket as the worker receives it: a pickled CUDA IPC handle of `data` and its entries."""
    from torch.multiprocessing.reductions import reduce_tensor

    rebuild, args = reduce_tensor(data)
    return {"handle": pickle.dumps((rebuild, args)), "device_uuid": uuid, "entries": entries}


class CudaIpcReceiver(Receiver):
    """Engine half: open each bucket's handle, copy it, load the copy (layer-wise begin/finish)."""

    def apply(self, engine: Any, payload: dict[str, Any]) -> None:
        engine.load(open_bucket(payload, engine.device))


def open_bucket(bucket: dict[str, Any], device: torch.device) -> list[tuple[str, torch.Tensor]]:
    """Open the trainer's buffer, copy it to `device`, return views of the copy."""
    rebuild, args = pickle.loads(bucket["handle"])
    local_index = next((i for i in range(torch.cuda.device_count()) if device_uuid(i) == bucket["device_uuid"]),
                       None)
    if local_index is None:
        raise RuntimeError(f"cuda_ipc: GPU {bucket['device_uuid']} is not visible to this vLLM worker")
    args = list(args)
    args[_STORAGE_DEVICE_ARG] = local_index
    shared = rebuild(*args)
    local = shared.to(device, copy=True)
    torch.cuda.current_stream(device).synchronize()
    del shared
    return list(unpack_bucket(local, bucket["entries"]))
