"""The autoscale policy on synthetic step signals: what it adds, retires and refuses, and why."""

from __future__ import annotations

import logging

import pytest

from configs.schema import AutoscaleConfig
from launch.autoscale import AutoscalePolicy, ScaleDecision, StepSignals


def cfg(**overrides: object) -> AutoscaleConfig:
    base = dict(enabled=True, min_engines=1, max_engines=3, min_env_workers=1, max_env_workers=4,
                window_steps=2, cooldown_steps=2, wait_high=0.25, wait_low=0.05, env_share_high=0.5,
                env_workers_step=2)
    return AutoscaleConfig(**{**base, **overrides})


def tool_bound(step: int) -> StepSignals:
    """Injected tool latency: trainer waits 40% of the step, episodes spend 80% in tools."""
    return StepSignals(step, step_s=10.0, wait_rollout_s=4.0, generation_s_mean=1.0, env_s_mean=4.0, in_flight=5)


def gen_bound(step: int) -> StepSignals:
    """Slow generation: trainer waits 50%, episodes spend 20% in tools."""
    return StepSignals(step, step_s=10.0, wait_rollout_s=5.0, generation_s_mean=4.0, env_s_mean=1.0, in_flight=5)


def trainer_bound(step: int, env_s: float = 1.0, in_flight: int = 0) -> StepSignals:
    """The trainer waits 2% of the step; nothing in flight unless told. env_s 1.0 = 20% env share."""
    return StepSignals(step, step_s=10.0, wait_rollout_s=0.2, generation_s_mean=4.0, env_s_mean=env_s,
                       in_flight=in_flight)


def deltas(d: ScaleDecision | None) -> tuple[int, int] | None:
    return None if d is None else (d.engines, d.env_workers)


def run(policy: AutoscalePolicy, signals: list[StepSignals], engines: int,
        env_workers: int) -> dict[int, ScaleDecision]:
    """Feeds steps as the controller does, applying each decision at once; returns them by step."""
    out = {}
    for s in signals:
        d = policy.decide(s, engines, env_workers)
        if d is not None:
            out[s.step] = d
            engines, env_workers = engines + d.engines, env_workers + d.env_workers
            policy.applied(s.step)
    return out


def test_window_not_full_gives_none() -> None:
    policy = AutoscalePolicy(cfg(window_steps=3))
    assert policy.decide(tool_bound(0), 1, 1) is None
    assert policy.decide(tool_bound(1), 1, 1) is None
    assert deltas(policy.decide(tool_bound(2), 1, 1)) == (0, 2)


def test_tool_latency_adds_env_workers_then_cools_down_and_stops_at_max(caplog: pytest.LogCaptureFixture) -> None:
    policy = AutoscalePolicy(cfg())
    with caplog.at_level(logging.INFO, logger="launch.autoscale"):
        decisions = run(policy, [tool_bound(i) for i in range(12)], engines=1, env_workers=1)
    # Step 1: window (0, 1) full -> +2 (1 -> 3). Steps 2-3 cool down, 4-5 fill the window -> +1 (3 -> 4,
    # clamped to max_env_workers). Then at max: nothing, and no engine is tried instead.
    assert {k: deltas(d) for k, d in decisions.items()} == {1: (0, 2), 5: (0, 1)}
    assert decisions[1].reason == ("trainer waited 40% of the step for rollouts (> wait_high 25%) over steps 0-1; "
                                   "env time is 80% of episode time (> 50%): +2 env workers (1 -> 3)")
    assert "over steps 4-5" in decisions[5].reason
    assert decisions[5].reason.endswith(": +1 env worker (3 -> 4)")
    at_max = [r.getMessage() for r in caplog.records if "at max_env_workers" in r.getMessage()]
    # Steps 8..11 each log once (6-7 cool down; the window stays full while nothing changes).
    assert len(at_max) == 3 and "max_env_workers 4 (now 4): no change" in at_max[0]
    assert "trainer waited 40%" in at_max[0]


def test_slow_generation_adds_engines_up_to_max() -> None:
    policy = AutoscalePolicy(cfg(cooldown_steps=0))
    decisions = run(policy, [gen_bound(i) for i in range(10)], engines=1, env_workers=2)
    # No cool-down: each full window of 2 fresh steps adds one engine, until max_engines 3.
    assert {k: deltas(d) for k, d in decisions.items()} == {1: (1, 0), 3: (1, 0)}
    assert decisions[1].reason == ("trainer waited 50% of the step for rollouts (> wait_high 25%) over steps 0-1; "
                                   "env time is 20% of episode time (<= 50%): +1 engine (1 -> 2)")
    assert decisions[3].reason.endswith("+1 engine (2 -> 3)")


def test_at_max_engines_does_not_add_env_workers_instead(caplog: pytest.LogCaptureFixture) -> None:
    policy = AutoscalePolicy(cfg())
    with caplog.at_level(logging.INFO, logger="launch.autoscale"):
        assert policy.decide(gen_bound(0), 3, 1) is None
        assert policy.decide(gen_bound(1), 3, 1) is None
    assert any("engines at max_engines 3 (now 3)" in r.getMessage() for r in caplog.records)


def test_trainer_bound_retires_env_workers_then_engines_not_below_min() -> None:
    policy = AutoscalePolicy(cfg(cooldown_steps=0))
    decisions = run(policy, [trainer_bound(i) for i in range(12)], engines=3, env_workers=4)
    # Env share 20%: env workers are the less needed kind: 4 -> 2 -> 1 (min); then engines 3 -> 2 -> 1.
    assert {k: deltas(d) for k, d in decisions.items()} == {1: (0, -2), 3: (0, -1), 5: (-1, 0), 7: (-1, 0)}
    assert decisions[1].reason == ("trainer waited 2% of the step for rollouts (< wait_low 5%) with nothing in "
                                   "flight over steps 0-1; env time is 20% of episode time (<= 50%): "
                                   "-2 env workers (4 -> 2)")
    assert "env workers at min_env_workers 1: -1 engine (3 -> 2)" in decisions[5].reason


def test_trainer_bound_with_env_heavy_episodes_retires_an_engine() -> None:
    policy = AutoscalePolicy(cfg())
    policy.decide(trainer_bound(0, env_s=12.0), 2, 4)
    d = policy.decide(trainer_bound(1, env_s=12.0), 2, 4)
    assert deltas(d) == (-1, 0)
    assert d is not None and "env time is 75% of episode time (> 50%): -1 engine (2 -> 1)" in d.reason
    # Engines at min: the other kind is retired.
    policy = AutoscalePolicy(cfg())
    policy.decide(trainer_bound(0, env_s=12.0), 1, 4)
    d = policy.decide(trainer_bound(1, env_s=12.0), 1, 4)
    assert deltas(d) == (0, -2) and d is not None and "engines at min_engines 1" in d.reason


def test_in_flight_on_one_step_blocks_retiring() -> None:
    policy = AutoscalePolicy(cfg())
    assert policy.decide(trainer_bound(0), 3, 4) is None
    assert policy.decide(trainer_bound(1, in_flight=3), 3, 4) is None
    assert policy.decide(trainer_bound(2), 3, 4) is None  # window (1, 2) still holds the busy step
    assert deltas(policy.decide(trainer_bound(3), 3, 4)) == (0, -2)


def test_no_retiring_at_mins_or_without_scale_down() -> None:
    policy = AutoscalePolicy(cfg())
    assert [policy.decide(trainer_bound(i), 1, 1) for i in range(4)] == [None] * 4
    policy = AutoscalePolicy(cfg(scale_down=False))
    assert [policy.decide(trainer_bound(i), 3, 4) for i in range(4)] == [None] * 4


def test_between_thresholds_nothing_changes() -> None:
    policy = AutoscalePolicy(cfg())
    mid = [StepSignals(i, 10.0, 1.5, 4.0, 1.0, 0) for i in range(4)]  # 15% wait
    assert [policy.decide(s, 2, 2) for s in mid] == [None] * 4


def test_applied_restarts_cooldown_and_clears_window() -> None:
    policy = AutoscalePolicy(cfg(cooldown_steps=2))
    assert policy.decide(tool_bound(2), 1, 1) is None
    policy.applied(3)  # a manual change after step 3: step 2's measure is of the old layout
    for step in (4, 5, 6):  # 4, 5 cool down (not measured), 6 is the first of a new window
        assert policy.decide(tool_bound(step), 1, 1) is None
    assert deltas(policy.decide(tool_bound(7), 1, 1)) == (0, 2)


def test_decision_clears_window_even_if_not_applied() -> None:
    policy = AutoscalePolicy(cfg())
    policy.decide(gen_bound(0), 1, 1)
    assert deltas(policy.decide(gen_bound(1), 1, 1)) == (1, 0)
    assert policy.decide(gen_bound(2), 1, 1) is None
    assert deltas(policy.decide(gen_bound(3), 1, 1)) == (1, 0)


def test_clamped_deltas_never_flip_sign() -> None:
    # Sizes set by hand beyond the bounds: an "add" above max or a "retire" below min is no decision.
    policy = AutoscalePolicy(cfg())
    policy.decide(tool_bound(0), 1, 6)
    assert policy.decide(tool_bound(1), 1, 6) is None
    policy = AutoscalePolicy(cfg(min_env_workers=3, min_engines=2))
    policy.decide(trainer_bound(0), 1, 2)
    assert policy.decide(trainer_bound(1), 1, 2) is None


def test_steps_without_timers_are_not_measured() -> None:
    # A row without timing/step_s would read as "never waited" and retire capacity: it is skipped.
    policy = AutoscalePolicy(cfg())
    empty = StepSignals.from_metrics(0, {})
    assert empty == StepSignals(0, 0.0, 0.0, 0.0, 0.0, 0)
    assert policy.decide(empty, 3, 4) is None
    assert policy.decide(StepSignals.from_metrics(1, {}), 3, 4) is None
    assert policy.decide(trainer_bound(2), 3, 4) is None  # first measured step


def test_from_metrics_reads_the_keys() -> None:
    metrics = {"timing/step_s": 12.5, "timing/wait_rollout_s": 3.0, "rollout/generation_s_mean": 2.25,
               "rollout/env_s_mean": 0.75, "accounting/in_flight": 7.0, "other": 1.0}
    s = StepSignals.from_metrics(9, metrics)
    assert s == StepSignals(step=9, step_s=12.5, wait_rollout_s=3.0, generation_s_mean=2.25, env_s_mean=0.75,
                            in_flight=7)
    assert isinstance(s.in_flight, int)
