"""Broadcast transports (any node): bucketed broadcast from the trainer's rank 0 to every vLLM worker.

`nccl` moves GPU tensors; `gloo` the same protocol with CPU tensors over TCP (CPU engines on other
nodes than the trainer, where shared memory cannot reach). A dedicated group (trainer rank 0 =
rank 0, then every vLLM worker process of every GenerationWorker, in order) is built apart from the
trainer's own torch.distributed / DeepSpeed world: for nccl with vLLM's `StatelessProcessGroup` +
`PyNcclCommunicator` (`vllm.distributed.weight_transfer.nccl_common.stateless_init_process_group`),
for gloo with a private TCPStore + ProcessGroupGloo. Per bucket: the manifest goes by Ray RPC to
every worker (which posts the receive), the bytes go by one broadcast. Compared with a broadcast per
parameter (OpenRLHF), a 256 MiB bucket turns hundreds of small collectives and RPCs into a few.
The engine half (`BroadcastReceiver`) joins the group once (`connect_transport`) and receives each
bucket into a fresh buffer.

The gloo path runs in the CPU test suite against real vLLM engines; the nccl path needs two GPUs
(`tests/actors/test_gpu_transports.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import ray
import torch

from actors.calls import free_port
from actors.weight_sync.base import Receiver, WeightSyncError, wait_workers
from actors.weight_sync.buckets import BucketEntry, unpack_bucket
from actors.weight_sync.streaming import StreamingSender, wait_stream

logger = logging.getLogger(__name__)


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
    from vllm.distributed.weight_transfer.nccl_common import (
        stateless_init_process_group,
    )

    return stateless_init_process_group(address, port, rank, world, device)


class BroadcastSender(StreamingSender):
    transport = "broadcast"

    def __init__(self, receivers: Sequence[Any], bucket_bytes: int, timeout_s: float,
                 master_address: str | None = None, master_port: int | None = None) -> None:
        super().__init__(receivers, bucket_bytes, timeout_s)
        address = master_address or ray.util.get_node_ip_address()
        port = master_port or free_port()
        sizes = [int(info.get("tensor_parallel_size", 1)) for info in self.infos.values()]
        world = 1 + sum(sizes)
        base = {"backend": self.transport, "master_address": address, "master_port": port,
                "world_size": world, "timeout_s": timeout_s}
        refs, offset = {}, 1
        for label, receiver, size in zip(self.labels, self.receivers, sizes):
            refs[label] = receiver.connect_transport.remote(self.transport, {**base, "rank_offset": offset},
                                                            timeout_s)
            offset += size
        try:
            self.group = _join(base, 0, self.device)
        except Exception as err:
            raise WeightSyncError(f"{self.transport} transport: trainer could not open the group at "
                                  f"{address}:{port} (world {world}): {err}") from err
        self.wait(refs, f"{self.transport} group init at {address}:{port}")
        logger.info("%s weight-sync group ready: %s:%d, world %d", self.transport, address, port, world)

    def _ship(self, index: int, data: torch.Tensor, entries: list[BucketEntry]) -> None:
        bucket = {"nbytes": int(data.numel()), "entries": entries}
        refs = self.call_all("apply_update", self.transport, bucket, self.timeout_s)
        phase = f"{self.transport} broadcast of bucket {index}"
        if self.device.type == "cuda":
            self.group.broadcast(data, src=0, stream=torch.cuda.current_stream(self.device))
            wait_stream(self.device, refs, self.timeout_s, phase)
        else:
            try:  # gloo blocks until every worker has received, or its timeout
                self.group.broadcast(data, src=0)
            except RuntimeError as err:
                wait_workers(refs, 5.0, f"receive bucket {index} ({self.transport})")  # names a dead worker
                raise WeightSyncError(f"{phase} failed (a worker never posted its receive): {err}; "
                                      f"the group is now unusable, rebuild the sender") from err
        self.wait(refs, f"receive bucket {index} ({self.transport})")

    def close(self) -> None:
        self.group = None


class NcclSender(BroadcastSender):
    transport = "nccl"


class GlooSender(BroadcastSender):
    transport = "gloo"
    device_type = "cpu"


class BroadcastReceiver(Receiver):
    """Engine half of nccl and gloo: join the trainer's group once, then receive each bucket into a
    fresh buffer (the layer-wise loader may keep views of it until a layer is complete, so it is
    never reused) and load it."""

    group: Any = None
    device: torch.device | None = None

    def connect(self, engine: Any, setup: dict[str, Any]) -> None:
        """Join the group (blocks until every rank has joined): nccl on this worker's GPU, gloo in
        host memory; rank = the engine's offset in the group + this process's rank in the engine."""
        self.device = torch.device("cpu") if setup["backend"] == "gloo" else engine.device
        self.group = _join(setup, int(setup["rank_offset"]) + int(engine.rank), self.device)

    def apply(self, engine: Any, payload: dict[str, Any]) -> None:
        engine.load(self.receive(payload))

    def receive(self, payload: dict[str, Any]) -> list[tuple[str, torch.Tensor]]:
        if self.group is None:
            raise RuntimeError("bucket received before the worker joined the weight-sync group")
        buffer = torch.empty(int(payload["nbytes"]), dtype=torch.uint8, device=self.device)
        if self.device.type == "cuda":
            stream = torch.cuda.current_stream(self.device)
            self.group.broadcast(buffer, src=0, stream=stream)
            stream.synchronize()
        else:
            self.group.broadcast(buffer, src=0)
        return list(unpack_bucket(buffer, payload["entries"]))
