"""Rollout metrics on synthetic trajectories: every metric the issue lists, with hand-computed values."""

from __future__ import annotations

import math

import pytest

from monitor.rollout_metrics import mean_interval, rollout_metrics, step_timing_metrics
from tests.monitor.synthetic import traj


@pytest.fixture
def batch():
    return [
        traj(1.0, finish="env_done", generated=10, turns=2, tool_calls=2, version=3),
        traj(0.0, finish="env_done", generated=20, turns=3, tool_calls=3, invalid=1, version=3),
        traj(0.0, "truncated_length", finish="length", generated=30, turns=1, tool_calls=0, version=2),
        traj(0.5, "partial", finish="budget", generated=40, turns=6, tool_calls=5, version=2,
             env="molbio", difficulty=2),
    ]


def test_reward_success_and_length(batch):
    m = rollout_metrics(batch, current_version=3)
    assert m["rollout/num_trajectories"] == 4
    assert m["rollout/reward_mean"] == pytest.approx(0.375)
    assert m["rollout/reward_std"] == pytest.approx((((0.625 ** 2) + 2 * 0.375 ** 2 + 0.125 ** 2) / 4) ** 0.5)
    assert (m["rollout/reward_min"], m["rollout/reward_max"]) == (0.0, 1.0)
    assert m["rollout/success_rate"] == pytest.approx(0.25)
    assert m["rollout/response_length_mean"] == pytest.approx(25.0)
    assert m["rollout/response_length_max"] == 40
    assert m["rollout/num_generated_tokens"] == 100


def test_termination_turns_and_tools(batch):
    m = rollout_metrics(batch, current_version=3)
    assert m["rollout/truncation_rate"] == pytest.approx(1 / 4)  # the one length-stopped trajectory
    assert m["rollout/natural_termination_rate"] == pytest.approx(2 / 4)
    assert m["rollout/turns_mean"] == pytest.approx(3.0)
    assert m["rollout/turns_max"] == 6
    assert m["rollout/tool_calls_mean"] == pytest.approx(10 / 4)
    assert m["rollout/invalid_tool_call_rate"] == pytest.approx(1 / 10)  # per tool call
    assert m["rollout/finish/length"] == 1 and m["rollout/finish/env_done"] == 2


def test_invalid_tool_call_rate_stays_a_rate():
    # 5 turns without any parseable call: 5 error observations, 0 counted calls
    trajs = [traj(0.0, tool_calls=0, invalid=5), traj(1.0, tool_calls=3, invalid=1)]
    assert rollout_metrics(trajs)["rollout/invalid_tool_call_rate"] == pytest.approx(6 / 8)


def test_truncation_rate_equals_length_stopped_fraction():
    for n_len in range(0, 6):
        trajs = [traj(0.0, finish="length") for _ in range(n_len)] + [traj(1.0) for _ in range(8 - n_len)]
        assert rollout_metrics(trajs)["rollout/truncation_rate"] == pytest.approx(n_len / 8)


def test_reasons_staleness_and_env_breakdown(batch):
    m = rollout_metrics(batch, current_version=3)
    assert m["rollout/reason/correct"] == 1 and m["rollout/reason/wrong_value"] == 1
    assert m["rollout/reason/truncated_length"] == 1 and m["rollout/reason/partial"] == 1
    assert m["rollout/staleness_hist/0"] == 2 and m["rollout/staleness_hist/1"] == 2
    assert m["rollout/staleness_mean"] == pytest.approx(0.5) and m["rollout/staleness_max"] == 1
    assert m["env/stoich/reward_mean"] == pytest.approx(1 / 3)
    assert m["env/stoich/d1/success_rate"] == pytest.approx(1 / 3)
    assert m["env/molbio/d2/reward_mean"] == pytest.approx(0.5)
    assert m["env/molbio/num_trajectories"] == 1


def test_eval_prefix_has_no_env_breakdown(batch):
    m = rollout_metrics(batch, prefix="eval_sft")
    assert "eval_sft/reward_mean" in m and not any(k.startswith("env/") for k in m)


def test_step_timing_metrics():
    t = step_timing_metrics({"timing/step_s": 4.0, "timing/wait_rollout_s": 1.0, "rollout/num_generated_tokens": 800.0,
                             "train/tokens_per_s": 123.0})
    assert t == {"timing/idle_s": 1.0, "timing/idle_frac": 0.25, "timing/rollout_tokens_per_s": 200.0,
                 "timing/train_tokens_per_s": 123.0}
    assert step_timing_metrics({}) == {}


def test_mean_interval_by_hand():
    mean, half = mean_interval([1.0, 0.0, 1.0, 0.0])
    assert mean == 0.5 and half == pytest.approx(1.96 * math.sqrt((4 * 0.25 / 3) / 4))
    assert mean_interval([]) == (0.0, 0.0) and mean_interval([0.7]) == (0.7, 0.0)


def test_paired_interval_removes_task_difficulty():
    """Same tasks before and after: easy tasks stay solved, hard ones unsolved, a few flip to
    solved. Pooled rates barely separate; the paired per-task differences clearly do."""
    before = [1.0] * 40 + [0.0] * 40 + [0.0] * 20
    after = [1.0] * 40 + [0.0] * 40 + [1.0] * 10 + [0.0] * 10
    (b, hb), (a, ha) = mean_interval(before), mean_interval(after)
    diff, half = mean_interval([x - y for x, y in zip(after, before)])
    assert diff == pytest.approx(a - b) == pytest.approx(0.1)
    assert a - b < hb + ha and half < diff  # separated only by the paired test
