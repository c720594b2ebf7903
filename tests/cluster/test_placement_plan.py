"""Placement layouts and fit rules, without Ray: what each role reserves and which clusters can
never hold it (8 simulated GPU nodes and CPU-only nodes as plain resource dicts)."""

import pytest

from cluster import placement
from cluster.placement import plan_placement
from cluster.resources import GroupSpec, RoleDemand, fit_problems
from configs.loading import ConfigError, load_config

GPU_NODE = {"CPU": 96.0, "GPU": 8.0, "memory": 1e12}
CPU_NODE = {"CPU": 64.0, "cpu_node": 1.0}
def problems_on(cfg, nodes, roles=("generation", "trainer")):
    plan = plan_placement(cfg, roles)
    return fit_problems(plan.demands, nodes, plan.joint)


GPU_LAYOUT = ["generation.num_workers=4", "generation.gpus_per_worker=1", "generation.cpus_per_worker=4",
              "trainer.num_ranks=4", "trainer.gpus_per_rank=1", "trainer.cpus_per_rank=8"]


@pytest.fixture
def cross_node_transport(monkeypatch):
    """Plan as a cross-node weight-sync transport (nccl) will: separate trainer/engine groups."""
    monkeypatch.setattr(placement, "SAME_NODE_TRANSPORTS", ())


def test_default_config_puts_trainer_and_engine_on_one_node_for_shm():
    plan = plan_placement(load_config())
    assert plan.mode == "disaggregated"
    assert set(plan.groups) == {"policy"}
    policy = plan.groups["policy"]
    assert policy.strategy == "STRICT_PACK" and policy.bundles == ({"CPU": 1.0}, {"CPU": 1.0})
    assert [s.bundle for s in plan.trainer] == [0] and [s.bundle for s in plan.generation] == [1]
    assert [d.role for d in plan.demands] == ["generation", "trainer"]
    assert [d.role for d in plan.joint] == ["trainer+generation"]


def test_cross_node_transport_plans_separate_groups(cross_node_transport):
    plan = plan_placement(load_config())
    assert set(plan.groups) == {"generation/0", "trainer"}
    assert plan.groups["generation/0"].bundles == ({"CPU": 1.0},)
    assert plan.groups["trainer"].strategy == "PACK"  # trainer.num_nodes unset
    assert not plan.joint


TP4 = ["generation.num_workers=2", "generation.tensor_parallel_size=4", "generation.gpus_per_worker=4",
       "generation.cpus_per_worker=2"]
SHARDS = ({"CPU": 2.0, "GPU": 1.0}, {"GPU": 1.0}, {"GPU": 1.0}, {"GPU": 1.0})


def test_tensor_parallel_engine_gets_one_gpu_bundle_per_shard_on_one_node():
    plan = plan_placement(load_config(None, TP4), ["generation"])
    for i in range(2):
        spec = plan.groups[f"generation/{i}"]
        assert spec.strategy == "STRICT_PACK" and spec.bundles == SHARDS
        # The engine actor takes CPU only; vLLM's Ray workers take the group's GPUs.
        assert plan.generation[i].num_gpus == 0 and plan.generation[i].bundle == 0
        assert dict(plan.generation[i].env_vars) == {"VLLM_RAY_BUNDLE_INDICES": "0,1,2,3"}


def test_tensor_parallel_engines_in_the_shared_policy_group_name_their_bundles():
    cfg = load_config(None, TP4 + ["trainer.num_ranks=2", "trainer.gpus_per_rank=1"])
    plan = plan_placement(cfg)
    assert plan.groups["policy"].bundles == ({"CPU": 1.0, "GPU": 1.0},) * 2 + SHARDS + SHARDS
    assert [s.bundle for s in plan.generation] == [2, 6]
    assert [dict(s.env_vars)["VLLM_RAY_BUNDLE_INDICES"] for s in plan.generation] == ["2,3,4,5", "6,7,8,9"]


def test_cpu_tensor_parallel_engine_is_not_put_in_a_group():
    cfg = load_config(None, ["generation.tensor_parallel_size=2"])
    plan = plan_placement(cfg, ["generation"])
    assert plan.generation[0].group is None and not plan.groups
    assert plan.demands[0].total() == {"CPU": 1.0}


def test_trainer_on_one_node_is_strict_pack(cross_node_transport):
    cfg = load_config(None, GPU_LAYOUT + ["trainer.num_nodes=1"])
    plan = plan_placement(cfg, ["trainer"])
    assert plan.groups["trainer"].strategy == "STRICT_PACK"
    assert plan.groups["trainer"].bundles == tuple({"CPU": 8.0, "GPU": 1.0} for _ in range(4))
    assert [s.bundle for s in plan.trainer] == [0, 1, 2, 3]


def test_colocated_engines_share_trainer_bundles_with_a_whole_gpu_each():
    cfg = load_config(None, ["placement.mode=colocated", "trainer.num_ranks=4", "generation.num_workers=2",
                             "trainer.gpus_per_rank=0.5", "generation.gpus_per_worker=0.4"])
    plan = plan_placement(cfg)
    assert set(plan.groups) == {"colocated"}
    bundles = plan.groups["colocated"].bundles
    assert bundles[0] == {"CPU": 2.0, "GPU": 1.0} and bundles[3] == {"CPU": 1.0, "GPU": 1.0}
    assert [(s.bundle, s.num_gpus) for s in plan.generation] == [(0, 0.4), (1, 0.4)]
    assert [(s.bundle, s.num_gpus) for s in plan.trainer] == [(r, 0.5) for r in range(4)]
    with pytest.raises(ValueError, match="together"):
        plan_placement(cfg, ["generation"])


@pytest.mark.parametrize("overrides, message", [
    (["generation.gpus_per_worker=1", "generation.tensor_parallel_size=2"], "must equal generation.tensor_parallel"),
    (["generation.gpus_per_worker=2"], "must equal generation.tensor_parallel"),
    (["trainer.gpus_per_rank=2"], "trainer.gpus_per_rank"),
    (["trainer.num_ranks=4", "trainer.num_nodes=3"], "divisible by trainer.num_nodes"),
    (["rollout.env_worker_resource=CPU"], "custom resource name"),
    (["placement.mode=colocated", "generation.num_workers=2"], "must not exceed trainer.num_ranks"),
    (["placement.mode=colocated", "generation.tensor_parallel_size=2", "generation.gpus_per_worker=2",
      "trainer.gpus_per_rank=1"], "tensor_parallel_size=1"),
    (["placement.mode=colocated", "trainer.gpus_per_rank=1"], "both or neither|both generation"),
    (["placement.mode=colocated", "trainer.gpus_per_rank=0.6", "generation.gpus_per_worker=0.6"], "at most 1"),
    (["placement.mode=packed"], "placement.mode"),
])
def test_impossible_layouts_fail_in_config(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_layout_that_fits_two_gpu_nodes_has_no_problems():
    cfg = load_config(None, GPU_LAYOUT + ["trainer.num_nodes=1", "rollout.num_env_workers=16"])
    assert problems_on(cfg, [GPU_NODE, GPU_NODE]) == []


def test_too_many_gpus_is_reported_per_role():
    cfg = load_config(None, GPU_LAYOUT + ["generation.num_workers=12"])
    problems = problems_on(cfg, [GPU_NODE])
    assert any(p.startswith("generation: needs GPU 12") and "generation.num_workers" in p for p in problems)
    assert not any(p.startswith("trainer:") for p in problems)


def test_shm_layout_wider_than_one_node_names_the_transport():
    cfg = load_config(None, GPU_LAYOUT + ["generation.num_workers=6"])
    problems = problems_on(cfg, [GPU_NODE, GPU_NODE])
    assert len(problems) == 1 and "ONE node" in problems[0] and "sync.transport" in problems[0]


def test_roles_that_fit_alone_but_not_together():
    cfg = load_config(None, GPU_LAYOUT + ["generation.num_workers=6", "trainer.num_ranks=6"])
    problems = problems_on(cfg, [GPU_NODE])
    assert len(problems) == 1 and "all roles together need GPU 12 (generation 6, trainer 6)" in problems[0]


def test_single_node_trainer_larger_than_any_node(cross_node_transport):
    cfg = load_config(None, GPU_LAYOUT + ["trainer.num_ranks=16", "trainer.num_nodes=1",
                                          "generation.num_workers=1"])
    problems = problems_on(cfg, [GPU_NODE] * 8)
    assert len(problems) == 1 and "trainer:" in problems[0] and "ONE node" in problems[0]
    relaxed = load_config(None, GPU_LAYOUT + ["trainer.num_ranks=16", "generation.num_workers=1"])
    assert problems_on(relaxed, [GPU_NODE] * 8) == []


def test_tensor_parallel_engine_wider_than_a_node():
    cfg = load_config(None, ["generation.tensor_parallel_size=16", "generation.gpus_per_worker=16"])
    problems = problems_on(cfg, [GPU_NODE, GPU_NODE], ["generation"])
    assert len(problems) == 1 and "engine 0 (tensor_parallel_size=16)" in problems[0]


def test_bundle_that_no_node_holds():
    demand = RoleDemand("trainer", (GroupSpec("ranks", ({"CPU": 100.0},) * 2, "PACK"),))
    problems = fit_problems([demand], [GPU_NODE, GPU_NODE, GPU_NODE])
    assert problems == ["trainer: ranks has a bundle {CPU: 100} that no single node can hold (largest: CPU 96)"]


def test_simulated_scale_sixteen_engines_and_ranks_on_four_gpu_nodes(cross_node_transport):
    """4 simulated 8-GPU nodes hold 16 single-GPU engines and 16 trainer ranks; 3 nodes do not."""
    cfg = load_config(None, GPU_LAYOUT + ["generation.num_workers=16", "trainer.num_ranks=16"])
    assert problems_on(cfg, [GPU_NODE] * 4 + [CPU_NODE] * 4) == []
    assert problems_on(cfg, [GPU_NODE] * 3)
