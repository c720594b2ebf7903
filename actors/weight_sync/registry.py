"""The weight-sync transports by name: each one's module (sender and receiver halves side by side)
and what it needs from the run's layout.

`check_transport(cfg)` applies those needs to a config before Ray starts (launch's preflight);
`make_sender` builds a transport's trainer half, and the vLLM worker extension its engine half
(`receiver_class`), both from here. A new transport is one module in this package (a
`WeightSender` subclass and a `Receiver` subclass) plus one entry in `TRANSPORTS`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from actors.weight_sync.base import Receiver, WeightSender
    from configs.schema import LabrlConfig, SyncConfig


@dataclass(frozen=True)
class Transport:
    """`device`: where the weights it moves live ("gpu": GPU engines and GPU trainer ranks;
    "cpu": CPU engines only; "any"). `one_node`: the trainer and every engine on one node (shared
    memory). `colocated`: engines share the trainer's GPU (placement.mode=colocated). `options`:
    the `sync` config fields its sender takes as keyword arguments."""

    name: str
    module: str
    sender: str
    receiver: str
    device: Literal["cpu", "gpu", "any"] = "any"
    one_node: bool = False
    colocated: bool = False
    options: tuple[str, ...] = ()

    def load(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self.module), attribute)


TRANSPORTS: dict[str, Transport] = {t.name: t for t in (
    Transport("shm", "actors.weight_sync.shm", "ShmSender", "ShmReceiver", one_node=True,
              options=("background_reload",)),
    Transport("shm_inplace", "actors.weight_sync.inplace", "InplaceSender", "InplaceReceiver", device="cpu",
              one_node=True),
    Transport("gloo", "actors.weight_sync.broadcast", "GlooSender", "BroadcastReceiver", device="cpu"),
    Transport("nccl", "actors.weight_sync.broadcast", "NcclSender", "BroadcastReceiver", device="gpu"),
    Transport("cuda_ipc", "actors.weight_sync.cuda_ipc", "CudaIpcSender", "CudaIpcReceiver", device="gpu",
              colocated=True),
)}


def get_transport(name: str) -> Transport:
    transport = TRANSPORTS.get(name)
    if transport is None:
        raise ValueError(f"unknown weight-sync transport {name!r}; known: {', '.join(TRANSPORTS)}")
    return transport


def check_transport(cfg: LabrlConfig) -> None:
    """Raise ValueError, naming the fields, when `sync.transport` cannot serve the run's layout."""
    name = cfg.sync.transport
    if name not in TRANSPORTS:
        raise ValueError(f"sync.transport={name!r} is not a known weight-sync transport; known: "
                         f"{', '.join(TRANSPORTS)}")
    t, g, trainer = TRANSPORTS[name], cfg.generation, cfg.trainer
    if t.one_node and (trainer.num_nodes or 1) > 1:
        raise ValueError(f"sync.transport={name} keeps the trainer and engines on one node: "
                         f"trainer.num_nodes ({trainer.num_nodes}) must be 1 or unset")
    if t.device == "gpu" and not (g.gpus_per_worker > 0 and trainer.gpus_per_rank > 0):
        raise ValueError(f"sync.transport={name} moves GPU tensors: set generation.gpus_per_worker "
                         f"and trainer.gpus_per_rank above 0, or use sync.transport=shm on CPU")
    if t.device == "cpu" and g.gpus_per_worker > 0:
        raise ValueError(f"sync.transport={name} moves host-memory weights into CPU engines "
                         f"(generation.gpus_per_worker is {g.gpus_per_worker:g}); GPU engines take "
                         f"sync.transport=nccl or cuda_ipc")
    if t.colocated and cfg.placement.mode != "colocated":
        raise ValueError(f"sync.transport={name} shares GPU memory between processes on one GPU: "
                         f"it needs placement.mode=colocated (use nccl for disaggregated engines)")


def make_sender(transport: str, receivers: list[Any], bucket_bytes: int = 256 << 20,
                timeout_s: float = 300.0, **options: Any) -> WeightSender:
    """The trainer half of `transport`, pushing to `receivers` (GenerationWorker handles).

    `options` go to the transport (e.g. `master_address`/`master_port` for nccl and gloo,
    `keep_segments` for shm).
    """
    t = get_transport(transport)
    return t.load(t.sender)(receivers, bucket_bytes, timeout_s, **options)


def sender_options(sync: SyncConfig) -> dict[str, Any]:
    """The `sync` settings that `sync.transport`'s sender takes (`Transport.options`)."""
    return {name: getattr(sync, name) for name in get_transport(sync.transport).options}


def receiver_class(transport: str) -> type[Receiver]:
    """The engine half of `transport` (instantiated in each vLLM worker process)."""
    t = get_transport(transport)
    return t.load(t.receiver)
