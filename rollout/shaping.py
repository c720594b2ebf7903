"""Batch shaping between rollout and training: which trajectories to train on, and how.

* `filter_zero_variance_groups`: DAPO dynamic sampling. A group whose rewards are all equal has
  advantage 0 for every trajectory under every group-baseline estimator, so it only dilutes the
  batch (and the token-mean denominator); drop it and let the sampler refill.
* `overlong_penalty`: DAPO soft overlong punishment, a reward term that ramps from 0 to
  -penalty_factor over the last `buffer` tokens of the budget, instead of a cliff at the budget.
* `mask_truncated`: overlong filtering. A trajectory cut off by the budget has no honest final
  reward; keep it in its group (so the group baseline is unchanged) but give it no loss.
"""

from __future__ import annotations

from collections.abc import Collection

from rollout.trajectory import FinishReason, Trajectory


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


def overlong_penalty(num_generated_tokens: int, max_tokens: int, buffer: int,
                     penalty_factor: float) -> float:
    """DAPO soft overlong punishment, added to the task reward.

    With L = num_generated_tokens, L_max = max_tokens, L_c = buffer:
    0 if L <= L_max - L_c;  -factor * (L - (L_max - L_c)) / L_c if L_max - L_c < L <= L_max;
    -factor if L > L_max. With buffer 0 it is a plain cliff past max_tokens.
    """
    if max_tokens <= 0 or buffer < 0 or buffer > max_tokens:
        raise ValueError(f"need 0 <= buffer ({buffer}) <= max_tokens ({max_tokens}) and max_tokens > 0")
    if penalty_factor < 0:
        raise ValueError(f"penalty_factor must be >= 0, got {penalty_factor}")
    start = max_tokens - buffer
    if num_generated_tokens <= start:
        return 0.0
    if num_generated_tokens > max_tokens:
        return -float(penalty_factor)
    return -penalty_factor * (num_generated_tokens - start) / buffer


def mask_truncated(trajs: list[Trajectory], *,
                   reasons: Collection[FinishReason] = ("length",)) -> list[bool]:
    """One flag per trajectory: True = zero its loss mask (overlong filtering).

    A trajectory is masked when `truncated` is set or its finish_reason is in `reasons` (by default
    "length": the token budget ran out). Flags, not a filtered list, because the trajectory must
    stay in the batch for its group's baseline.
    """
    return [t.truncated or t.finish_reason in reasons for t in trajs]
