"""The memory model (launch/memory_model.py) and the preflight check built on it: arithmetic on
known shapes, how ZeRO stage, ranks, micro-batches and checkpointing move each role, the refusal
message, the bundled configs passing, and one real measurement of a tiny SFT process."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from configs.loading import ConfigError, load_config
from launch import memory_model as mm
from launch.preflight import check_memory_fit

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
# Public config.json values of the two GPU recipes' models (no download needed).
QWEN_05B = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
            "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True}
QWEN_7B = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
           "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False}
GPU_CONFIGS = {"qwen2.5-0.5b-1gpu": (QWEN_05B, 24.0), "qwen2.5-7b-8gpu": (QWEN_7B, 80.0),
               "qwen2.5-7b-16gpu": (QWEN_7B, 80.0)}
KIT_05B = ["model.build=chat", "model.chat_preset=qwen2.5-0.5b", "sft.enabled=false"]


def cpu_cfg(*overrides: str):
    return load_config(None, [*KIT_05B, *overrides])


def test_qwen_05b_shape_and_states_match_the_yaml_comment():
    shape = mm.ModelShape.from_hf(QWEN_05B)
    assert shape.params == pytest.approx(0.494e9, rel=0.01)
    states = mm.zero_states(shape.params, 1, 1, bf16=True)  # bf16 weights + grads, fp32 master + m + v
    assert states["weights"] / 1e9 == pytest.approx(0.99, abs=0.01)
    assert states["optimizer"] / 1e9 == pytest.approx(5.93, abs=0.02)
    assert sum(states.values()) / 1e9 == pytest.approx(7.9, abs=0.05)  # 16P


@pytest.mark.parametrize("stage, ranks, gb", [(2, 4, 41.9), (1, 4, 53.3), (3, 4, 30.5), (2, 8, 28.6)])
def test_zero_states_match_the_7b_comments(stage, ranks, gb):
    assert sum(mm.zero_states(int(7.62e9), stage, ranks, bf16=True).values()) / 1e9 == pytest.approx(gb, abs=0.1)


def test_gpu_sharding_is_exact_and_monotone():
    P = 10**9
    for stage in (1, 2, 3):
        one, four = mm.zero_states(P, stage, 1, True), mm.zero_states(P, stage, 4, True)
        assert four["optimizer"] == one["optimizer"] / 4
        assert four["grads"] == (one["grads"] / 4 if stage >= 2 else one["grads"])
        assert four["weights"] == (one["weights"] / 4 if stage == 3 else one["weights"])
    totals = [sum(mm.zero_states(P, s, 4, True).values()) for s in (1, 2, 3)]
    assert totals == sorted(totals, reverse=True)


def test_cpu_rank_shrinks_with_ranks_but_node_grows_below_stage_3():
    """On one CPU node each rank above stage 3 holds the whole fp32 model: more ranks, less per
    rank, more in all."""
    for stage in (1, 2):
        one = mm.predict_memory(cpu_cfg(f"trainer.zero_stage={stage}", "trainer.num_ranks=1"))
        two = mm.predict_memory(cpu_cfg(f"trainer.zero_stage={stage}", "trainer.num_ranks=2"))
        assert two.role("trainer rank 1+").total < one.role("trainer rank 0").total
        assert two.node_total_gb > one.node_total_gb


def test_activations_follow_micro_batch_tokens_and_checkpointing():
    rank = lambda *o: mm.predict_memory(cpu_cfg("generation.max_model_len=1024", *o)).role("trainer rank 0")  # noqa: E731
    small, big = rank("trainer.micro_batch_tokens=1024"), rank("trainer.micro_batch_tokens=4096")
    assert big.parts["activations"] == pytest.approx(4 * small.parts["activations"])
    ckpt = rank("trainer.micro_batch_tokens=4096", "trainer.gradient_checkpointing=true")
    assert ckpt.parts["activations"] < big.parts["activations"] / 4
    assert mm.micro_batch_tokens(cpu_cfg("generation.max_model_len=2048", "trainer.micro_batch_tokens=512")) == 2048


def test_engine_and_staging_on_cpu():
    pred = mm.predict_memory(cpu_cfg("generation.kv_cache_gb=2", "generation.num_workers=2"))
    eng = pred.role("engine")
    assert eng.count == 2 and eng.parts["kv cache"] == pytest.approx(2 * 2**30 / 1e9)
    fp32_weights = 4 * pred.shape.params / 1e9
    assert eng.parts["weights"] == pytest.approx(fp32_weights)
    assert eng.parts["sync staging"] == pytest.approx(fp32_weights)  # the trainer's fp32 tensors
    assert pred.role("trainer rank 0").parts["sync staging"] == pytest.approx(fp32_weights)
    gloo = mm.predict_memory(cpu_cfg("generation.kv_cache_gb=2", "generation.num_workers=2", "sync.transport=gloo"))
    # the staging pages are counted once in the node total: rank 0 and both engines map them
    assert pred.node_total_gb - gloo.node_total_gb == pytest.approx(fp32_weights, rel=1e-6)


def test_tiny_vocab_is_the_tokenizers():
    from models.tiny import build_tokenizer

    assert len(build_tokenizer()) == mm.TINY_VOCAB


def test_refusal_names_role_prediction_budget_and_what_to_change():
    cfg = cpu_cfg("trainer.num_ranks=2", "trainer.zero_stage=3", "trainer.micro_batch_tokens=8192")
    with pytest.raises(ConfigError) as err:
        check_memory_fit(cfg, host=(12.0, 24.0))
    text = str(err.value)
    pred = mm.predict_memory(cfg)
    assert f"node total (host RAM) {pred.node_total_gb:.1f} GB" in text and "trainer rank 0" in text
    assert "MemTotal 24.0 GB (refused above 24.0), available now 12.0 GB" in text
    assert "trainer.micro_batch_tokens (now 8192) or trainer.gradient_checkpointing=true" in text
    assert "fewer trainer.num_ranks (now 2" in text and "trainer.zero_stage=2 (now 3" in text
    assert "generation.kv_cache_gb (now 1 GiB x 1 engine(s))" in text


def test_what_fits_passes_and_only_the_impossible_is_refused(caplog):
    """Refused above MemTotal (fixed, so never flaky); above 85% of what is available now, a warning."""
    cfg = load_config()
    need = mm.predict_memory(cfg).node_total_gb
    assert check_memory_fit(cfg, host=(need * 2, need * 2)) is not None
    with caplog.at_level(logging.WARNING, logger="launch.preflight"):
        check_memory_fit(cfg, host=(need, need * 2))  # busy machine: fits, but not in what is free now
    assert "predicted peak of node total" in caplog.text
    with pytest.raises(ConfigError):
        check_memory_fit(cfg, host=(need / 2, need * 0.95))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="launch.preflight"):  # autoscaling clusters: warn only
        check_memory_fit(load_config(None, ["placement.check_fit=false"]), host=(need / 2, need * 0.95))
    assert "To fit, lower" in caplog.text


@pytest.mark.parametrize("name", ["default", "long-cpu", "chat-cpu"])
def test_bundled_cpu_configs_fit_this_machine_class(name):
    """24 GB, shared: they must fit in well under what a busy 24 GB machine has free."""
    pred = check_memory_fit(load_config(CONFIGS / f"{name}.yaml"), host=(12.0, 24.0))
    assert pred is not None and pred.node_total_gb < 8.0


@pytest.mark.parametrize("name", list(GPU_CONFIGS))
def test_gpu_configs_fit_their_gpus(name):
    hf, gpu_gb = GPU_CONFIGS[name]
    cfg = load_config(CONFIGS / f"{name}.yaml")
    pred = mm.predict_memory(cfg, hf, gpu_memory_gb=gpu_gb)
    assert pred.per_gpu_gb and max(pred.per_gpu_gb.values()) <= gpu_gb
    assert len(pred.per_gpu_gb) == (1 if cfg.placement.mode == "colocated" else
                                    cfg.trainer.num_ranks + cfg.generation.num_workers)


def test_gpu_rank_matches_the_h200_measurement():
    """benchmarks/README.md: Qwen2-0.5B, bf16 ZeRO-1 on one H200, 16,384-token micro-batches with
    checkpointing: 23.4 GB peak allocated (torch.cuda.max_memory_allocated)."""
    cfg = load_config(None, ["trainer.gpus_per_rank=1", "trainer.zero_stage=1", "trainer.micro_batch_tokens=16384",
                             "trainer.gradient_checkpointing=true", "generation.max_model_len=1024",
                             "grpo.batch_size=48", "sft.enabled=false"])
    rank = mm.predict_memory(cfg, QWEN_05B).role("trainer rank 0")
    allocated = rank.total - rank.parts["overhead"]
    assert allocated == pytest.approx(23.4, rel=0.1)


def test_gpu_run_is_not_checked_against_host_ram(monkeypatch):
    """Without a GPU in sight nothing is refused for a GPU recipe, whatever the host has."""
    cfg = load_config(CONFIGS / "qwen2.5-0.5b-1gpu.yaml")
    monkeypatch.setattr(mm, "hf_config_of", lambda c: QWEN_05B)
    monkeypatch.setattr("launch.preflight.gpu_memory_gb", lambda: None)
    assert check_memory_fit(cfg, host=(0.5, 1.0)) is not None
    with pytest.raises(ConfigError, match="GPU 0"):
        check_memory_fit(cfg, gpu_gb=12.0)


def test_colocated_sleep_frees_the_gpu_for_the_step():
    base = ["placement.mode=colocated", "generation.gpus_per_worker=0.5", "trainer.gpus_per_rank=0.5",
            "trainer.zero_stage=1", "rollout.max_staleness=0"]
    awake = mm.predict_memory(load_config(None, base), QWEN_05B, gpu_memory_gb=24.0)
    asleep = mm.predict_memory(load_config(None, [*base, "generation.sleep_level=2"]), QWEN_05B, gpu_memory_gb=24.0)
    assert asleep.per_gpu_gb[0] < awake.per_gpu_gb[0]


def test_format_table_lists_every_role():
    text = mm.format_table(mm.predict_memory(load_config()))
    for role in ("trainer rank 0", "engine", "sft", "driver", "env worker", "ray system", "node total"):
        assert role in text


SFT_PROBE = """
import json, sys
from configs.loading import load_config
from launch.components import prepare_model
from actors.process_memory import process_tree_peak_bytes
from trainers.batching import TrainSample
from trainers.sft import train_sft
cfg = load_config(None, ["sft.steps=2", "sft.batch_size=4", "generation.max_model_len=256"])
path = prepare_model(cfg, __import__("pathlib").Path(sys.argv[1]))
n = cfg.generation.max_model_len
samples = [TrainSample([3 + (i * 7 + t) % 90 for t in range(n)], [0] * 64 + [1] * (n - 64), [0.0] * n, 0.0)
           for i in range(4)]
train_sft(path, sys.argv[1] + "/out", samples, cfg.sft, seed=0, pad_token_id=0, progress_bar=False)
print(json.dumps({"peak": process_tree_peak_bytes() / 1e9}))
"""


def test_tiny_sft_process_peak_matches_the_prediction(tmp_path):
    """A real process: the SFT of the tiny policy on full-length demonstrations (~15 s)."""
    from trainers.sft import sft_process_env

    cfg = load_config(None, ["sft.steps=2", "sft.batch_size=4", "generation.max_model_len=256"])
    env = {**__import__("os").environ, **sft_process_env(cfg.sft), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", SFT_PROBE, str(tmp_path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])["peak"]
    predicted = mm.predict_memory(cfg).role("sft").total - mm.RAY_WORKER_GB  # a plain process here
    assert measured > 0.2 and abs(predicted / measured - 1) < 0.25, (predicted, measured)


def test_process_tree_peak_counts_children():
    """A child's high-water mark counts in its parent's tree (vLLM's engine core is such a child)."""
    from actors.process_memory import process_tree_peak_bytes

    alone = process_tree_peak_bytes()
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; b = b'x' * (300 * 2**20); "
                              "print(flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        child.stdout.readline()  # the 300 MB are written (resident) once it prints
        assert process_tree_peak_bytes() >= alone + 300 * 2**20
        assert process_tree_peak_bytes(child.pid) >= 300 * 2**20
    finally:
        child.kill()
        child.wait()
