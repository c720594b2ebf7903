"""The GPU configs users would run: they load, their GPU counts match their names, and the ZeRO
arithmetic in their comments holds (per-rank model states + activations fit an 80 GB GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.placement import plan_placement
from configs.loading import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PARAMS = {"Qwen/Qwen2.5-0.5B-Instruct": 0.494e9, "Qwen/Qwen2.5-7B-Instruct": 7.62e9}
SHAPES = {"Qwen/Qwen2.5-0.5B-Instruct": (896, 24), "Qwen/Qwen2.5-7B-Instruct": (3584, 28)}  # hidden, layers
GPU_GB = {"qwen2.5-0.5b-1gpu": 24, "qwen2.5-7b-8gpu": 80, "qwen2.5-7b-16gpu": 80}


def zero_model_state_gb(params: float, stage: int, ranks: int) -> float:
    """bf16 weights (2 B) + bf16 grads (2 B) + fp32 master and Adam m, v (12 B) per parameter;
    ZeRO-1 shards the 12, ZeRO-2 also the grads, ZeRO-3 everything."""
    weights, grads, optim = 2 * params, 2 * params, 12 * params
    if stage >= 1:
        optim /= ranks
    if stage >= 2:
        grads /= ranks
    if stage >= 3:
        weights /= ranks
    return (weights + grads + optim) / 1e9


@pytest.mark.parametrize("name, gpus", [("qwen2.5-0.5b-1gpu", 1), ("qwen2.5-7b-8gpu", 8), ("qwen2.5-7b-16gpu", 16)])
def test_gpu_config_loads_and_reserves_its_gpus(name, gpus):
    path = CONFIGS / f"{name}.yaml"
    cfg = load_config(path)
    assert cfg.model.path in PARAMS and cfg.model.dtype == "bfloat16"
    assert not cfg.sft.enabled  # SFT runs in the driver process, on CPU
    assert "Memory arithmetic" in path.read_text()
    plan = plan_placement(cfg)
    reserved = sum(b.get("GPU", 0.0) for g in plan.groups.values() for b in g.bundles)
    assert reserved == gpus


@pytest.mark.parametrize("name", list(GPU_GB))
def test_zero_states_and_activations_fit_the_gpu(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    t = cfg.trainer
    states = zero_model_state_gb(PARAMS[cfg.model.path], t.zero_stage, t.num_ranks)
    # A generous activation bound with checkpointing: logits and their gradient dominate
    # (tokens x vocab x 2 B, twice) plus twice the kept layer inputs (tokens x hidden x 2 B x layers).
    tokens = t.micro_batch_tokens
    hidden, layers = SHAPES[cfg.model.path]
    activations = (2 * tokens * 152_064 * 2 + tokens * hidden * 2 * layers * 2) / 1e9
    assert t.gradient_checkpointing
    trainer_share = 1.0 if cfg.placement.mode == "disaggregated" else 1 - cfg.generation.gpu_memory_utilization
    assert states + activations + 4 < GPU_GB[name] * trainer_share


def test_zero_formula_matches_the_8gpu_comment():
    assert zero_model_state_gb(7.62e9, 2, 4) == pytest.approx(41.9, abs=0.1)
    assert zero_model_state_gb(7.62e9, 1, 4) == pytest.approx(53.3, abs=0.1)
    assert zero_model_state_gb(7.62e9, 3, 4) == pytest.approx(30.5, abs=0.1)
    assert zero_model_state_gb(7.62e9, 2, 8) == pytest.approx(28.6, abs=0.1)
