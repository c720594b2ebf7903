"""`benchmarks.flop_floor`: the matmul parameter count and the floor arithmetic of trl_compare's
second table (the GEMM rate itself is measured: one short real matmul run)."""

from __future__ import annotations

import json

import pytest

from benchmarks.flop_floor import floor_row, gemm_gflops, matmul_params


@pytest.fixture
def model_dir(tmp_path):
    cfg = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "vocab_size": 100}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return str(tmp_path)


def test_matmul_parameters_count_projections_mlp_and_head(model_dir):
    # per layer: q 64x64, k and v 64x32 each, o 64x64, MLP 3 x 64x256; head 100x64
    assert matmul_params(model_dir) == 2 * (64 * (64 + 2 * 32) + 64 * 64 + 3 * 64 * 256) + 100 * 64


def test_the_gemm_rate_is_measured(model_dir):
    assert gemm_gflops(model_dir, 1, rows=256, seconds=0.05) > 0.01


def test_labrl_costs_per_position_against_their_one_core_floor():
    run = {"size": "30M", "label": "labrl staleness 1", "side": "labrl", "completion_len_mean": 32.0,
           "batch_tokens": 64 * 40.0, "generation_s_mean": 4.096, "num_model_tokens": 1000.0, "step_time_s": 3.0}
    row = floor_row(run, p=1e7, gflops_1t=100.0, gflops_2t=150.0, prompts_per_step=8, completions_per_prompt=8)
    assert row["gen_ms_per_token"] == pytest.approx(4.096 / 2048 * 1e3)
    # 2P x (8 prompts of 8 tokens + 2,048 new tokens) / 2,048 tokens at 100 GFLOP/s
    assert row["gen_floor_ms"] == pytest.approx(2e7 * (64 + 2048) / 2048 / 1e11 * 1e3)
    assert row["train_ms_per_position"] == pytest.approx(3.0)
    assert row["train_floor_ms"] == pytest.approx(6e7 / 1e11 * 1e3)
    assert row["train_ms_per_position_x_floor"] == pytest.approx(3.0 / 0.6)


def test_a_trl_step_against_its_two_thread_floor():
    run = {"size": "30M", "label": "TRL 2 threads", "side": "trl", "completion_len_mean": 32.0,
           "batch_tokens": 64 * 40.0, "step_s_median": 6.0}
    row = floor_row(run, p=1e7, gflops_1t=100.0, gflops_2t=150.0, prompts_per_step=8, completions_per_prompt=8)
    assert row["step_floor_s"] == pytest.approx(8e7 * 64 * 40 / 1.5e11)
    assert row["step_s_x_floor"] == pytest.approx(6.0 / row["step_floor_s"])
    assert "gen_ms_per_token" not in row
