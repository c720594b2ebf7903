"""`build_placement` on a live Ray cluster with fake resources: Ray only counts GPUs and custom
resources, so a CPU machine can reserve a 16-GPU layout, start actors in its bundles and check where
they landed (GPU ids, bundle env vars), and 64 env-worker-like actors can be scheduled with the
same options the real env workers get."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
import ray
from ray.util.placement_group import get_current_placement_group, placement_group, remove_placement_group

from cluster.placement import build_placement
from cluster.ray_cluster import ResourceError
from configs.loading import load_config

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "configs"


@pytest.fixture(scope="module")
def fake_cluster():
    """One node advertising 96 CPUs, 16 GPUs and the `cpu_node` resource (all fake). A local Ray
    left by another test module is shut down first: this module needs its own resources."""
    if ray.is_initialized():
        ray.shutdown()
    # address="local": a new instance even if this machine has a `ray start` cluster on record
    ray.init(address="local", num_cpus=96, num_gpus=16, resources={"cpu_node": 1}, include_dashboard=False,
             logging_level=logging.WARNING, runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}})
    yield
    ray.shutdown()


@ray.remote
class Probe:
    """Stands in for a generation engine / trainer rank / env worker: reports where it runs."""

    def where(self) -> dict:
        ctx = ray.get_runtime_context()
        return {"pid": os.getpid(), "gpus": [str(g) for g in ray.get_gpu_ids()],
                "in_group": get_current_placement_group() is not None,
                "resources": ctx.get_assigned_resources(), "node": ctx.get_node_id(),
                "bundles": os.environ.get("VLLM_RAY_BUNDLE_INDICES")}


def _start(options: list[dict], timeout_s: float = 300) -> list[dict]:
    actors = [Probe.options(**o).remote() for o in options]
    try:
        return ray.get([a.where.remote() for a in actors], timeout=timeout_s)
    finally:
        for a in actors:
            ray.kill(a)


def _live_groups() -> int:
    return sum(1 for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED")


def test_8gpu_config_reserves_one_node_layout_and_places_actors(fake_cluster):
    cfg = load_config(CONFIGS / "qwen2.5-7b-8gpu.yaml")
    placement = build_placement(cfg)
    try:
        assert set(placement.groups) == {"policy"}
        assert placement.trainer_pg is placement.groups["policy"] and placement.trainer_bundle_offset == 0
        ranks = _start([placement.trainer_options(r) for r in range(2)])
        engines = _start([placement.generation_options(i) for i in range(2)])
        gpus = [g for p in ranks + engines for g in p["gpus"]]
        assert len(gpus) == 4 and len(set(gpus)) == 4, "each rank and engine owns a distinct GPU"
        assert all(p["in_group"] for p in ranks + engines)
        nodes = placement.bundle_nodes()
        assert len(nodes["policy"]) == 8 and len(set(nodes["policy"])) == 1
    finally:
        placement.remove()
    assert _live_groups() == 0


def test_tensor_parallel_engine_actor_gets_its_bundle_indices(fake_cluster):
    cfg = load_config(None, ["generation.tensor_parallel_size=2", "generation.gpus_per_worker=2",
                             "trainer.gpus_per_rank=1"])
    placement = build_placement(cfg, ["generation", "trainer"])
    try:
        [engine] = _start([placement.generation_options(0)])
        assert engine["bundles"] == "1,2" and engine["gpus"] == [] and engine["in_group"]
    finally:
        placement.remove()


def test_colocated_rank_and_engine_share_one_gpu(fake_cluster):
    placement = build_placement(load_config(CONFIGS / "qwen2.5-0.5b-1gpu.yaml"), ["generation", "trainer"])
    try:
        rank, engine = _start([placement.trainer_options(0), placement.generation_options(0)])
        assert rank["gpus"] == engine["gpus"] and len(rank["gpus"]) == 1
        assert rank["resources"]["GPU"] == pytest.approx(0.5)
    finally:
        placement.remove()


def test_more_gpus_than_the_cluster_fails_fast_naming_the_role(fake_cluster):
    cfg = load_config(None, ["generation.num_workers=20", "generation.gpus_per_worker=1"])
    start = time.monotonic()
    with pytest.raises(ResourceError, match=r"generation: needs GPU 20 .* the cluster has 16"):
        build_placement(cfg)
    assert time.monotonic() - start < 30
    assert _live_groups() == 0


def test_busy_cluster_times_out_and_releases_what_it_reserved(fake_cluster):
    hog = placement_group([{"GPU": 12.0}])
    ray.get(hog.ready(), timeout=60)
    try:
        cfg = load_config(CONFIGS / "qwen2.5-7b-8gpu.yaml", ["placement.ready_timeout_s=3"])
        with pytest.raises(ResourceError, match=r"(?s)not reserved after .*policy.*still free: \{CPU: 96, GPU: 4, cpu_node: 1\}"):
            build_placement(cfg)
        assert _live_groups() == 1  # only the hog
    finally:
        remove_placement_group(hog)
