"""NCCL transport (GPU, any node): bucketed broadcast from the trainer's rank 0 to every vLLM worker.

A dedicated group (trainer rank 0 = rank 0, then every vLLM worker process of every
GenerationWorker, in order) is built with vLLM's `StatelessProcessGroup` + `PyNcclCommunicator`
(through `vllm.distributed.weight_transfer.nccl_common.stateless_init_process_group`), so it never
touches the trainer's own torch.distributed / DeepSpeed world. Per bucket: the manifest goes by
Ray RPC to every worker (which posts the receive), the bytes go by one NCCL broadcast. Compared with
a broadcast per parameter (OpenRLHF), a 256 MiB bucket turns hundreds of small collectives and RPCs
into a few large ones.

Untested on this machine (no GPU); `tests/actors/test_gpu_transports.py` runs it where 2+ GPUs exist.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
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


def _join(master_address: str, master_port: int, rank: int, world_size: int, device: Any) -> Any:
    from vllm.distributed.weight_transfer.nccl_common import stateless_init_process_group

    return stateless_init_process_group(master_address, master_port, rank, world_size, device)


class NcclSender(StreamingSender):
    transport = "nccl"

    def __init__(self, receivers: Sequence[Any], bucket_bytes: int, timeout_s: float,
                 master_address: str | None = None, master_port: int | None = None) -> None:
        super().__init__(receivers, bucket_bytes, timeout_s)
        address = master_address or ray.util.get_node_ip_address()
        port = master_port or _free_port()
        sizes = [int(info.get("tensor_parallel_size", 1)) for info in self.infos.values()]
        world = 1 + sum(sizes)
        refs, offset = {}, 1
        for label, receiver, size in zip(self.labels, self.receivers, sizes):
            info = {"master_address": address, "master_port": port, "world_size": world, "rank_offset": offset}
            refs[label] = receiver.nccl_init.remote(info, timeout_s)
            offset += size
        try:
            self.group = _join(address, port, 0, world, self.device)
        except Exception as err:
            raise WeightSyncError(f"nccl transport: trainer could not open the group at {address}:{port} "
                                  f"(world {world}): {err}") from err
        wait_all(refs, rpc_deadline(timeout_s), f"nccl group init at {address}:{port}")
        logger.info("nccl weight-sync group ready: %s:%d, world %d", address, port, world)

    def _ship(self, index: int, data: torch.Tensor, wire: list[list]) -> None:
        bucket = {"nbytes": int(data.numel()), "entries": wire}
        refs = self._call_all("receive_bucket", "nccl", bucket, self.timeout_s)
        stream = torch.cuda.current_stream(self.device)
        self.group.broadcast(data, src=0, stream=stream)
        wait_stream(self.device, refs, self.timeout_s, f"nccl broadcast of bucket {index}")
        wait_all(refs, rpc_deadline(self.timeout_s), f"receive bucket {index} (nccl)")

    def close(self) -> None:
        self.group = None


def worker_join_group(info: dict[str, Any], rank_in_engine: int) -> Any:
    """vLLM worker side: join the trainer's group (blocks until every rank has joined)."""
    device = torch.cuda.current_device()
    rank = int(info["rank_offset"]) + int(rank_in_engine)
    return _join(info["master_address"], int(info["master_port"]), rank, int(info["world_size"]), device)


def worker_receive_bucket(group: Any, bucket: dict[str, Any], device: torch.device) -> list[tuple[str, torch.Tensor]]:
    """vLLM worker side: receive one bucket into a fresh buffer (the layer-wise loader may keep
    views of it until a layer is complete, so it is never reused) and return views of its tensors."""
    if group is None:
        raise RuntimeError("nccl bucket received before the worker joined the weight-sync group")
    buffer = torch.empty(int(bucket["nbytes"]), dtype=torch.uint8, device=device)
    stream = torch.cuda.current_stream(device)
    group.broadcast(buffer, src=0, stream=stream)
    stream.synchronize()
    return list(unpack_bucket(buffer, entries_from_wire(bucket["entries"])))
