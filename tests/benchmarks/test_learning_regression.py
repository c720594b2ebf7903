"""The learning-regression benchmark's verdict: a run that trained nothing, learnt nothing
significant, or learnt significantly less than the record fails; noise within the intervals passes."""

from __future__ import annotations

from benchmarks.learning_regression import last_record, same_sft_checkpoint, verdict, weights_sha256


def _run(gain: float, ci: float, trained: float = 512.0, exit_code: int = 0) -> dict:
    return {"exit_code": exit_code, "gain": gain, "gain_ci95": ci, "trained": trained, "run_dir": "r",
            "commit": "abc1234"}


def test_a_run_within_the_noise_of_the_record_passes():
    assert verdict(_run(0.20, 0.06), _run(0.25, 0.06)) == []
    assert verdict(_run(0.20, 0.06), None) == []


def test_a_gain_significantly_below_the_record_fails_with_both_numbers():
    [problem] = verdict(_run(0.10, 0.03), _run(0.28, 0.05))
    assert "+0.100" in problem and "+0.280" in problem and "abc1234" in problem


def test_no_training_no_significant_gain_or_a_failed_run_fail():
    assert any("measured nothing" in p for p in verdict(_run(0.2, 0.05, trained=0.0), None))
    assert any("not significant" in p for p in verdict(_run(0.03, 0.05), None))
    assert "failed" in verdict({**_run(0.0, 0.0, exit_code=1), "gain": None}, None)[0]


def test_the_record_compared_is_the_newest_of_the_same_seed_and_overrides():
    history = [{"seed": 0, "overrides": [], "gain": 0.1}, {"seed": 1, "overrides": [], "gain": 0.2},
               {"seed": 0, "overrides": [], "gain": 0.3}, {"seed": 0, "overrides": ["grpo.num_steps=4"], "gain": 0.4}]
    assert last_record(history, 0, [])["gain"] == 0.3
    assert last_record(history, 0, ["grpo.num_steps=4"])["gain"] == 0.4
    assert last_record(history, 2, []) is None


def test_the_record_compared_is_from_this_cpu_model_when_there_is_one():
    history = [{"seed": 0, "overrides": [], "gain": 0.1, "cpu_model": "Intel(R) Xeon(R) Processor"},
               {"seed": 0, "overrides": [], "gain": 0.2, "cpu_model": "AMD EPYC"}]
    assert last_record(history, 0, [], "Intel(R) Xeon(R) Processor")["gain"] == 0.1
    assert last_record(history, 0, [], "AMD EPYC")["gain"] == 0.2
    assert last_record(history, 0, [], "another CPU")["gain"] == 0.2


def test_the_sft_checkpoints_are_compared_by_the_digest_of_their_weights(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, data in ((a, b"\x00\x01"), (b, b"\x00\x02")):
        d.mkdir()
        (d / "model.safetensors").write_bytes(data)
        (d / "config.json").write_text("{}")  # not weights: left out of the digest
    assert weights_sha256(a) != weights_sha256(b) and weights_sha256(tmp_path) is None
    run, same, other = ({"sft_sha256": weights_sha256(d)} for d in (a, a, b))
    assert "the same weights as" in same_sft_checkpoint(run, same)
    assert "different weights from" in same_sft_checkpoint(run, other)
    assert "no recorded digest" in same_sft_checkpoint(run, {"gain": 0.3})
