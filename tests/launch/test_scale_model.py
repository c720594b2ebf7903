"""The scaling model (launch/scale_model.py) and `labrl scale --predict`, on synthetic run dirs
whose numbers are chosen so every prediction can be computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch import scale
from launch.scale_model import (MeasuredRates, compare, count_params, dp_efficiency, fit_dp_overhead,
                                measure_rates, predict_point, predict_split)

QWEN25_05B = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
              "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
              "tie_word_embeddings": True}
TINY = {"model_type": "qwen2", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10, "tie_word_embeddings": True}


def _step(wait: float = 7.5, train: float = 2.0, sync: float = 0.5, produced: float | None = None) -> dict:
    row = {"timing/wait_rollout_s": wait, "timing/train_s": train, "timing/sync_s": sync,
           "timing/step_s": wait + train + sync, "rollout/num_generated_tokens": 1000.0,
           "rollout/num_trajectories": 10.0, "train/num_tokens": 800.0}
    if produced is not None:
        row["accounting/produced"] = produced
    return row


def write_run(root: Path, steps: list[dict], engines: int = 1, ranks: int = 1, staleness: int = 1,
              model: dict | None = None) -> Path:
    """A run directory: config.json, init_model/config.json and metrics.jsonl (one non-step row)."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = {"generation": {"num_workers": engines, "tensor_parallel_size": 1, "gpus_per_worker": 0.0},
           "trainer": {"num_ranks": ranks, "gradient_checkpointing": False},
           "rollout": {"max_staleness": staleness}, "model": {"path": None}}
    (root / "config.json").write_text(json.dumps(cfg))
    (root / "init_model").mkdir(exist_ok=True)
    (root / "init_model" / "config.json").write_text(json.dumps(model or TINY))
    rows = [{"step": 0, "eval_sft/pass@1": 0.1}, *({"step": i, **s} for i, s in enumerate(steps))]
    (root / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def _reference(tmp_path: Path, staleness: int = 1) -> MeasuredRates:
    # warm-up step (ignored) + 2 measured; 60 produced for 30 drawn trajectories: refill factor 2
    steps = [_step(wait=50.0), _step(), _step(produced=60.0)]
    return measure_rates(write_run(tmp_path / "ref", steps, staleness=staleness))


def test_count_params_matches_qwen25_05b():
    # Published: Qwen2.5-0.5B has 0.49B parameters (494,032,768 with tied embeddings).
    assert count_params(QWEN25_05B) == pytest.approx(494_032_768, rel=0.01)
    assert count_params(QWEN25_05B) == 494_032_768


def test_count_params_llama_untied_without_bias():
    llama = {"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 10,
             "tie_word_embeddings": False}
    per_layer = 4 * 8 * 8 + 3 * 8 * 16 + 2 * 8  # q,k,v,o + gate/up/down + 2 norms
    assert count_params(llama) == 2 * 10 * 8 + 2 * per_layer + 8
    # Qwen2: GQA (k/v of one 4-wide head) and q/k/v biases
    tiny_layer = 8 * 8 + 2 * 8 * 4 + 8 * 8 + (8 + 4 + 4) + 3 * 8 * 16 + 2 * 8
    assert count_params(TINY) == 10 * 8 + tiny_layer + 8


def test_rates_from_timers(tmp_path):
    r = _reference(tmp_path)
    assert r.steps_measured == 2 and r.params == count_params(TINY)
    assert r.gen_tokens_per_step == pytest.approx(2000.0)  # 1000 drawn x refill factor 2
    assert r.step_s == pytest.approx(10.0) and r.sync_s == pytest.approx(0.5)
    assert r.gen_tokens_per_s_per_gpu == pytest.approx(2000.0 / 9.5)  # busy = step - sync (async)
    assert r.train_tokens_per_s_per_rank == pytest.approx(400.0)
    assert r.rollout_bound and r.device == "CPU"
    synchronous = _reference(tmp_path / "s", staleness=0)
    assert synchronous.gen_tokens_per_s_per_gpu == pytest.approx(2000.0 / 7.5)  # busy = wait


def test_trainer_bound_run_is_flagged_lower_bound(tmp_path):
    r = measure_rates(write_run(tmp_path / "tb", [_step(wait=0.1, train=9.4)] * 3))
    assert not r.rollout_bound and "lower bound" in r.gen_rate_note


def test_measured_ranks_normalised_by_dp_efficiency(tmp_path):
    r = measure_rates(write_run(tmp_path / "r2", [_step()] * 3, ranks=2), dp_overhead=0.1)
    assert r.train_tokens_per_s_per_rank == pytest.approx(400.0 / 2 * 1.1)


def test_predict_point_async_and_sync(tmp_path):
    p = predict_point(_reference(tmp_path), engines=2, ranks=2)
    assert p.gen_s == pytest.approx(4.75) and p.train_s == pytest.approx(2.0 / (2 / 1.05))
    assert p.step_s == pytest.approx(4.75 + 0.5) and p.bottleneck == "generation"
    assert p.trajectories_per_s == pytest.approx(10.0 / 5.25)
    s = predict_point(_reference(tmp_path / "s", staleness=0), engines=2, ranks=2)
    assert s.step_s == pytest.approx(3.75 + 1.05 + 0.5)  # synchronous: the phases add up


def test_predict_split_best_first_and_size_scaling(tmp_path):
    ref = _reference(tmp_path)
    preds = predict_split(ref, budget_gpus=4)
    assert [(p.engines, p.ranks) for p in preds] == [(3, 1), (2, 2), (1, 3)]
    assert preds[0].step_s == pytest.approx(9.5 / 3 + 0.5) and all(p.gpus == 4 for p in preds)
    assert preds[-1].step_s == pytest.approx(9.5 + 0.5)
    double = predict_split(ref, 4, target_params=2 * ref.params)
    assert double[0].step_s == pytest.approx(2 * preds[0].step_s)  # every term is proportional to N
    recompute = predict_point(ref, 1, 1, recompute=True)
    assert recompute.train_s == pytest.approx(2.0 * 8 / 6)
    tp = predict_split(ref, 5, gpus_per_engine=2)
    assert [(p.engines, p.ranks) for p in tp] == [(2, 1), (1, 3)]
    assert tp[0].gen_s == pytest.approx(9.5 / 4)
    with pytest.raises(ValueError, match="cannot hold"):
        predict_split(ref, 1)


def test_dp_overhead_fit_and_compare(tmp_path):
    one = measure_rates(write_run(tmp_path / "r1", [_step()] * 3))
    # two ranks at c = 0.1: 2 x 400 / 1.1 tokens/s, so train_s = 800 / that
    two = measure_rates(write_run(tmp_path / "r2", [_step(train=800 / (800 / 1.1))] * 3, ranks=2))
    assert fit_dp_overhead([one, two]) == pytest.approx(0.1)
    assert fit_dp_overhead([one]) is None
    assert dp_efficiency(3, 0.1) == pytest.approx(1 / 1.2)
    faster = measure_rates(write_run(tmp_path / "e2", [_step(wait=2.75)] * 3, engines=2))
    rows = compare(one, [one, faster])
    assert rows[0].step_error_pct == pytest.approx(0.0)
    assert rows[1].predicted.step_s == pytest.approx(4.75 + 0.5) and rows[1].measured_step_s == pytest.approx(5.25)
    assert rows[1].step_error_pct == pytest.approx(0.0, abs=1e-9)
    assert rows[1].throughput_error_pct == pytest.approx(0.0, abs=1e-9)


def test_empty_run_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no GRPO step records"):
        measure_rates(write_run(tmp_path / "empty", []))
    with pytest.raises(ValueError, match="not a run directory"):
        measure_rates(tmp_path / "missing")
    flat = {**_step(), "train/num_tokens": 0.0}  # every group flat: nothing trained
    with pytest.raises(ValueError, match="no step trained"):
        measure_rates(write_run(tmp_path / "flat", [flat] * 3))


def test_cli_predict_writes_report(tmp_path):
    ref = write_run(tmp_path / "runs" / "ref", [_step(wait=50.0), _step(), _step(produced=60.0)])
    other = write_run(tmp_path / "runs" / "e2", [_step(wait=2.75)] * 3, engines=2)
    out = tmp_path / "out"
    rc = scale.main(["--predict", str(ref), "--gpus", "4", "--params", "1e6", "--out", str(out),
                     "--compare", str(ref), str(other)])
    assert rc == 0
    text = (out / "scale_prediction.md").read_text()
    assert "| 3 | 1 | 1 |" in text.split("Best split")[0]  # the best split leads the table
    assert "Best split: 3 engine(s)" in text and "Predicted vs measured" in text
    assert "| e2 | 2 | 1 |" in text


def test_cli_predict_fails_without_steps(tmp_path, caplog):
    empty = write_run(tmp_path / "empty", [])
    assert scale.main(["--predict", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no GRPO step records" in caplog.text and not (tmp_path / "o" / "scale_prediction.md").exists()
    both = write_run(tmp_path / "ok", [_step()] * 2)
    assert scale.main(["--predict", str(both), "--params", "1e9", "--model-config", "x.json"]) == 2
