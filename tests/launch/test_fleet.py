"""Engines added during a run, below the e2e level: where they are reserved, and what happens when
their resources never appear (given up after rollout.capacity_timeout_s; the run goes on)."""

from __future__ import annotations

import logging
import time

import pytest
import ray

from cluster.placement import build_placement, reserve_extra_engine
from configs.loading import load_config
from launch.fleet import EngineFleet


@pytest.fixture(scope="module")
def ray_local():
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level=logging.WARNING)
    yield
    if started:
        ray.shutdown()


class _FleetOf(EngineFleet):
    """The fleet's elastic bookkeeping with no engine built at start."""

    def __init__(self, cfg) -> None:
        self.cfg, self.policy_dir, self.placement = cfg, "/no/model/needed", None
        self.workers, self.slots, self.asleep, self.joining, self.retiring, self.free_slots = [], [], [], [], [], []
        self._next_index = 1


def test_an_engine_whose_resources_never_appear_is_given_up(ray_local, caplog):
    fleet = _FleetOf(load_config(None, ["generation.cpus_per_worker=64", "rollout.capacity_timeout_s=1"]))
    fleet.add(1)
    assert fleet.size == 1 and fleet.admit_ready() == []  # still waiting
    time.sleep(1.5)
    with caplog.at_level(logging.WARNING, logger="launch.fleet"):
        assert fleet.admit_ready() == []
    assert fleet.joining == [] and fleet.size == 0
    assert "engine gen1 got no resources within rollout.capacity_timeout_s=1 s; going on with 0" in caplog.text


def test_an_added_engine_is_reserved_on_the_trainers_node_for_shared_memory_sync(ray_local):
    cfg = load_config(None, ["generation.num_workers=1", "trainer.num_ranks=1", "sync.transport=shm"])
    placement = build_placement(cfg)
    try:
        extra = reserve_extra_engine(cfg, placement, 1)
        ray.get(extra.ready(), timeout=60)
        bundles = ray.util.placement_group_table(extra.group)["bundles"]
        assert any(key.startswith("node:") for key in bundles[0]), bundles  # pinned to a node
        trainer_node = ray.util.placement_group_table(placement.trainer_pg)["bundles_to_node_id"][0]
        assert ray.util.placement_group_table(extra.group)["bundles_to_node_id"][0] == trainer_node
        extra.remove()
        colocated = load_config(None, ["placement.mode=colocated"])
        with pytest.raises(ValueError, match="colocated binds each engine to a trainer rank"):
            reserve_extra_engine(colocated, placement, 2)
    finally:
        placement.remove()
