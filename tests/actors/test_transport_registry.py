"""The weight-sync transport registry: every name resolves to both halves, and `check_transport`
refuses layouts a transport cannot serve, naming the fields (fast: no Ray, no vLLM)."""

from __future__ import annotations

import pytest

from actors.weight_sync import TRANSPORTS, check_transport, make_sender
from actors.weight_sync.base import Receiver, WeightSender
from actors.weight_sync.registry import receiver_class
from configs.schema import (
    GenerationConfig,
    LabrlConfig,
    PlacementConfig,
    SyncConfig,
    TrainerConfig,
)

GPU = {"generation": GenerationConfig(gpus_per_worker=1), "trainer": TrainerConfig(gpus_per_rank=1, zero_stage=1)}
COLOCATED_GPU = {"generation": GenerationConfig(gpus_per_worker=0.4),
                 "trainer": TrainerConfig(gpus_per_rank=0.4, zero_stage=1),
                 "placement": PlacementConfig(mode="colocated")}


def cfg(transport: str, **sections) -> LabrlConfig:
    return LabrlConfig(sync=SyncConfig(transport=transport), **sections)


@pytest.mark.parametrize("name", sorted(TRANSPORTS))
def test_every_transport_names_both_halves(name):
    t = TRANSPORTS[name]
    assert issubclass(t.load(t.sender), WeightSender) and t.load(t.sender).transport == name
    assert issubclass(receiver_class(name), Receiver)


@pytest.mark.parametrize("config", [
    cfg("shm"), cfg("shm", trainer=TrainerConfig(num_nodes=1)), cfg("shm", **GPU),
    cfg("shm_inplace"), cfg("gloo", trainer=TrainerConfig(num_ranks=2, num_nodes=2)),
    cfg("nccl", **GPU), cfg("nccl", generation=GPU["generation"],
                            trainer=TrainerConfig(gpus_per_rank=1, zero_stage=1, num_ranks=2, num_nodes=2)),
    cfg("cuda_ipc", **COLOCATED_GPU),
], ids=lambda c: c.sync.transport)
def test_layouts_a_transport_serves_pass(config):
    check_transport(config)


@pytest.mark.parametrize("config, message", [
    (cfg("carrier-pigeon"), r"sync.transport='carrier-pigeon' is not a known .*known: shm, shm_inplace, gloo, nccl"),
    (cfg("shm", trainer=TrainerConfig(num_ranks=2, num_nodes=2)),
     r"sync.transport=shm keeps the trainer and engines on one node: trainer.num_nodes \(2\) must be 1 or unset"),
    (cfg("shm_inplace", trainer=TrainerConfig(num_ranks=2, num_nodes=2)), r"sync.transport=shm_inplace keeps"),
    (cfg("nccl"), (r"sync.transport=nccl moves GPU tensors: set generation.gpus_per_worker and "
                   r"trainer.gpus_per_rank above 0, or use sync.transport=shm on CPU")),
    (cfg("nccl", generation=GenerationConfig(gpus_per_worker=1)), r"nccl moves GPU tensors"),
    (cfg("cuda_ipc", trainer=TrainerConfig(gpus_per_rank=1, zero_stage=1)), r"cuda_ipc moves GPU tensors"),
    (cfg("gloo", **GPU), (r"sync.transport=gloo moves host-memory weights into CPU engines "
                          r"\(generation.gpus_per_worker is 1\); GPU engines take sync.transport=nccl or cuda_ipc")),
    (cfg("shm_inplace", **GPU), r"sync.transport=shm_inplace moves host-memory weights"),
    (cfg("cuda_ipc", **GPU), r"sync.transport=cuda_ipc .* needs placement.mode=colocated"),
], ids=lambda v: v.sync.transport if isinstance(v, LabrlConfig) else "")
def test_layouts_a_transport_cannot_serve_are_refused_naming_the_fields(config, message):
    with pytest.raises(ValueError, match=message):
        check_transport(config)


def test_make_sender_refuses_an_unknown_transport_before_touching_receivers():
    with pytest.raises(ValueError, match="unknown weight-sync transport 'carrier-pigeon'; known: shm"):
        make_sender("carrier-pigeon", [object()], 1, 1.0)
