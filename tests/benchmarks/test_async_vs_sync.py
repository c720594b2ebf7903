"""`benchmarks.async_vs_sync`'s arithmetic and its refusal to report runs that trained nothing
(the runs themselves are minutes of CPU: `make bench`)."""

from __future__ import annotations

import math

import pytest

from benchmarks.async_vs_sync import add_ratios, check_measured


def row(staleness: int, oversample: int, grpo_s: float, trained: float = 128.0) -> dict:
    return {"env": "latency", "staleness": staleness, "oversample": oversample, "grpo_wall_s": grpo_s,
            "wait_rollout_s": grpo_s / 2, "trained": trained}


def test_speedups_against_the_same_oversampling_and_against_the_first_sync():
    rows = [row(0, 0, 30.0), row(1, 0, 20.0), row(0, 8, 15.0), row(1, 8, 10.0)]
    add_ratios(rows)
    assert [r["speedup_vs_sync"] for r in rows] == [1.0, 1.5, 1.0, 1.5]
    assert [r["speedup_vs_first_sync"] for r in rows] == [1.0, 1.5, 2.0, 3.0]
    alone = [row(1, 0, 20.0)]
    add_ratios(alone)
    assert math.isnan(alone[0]["speedup_vs_sync"])


def test_a_run_that_trained_nothing_fails_the_benchmark():
    check_measured([row(0, 0, 30.0), row(1, 0, 20.0)])
    with pytest.raises(SystemExit, match="measured nothing.*latency staleness 1 oversample 0"):
        check_measured([row(0, 0, 30.0), row(1, 0, 20.0, trained=0.0)])
