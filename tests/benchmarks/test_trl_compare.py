"""`benchmarks.trl_compare`'s run plan, ratio names and its refusal to report runs that measured
nothing (the runs themselves are minutes of CPU: `make bench`)."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.trl_compare import (check_measured, labrl_timed_steps, ratios_by_round, round_opener, run_order,
                                     trl_keys)


def args(**kw) -> argparse.Namespace:
    base = {"labrl_staleness": [0, 1], "labrl_dense": False, "skip_trl": False, "trl_threads": [2], "trl_vllm": False}
    return argparse.Namespace(**{**base, **kw})


def test_trl_with_vllm_runs_once_per_thread_count_interleaved_with_labrl():
    assert run_order(True, args(trl_vllm=True)) == [("labrl", 0), ("trl", 2), ("labrl", 1), ("trl vllm", 2)]
    assert run_order(False, args(trl_threads=[1, 2], trl_vllm=True, labrl_staleness=[1])) == [
        ("trl", 1), ("labrl", 1), ("trl", 2), ("trl vllm", 1), ("trl vllm", 2)]
    assert run_order(True, args(skip_trl=True, trl_vllm=True)) == [("labrl", 0), ("labrl", 1)]


def test_every_trl_run_has_its_own_ratio_column():
    assert trl_keys(args(trl_threads=[1, 2], trl_vllm=True)) == ["TRL 1t", "TRL 2t", "TRL vLLM 1t", "TRL vLLM 2t"]
    assert trl_keys(args(skip_trl=True, trl_vllm=True)) == []


def test_a_failed_or_untimed_run_fails_the_benchmark():
    ok = {"size": "tiny", "label": "labrl staleness 1", "steps_timed": 3}
    check_measured([ok])
    failed = {"size": "tiny", "label": "TRL + vLLM colocate, 2 threads", "error": "TRL run failed (exit 1):\nboom"}
    with pytest.raises(SystemExit, match=r"tiny TRL \+ vLLM colocate, 2 threads \(TRL run failed \(exit 1\):\)"):
        check_measured([ok, failed])
    with pytest.raises(SystemExit, match="tiny labrl staleness 0"):
        check_measured([ok, {"size": "tiny", "label": "labrl staleness 0", "steps_timed": 0}])


def test_labrl_times_neither_warm_up_nor_flat_steps_nor_the_last_one():
    steps = [{}, {"train/skipped_no_signal": 1.0}, {}, {}, {}]
    assert labrl_timed_steps(steps) == [False, False, True, True, False]
    assert labrl_timed_steps([{}, {}]) == [False, True]  # two steps: the second is all there is


def test_the_opening_side_alternates_every_round():
    assert [round_opener(True, i) for i in range(4)] == [True, False, True, False]
    assert [round_opener(False, i) for i in range(3)] == [False, True, False]


def test_ratios_are_reported_by_round_with_their_median():
    def labrl(rnd: int, label: str, compl: float, tok: float) -> dict:
        return {"size": "tiny", "side": "labrl", "label": label, "round": rnd,
                "vs_trl": {"TRL 2t": {"completions_per_s": compl, "trained_tokens_per_s": tok}}}

    trl = {"size": "tiny", "side": "trl", "label": "TRL 2 threads", "round": 1}
    rows = [labrl(1, "labrl staleness 1", 1.42, 1.41), trl,
            labrl(2, "labrl staleness 1", 1.67, 1.68), labrl(3, "labrl staleness 1", 1.55, 1.50),
            labrl(1, "labrl staleness 1, every sample run", 1.24, 1.24)]
    summary = ratios_by_round(rows)
    assert [(r["run"], r["vs"], r["by_round"]) for r in summary] == [
        ("labrl staleness 1", "TRL 2t", "1.42 1.67 1.55"), ("labrl staleness 1, every sample run", "TRL 2t", "1.24")]
    assert (summary[0]["median_completions"], summary[0]["median_tokens"]) == (1.55, 1.50)
    assert summary[1]["median_completions"] == 1.24
