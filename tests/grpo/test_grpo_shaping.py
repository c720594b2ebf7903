"""rollout.shaping: dynamic-sampling filter, DAPO overlong penalty, truncation masking."""

import pytest

from rollout.shaping import filter_zero_variance_groups, mask_truncated, overlong_penalty
from rollout.trajectory import Trajectory


def traj(group: str, reward: float, finish: str = "stop", truncated: bool = False) -> Trajectory:
    return Trajectory(task_id=f"{group}-{reward}", group_id=group, env_name="t", token_ids=[1, 2],
                      loss_mask=[0, 1], sampler_logprobs=[0.0, -0.5], reward=reward,
                      reward_reason="correct" if reward > 0 else "wrong", finish_reason=finish,
                      policy_versions=[0], truncated=truncated)


def test_filter_zero_variance_groups_keeps_order():
    trajs = [traj("a", 1), traj("b", 0), traj("a", 0), traj("b", 0), traj("c", 1), traj("c", 1), traj("d", 1)]
    kept, dropped = filter_zero_variance_groups(trajs)
    assert [t.group_id for t in kept] == ["a", "a"]
    assert [t.group_id for t in dropped] == ["b", "b", "c", "c", "d"]  # d: singleton
    kept, _ = filter_zero_variance_groups([traj("a", 1.0), traj("a", 1.05)], atol=0.1)
    assert kept == []


def test_overlong_penalty():
    # max 100, buffer 20: 0 up to 80, then -(L - 80) / 20, -1 past 100 (times the factor)
    assert overlong_penalty(0, 100, 20, 1.0) == 0.0
    assert overlong_penalty(80, 100, 20, 1.0) == 0.0
    assert overlong_penalty(90, 100, 20, 1.0) == pytest.approx(-0.5)
    assert overlong_penalty(95, 100, 20, 2.0) == pytest.approx(-1.5)
    assert overlong_penalty(100, 100, 20, 1.0) == pytest.approx(-1.0)
    assert overlong_penalty(150, 100, 20, 1.0) == -1.0
    assert overlong_penalty(100, 100, 0, 1.0) == 0.0 and overlong_penalty(101, 100, 0, 1.0) == -1.0
    with pytest.raises(ValueError):
        overlong_penalty(10, 100, 200, 1.0)


def test_mask_truncated():
    trajs = [traj("a", 1), traj("a", 0, finish="length"), traj("a", 0, truncated=True), traj("a", 0, finish="timeout")]
    assert mask_truncated(trajs) == [False, True, True, False]
    assert mask_truncated(trajs, reasons=("length", "timeout")) == [False, True, True, True]
