"""Reward-profile statistics and the pass@k estimator against hand-computed values."""

from __future__ import annotations

import json
from math import comb

import pytest

from monitor.text_table import format_table
from monitor.profiling import (TaskProfile, pass_at_k, profile_task, profile_tasks, read_profiles,
                               summarize, summary_table, write_profiles)
from tests.monitor.synthetic import traj


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 0, 1, 0.0),
    (5, 5, 3, 1.0),
    (4, 1, 1, 0.25),            # pass@1 = c/n
    (4, 1, 2, 0.5),             # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (5, 2, 2, 0.7),             # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (10, 3, 5, 1 - 21 / 252),   # 1 - C(7,5)/C(10,5)
    (4, 2, 3, 1.0),             # n - c < k: some draw must contain a correct one
])
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_matches_binomial_definition():
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - comb(n - c, k) / comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


@pytest.mark.parametrize("n, c, k", [(3, 4, 1), (3, 1, 0), (3, 1, 4)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_profile_task_fixed_rewards():
    rewards = [1.0, 0.0, 0.0, 1.0, 0.5]  # successes: the two 1.0 (reason "correct")
    p = profile_task([traj(r, "correct" if r == 1.0 else "wrong_value", task_id="a") for r in rewards], k=2)
    assert (p.n, p.num_correct) == (5, 2)
    assert p.mean == pytest.approx(0.5)
    assert p.std == pytest.approx(0.2 ** 0.5)  # deviations 0.5,0.5,0.5,0.5,0 -> variance 1/5
    assert (p.min, p.max) == (0.0, 1.0)
    assert p.pass_at_1 == pytest.approx(0.4)
    assert p.pass_at_k == pytest.approx(0.7)
    assert p.reasons == {"correct": 2, "wrong_value": 3}
    assert not p.zero_variance


def test_profiles_summary_and_zero_variance():
    trajs = ([traj(1.0, task_id="easy") for _ in range(4)] + [traj(0.0, task_id="hard") for _ in range(4)]
             + [traj(r, task_id="mid") for r in (1.0, 0.0, 1.0, 0.0)])
    profiles = profile_tasks(trajs)
    assert [p.task_id for p in profiles] == ["easy", "hard", "mid"]
    assert [p.zero_variance for p in profiles] == [True, True, False]
    s = summarize(profiles)
    assert s["profile/num_tasks"] == 3 and s["profile/samples_per_task"] == 4
    assert s["profile/pass@1"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert s["profile/pass@4"] == pytest.approx((1 + 0 + 1) / 3)
    assert s["profile/zero_variance_frac"] == pytest.approx(2 / 3)
    assert s["profile/all_correct_frac"] == pytest.approx(1 / 3)
    assert s["profile/all_wrong_frac"] == pytest.approx(1 / 3)
    assert s["profile/reward_std_mean"] == pytest.approx(0.5 / 3)
    table = summary_table(profiles)
    assert len(table) == 1 and table[0]["tasks"] == 3 and "pass@4" in table[0]
    assert "zero_variance_frac" in format_table(table)


def test_single_sample_is_never_zero_variance():
    assert not profile_task([traj(1.0)]).zero_variance


def test_profile_jsonl_round_trip(tmp_path):
    profiles = profile_tasks([traj(r, task_id=t) for t in ("a", "b") for r in (1.0, 0.0, 0.0)], k=2)
    path = tmp_path / "profile.jsonl"
    write_profiles(path, profiles)
    row = json.loads(path.read_text().splitlines()[0])
    assert {"task_id", "mean", "std", "min", "max", "pass@1", "pass@2", "zero_variance"} <= set(row)
    assert read_profiles(path) == profiles
    assert isinstance(read_profiles(path)[0], TaskProfile)


def test_read_profiles_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="labrl profile"):
        read_profiles(tmp_path / "nope.jsonl")
