"""Batch shaping between rollout and training: which trajectories to train on, and how.

* `filter_zero_variance_groups`: DAPO dynamic sampling. A group whose rewards are all equal has
  advantage 0 for every trajectory under every group-baseline estimator, so it only dilutes the
  batch (and the token-mean denominator); drop it and let the sampler refill.

Truncated turns are handled where they happen (the agent loop, `env.score_truncated_turns`).
"""

from __future__ import annotations

from rollout.trajectory import Trajectory


def filter_zero_variance_groups(trajs: list[Trajectory], *, atol: float = 0.0,
                                ) -> tuple[list[Trajectory], list[Trajectory]]:
    """Split into (kept, dropped) by `group_id`; a group is dropped when max - min reward <= atol.

    Groups of one trajectory are dropped too (no variance by construction). Input order is
    preserved in both lists.
    """
    rewards: dict[str, list[float]] = {}
    for t in trajs:
        rewards.setdefault(t.group_id, []).append(t.reward)
    flat = {g for g, rs in rewards.items() if max(rs) - min(rs) <= atol}
    kept = [t for t in trajs if t.group_id not in flat]
    dropped = [t for t in trajs if t.group_id in flat]
    return kept, dropped
