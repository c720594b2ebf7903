"""Broadcast transports (any node): bucketed broadcast from the trainer's rank 0 to every vLLM worker.

`nccl` moves GPU tensors; `gloo` the same protocol with CPU tensors over TCP (CPU engines on other
nodes than the trainer, where shared memory cannot reach). A dedicated group (trainer rank 0 =
rank 0, then every vLLM worker process of every GenerationWorker, in order) is built apart from the
trainer's own torch.distributed / DeepSpeed world: for nccl with vLLM's `StatelessProcessGroup` +
`PyNcclCommunicator` (`vllm.distributed.weight_transfer.nccl_common.stateless_init_process_group`),
for gloo with a private TCPStore + ProcessGroupGloo. Per bucket: the manifest goes by Ray RPC to
every worker (which posts the receive), the bytes go by one broadcast. Compared with a broadcast per
parameter (OpenRLHF), a 256 MiB bucket turns hundreds of small collectives and RPCs into a few.

The gloo path runs in the CPU test suite against real vLLM engines; the nccl path needs two GPUs
(`tests/actors/test_gpu_transports.py`).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import ray
import torch

from actors.weight_sync.base import WeightSyncError, rpc_deadline, wait_all
from actors.weight_sync.buckets import entries_from_wire, unpack_bucket
from actors.weight_sync.streaming import StreamingSender, wait_stream

logger = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


class GlooGroup:
    """A private gloo group with the one collective the transport needs (same call as vLLM's
    PyNcclCommunicator). Its timeout bounds every broadcast: a peer that never joins raises."""

    def __init__(self, address: str, port: int, rank: int, world_size: int, timeout_s: float) -> None:
        from torch.distributed import ProcessGroupGloo, TCPStore

        timeout = timedelta(seconds=timeout_s)
        self.store = TCPStore(address, port, world_size, is_master=rank == 0, timeout=timeout)
        self.group = ProcessGroupGloo(self.store, rank, world_size, timeout)

    def broadcast(self, tensor: torch.Tensor, src: int = 0, stream: Any = None) -> None:
        from torch.distributed import BroadcastOptions

        opts = BroadcastOptions()
        opts.rootRank = src
        self.group.broadcast([tensor], opts).wait()


def _join(info: dict[str, Any], rank: int, device: torch.device) -> Any:
    address, port, world = info["master_address"], int(info["master_port"]), int(info["world_size"])
    if info["backend"] == "gloo":
        return GlooGroup(address, port, rank, world, float(info["timeout_s"]))
    from vllm.distributed.weight_transfer.nccl_common import stateless_init_process_group

    return stateless_init_process_group(address, port, rank, world, device)


class BroadcastSender(StreamingSender):
    transport = "broadcast"

    def __init__(self, receivers: Sequence[Any], bucket_bytes: int, timeout_s: float,
                 master_address: str | None = None, master_port: int | None = None) -> None:
        super().__init__(receivers, bucket_bytes, timeout_s)
        address = master_address or ray.util.get_node_ip_address()
        port = master_port or _free_port()
        sizes = [int(info.get("tensor_parallel_size", 1)) for info in self.infos.values()]
        world = 1 + sum(sizes)
        base = {"backend": self.transport, "master_address": address, "master_port": port,
                "world_size": world, "timeout_s": timeout_s}
        refs, offset = {}, 1
        for label, receiver, size in zip(self.labels, self.receivers, sizes):
            refs[label] = receiver.group_init.remote({**base, "rank_offset": offset}, timeout_s)
            offset += size
        try:
            self.group = _join(base, 0, self.device)
        except Exception as err:
            raise WeightSyncError(f"{self.transport} transport: trainer could not open the group at "
                                  f"{address}:{port} (world {world}): {err}") from err
        wait_all(refs, rpc_deadline(timeout_s), f"{self.transport} group init at {address}:{port}")
        logger.info("%s weight-sync group ready: %s:%d, world %d", self.transport, address, port, world)

    def _ship(self, index: int, data: torch.Tensor, wire: list[list]) -> None:
        bucket = {"nbytes": int(data.numel()), "entries": wire}
        refs = self._call_all("receive_bucket", self.transport, bucket, self.timeout_s)
        phase = f"{self.transport} broadcast of bucket {index}"
        if self.device.type == "cuda":
            self.group.broadcast(data, src=0, stream=torch.cuda.current_stream(self.device))
            wait_stream(self.device, refs, self.timeout_s, phase)
        else:
            try:  # gloo blocks until every worker has received, or its timeout
                self.group.broadcast(data, src=0)
            except RuntimeError as err:
                wait_all(refs, 5.0, f"receive bucket {index} ({self.transport})")  # names a dead worker
                raise WeightSyncError(f"{phase} failed (a worker never posted its receive): {err}; "
                                      f"the group is now unusable, rebuild the sender") from err
        wait_all(refs, rpc_deadline(self.timeout_s), f"receive bucket {index} ({self.transport})")

    def close(self) -> None:
        self.group = None


class NcclSender(BroadcastSender):
    transport = "nccl"


class GlooSender(BroadcastSender):
    transport = "gloo"
    device_type = "cpu"


def worker_join_group(info: dict[str, Any], rank_in_engine: int, device: torch.device) -> Any:
    """vLLM worker side: join the trainer's group (blocks until every rank has joined)."""
    return _join(info, int(info["rank_offset"]) + int(rank_in_engine), device)


def worker_receive_bucket(group: Any, bucket: dict[str, Any], device: torch.device) -> list[tuple[str, torch.Tensor]]:
    """vLLM worker side: receive one bucket into a fresh buffer (the layer-wise loader may keep
    views of it until a layer is complete, so it is never reused) and return views of its tensors."""
    if group is None:
        raise RuntimeError("bucket received before the worker joined the weight-sync group")
    buffer = torch.empty(int(bucket["nbytes"]), dtype=torch.uint8, device=device)
    if device.type == "cuda":
        stream = torch.cuda.current_stream(device)
        group.broadcast(buffer, src=0, stream=stream)
        stream.synchronize()
    else:
        group.broadcast(buffer, src=0)
    return list(unpack_bucket(buffer, entries_from_wire(bucket["entries"])))
