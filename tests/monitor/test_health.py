"""Each health monitor trips on its synthetic failure, stays quiet on healthy metrics, and stops when told."""

from __future__ import annotations

import math

import pytest

from configs.schema import MonitorConfig
from monitor.health import HealthMonitor
from tests.monitor.synthetic import healthy_step


def run(monitor: HealthMonitor, steps: list[dict[str, float]]) -> list:
    return [a for s, m in enumerate(steps) for a in monitor.check(m, s)]


def test_healthy_run_raises_nothing():
    cfg = MonitorConfig(reward_drop=0.2, sampler_logprob_diff_max=0.05)
    assert run(HealthMonitor(cfg), [healthy_step(s) for s in range(50)]) == []


def test_missing_metrics_never_trip():
    assert run(HealthMonitor(MonitorConfig()), [{} for _ in range(10)]) == []


def test_entropy_collapse():
    steps = [healthy_step(0), {**healthy_step(1), "train/entropy": 0.001}]
    alarms = run(HealthMonitor(MonitorConfig(entropy_min=0.02)), steps)
    assert [(a.check, a.step, a.stop) for a in alarms] == [("entropy_collapse", 1, False)]


def test_reward_collapse_needs_k_flat_steps():
    flat = {**healthy_step(0), "rollout/reward_std": 0.0, "rollout/reward_mean": 0.0}
    monitor = HealthMonitor(MonitorConfig(reward_collapse_steps=3))
    assert run(monitor, [flat, flat]) == []
    alarms = monitor.check(flat, 2)
    assert [a.check for a in alarms] == ["reward_collapse"]
    assert run(HealthMonitor(MonitorConfig(reward_collapse_steps=3)), [flat, flat, healthy_step(2), flat]) == []


def test_reward_mean_drop():
    means = [0.8] * 5 + [0.1] * 5
    steps = [{**healthy_step(0), "rollout/reward_mean": m} for m in means]
    alarms = run(HealthMonitor(MonitorConfig(reward_drop=0.3, reward_window=3)), steps)
    assert alarms and alarms[0].check == "reward_collapse"
    # window means: 0.8 .. then (0.8+0.8+0.1)/3=0.567 (drop 0.23), then 0.333 (drop 0.47) at step 6
    assert alarms[0].step == 6


def test_truncation_rate():
    steps = [{**healthy_step(0), "rollout/truncation_rate": 0.9}]
    assert [a.check for a in run(HealthMonitor(MonitorConfig(truncation_rate_max=0.5)), steps)] == ["truncation"]


@pytest.mark.parametrize("key, value", [("train/token_mult_prob_error", 1.3),
                                        ("train/sampler_logprob_diff_mean", 0.4)])
def test_logprob_mismatch(key, value):
    cfg = MonitorConfig(token_mult_prob_error_max=1.05, sampler_logprob_diff_max=0.1)
    alarms = run(HealthMonitor(cfg), [{**healthy_step(0), key: value}])
    assert [a.check for a in alarms] == ["logprob_mismatch"] and alarms[0].value == pytest.approx(value)
    # Samples one policy version old: the gap includes the policy's own update, not a sync fault.
    stale = {**healthy_step(0), key: value, "rollout/staleness_max": 1.0}
    assert run(HealthMonitor(cfg), [stale]) == []


def test_nonfinite_loss_stops_after_k_in_a_row():
    nan = {**healthy_step(0), "train/loss": math.nan}
    inf = {**healthy_step(0), "train/grad_norm": math.inf}
    monitor = HealthMonitor(MonitorConfig(nonfinite_loss_max_consecutive=3, stop_on=["nonfinite_loss"]))
    first = run(monitor, [nan, inf])
    assert [(a.check, a.stop) for a in first] == [("nonfinite_loss", False), ("nonfinite_loss", False)]
    assert monitor.check(healthy_step(2), 2) == []  # a good step resets the streak
    assert [a.stop for s in range(3, 6) for a in monitor.check(nan, s)] == [False, False, True]
    assert monitor.metrics()["health/nonfinite_loss_steps"] == 5


def test_trainer_skip_counter_counts_as_nonfinite():
    alarms = run(HealthMonitor(MonitorConfig()), [{**healthy_step(0), "train/skipped_nonfinite": 1.0}])
    assert [a.check for a in alarms] == ["nonfinite_loss"]


def test_stop_on_and_repeat_suppression():
    low = {**healthy_step(0), "train/entropy": 0.0}
    warn_only = HealthMonitor(MonitorConfig(stop_on=[], repeat_every=5))
    assert [a.step for a in run(warn_only, [low] * 12)] == [0, 5, 10]
    stopper = HealthMonitor(MonitorConfig(stop_on=["entropy_collapse"]))
    assert [a.stop for a in stopper.check(low, 0)] == [True]


def test_disabled_monitor_is_silent():
    low = {**healthy_step(0), "train/entropy": 0.0, "train/loss": math.nan}
    assert run(HealthMonitor(MonitorConfig(enabled=False)), [low] * 5) == []
