"""Outcome-reward advantage estimators for group-sampled RL (GRPO and relatives).

Every estimator maps one scalar reward per trajectory, plus the group each trajectory belongs to
(the `group_size` samples drawn for the same task), to one scalar advantage per trajectory. The
trainer broadcasts it over the trajectory's generated tokens.

Conventions shared by all estimators (why: these are the choices that make the numbers comparable
across estimators and that the tests pin down):

* Standard deviations are UNBIASED (Bessel's correction, divide by n - 1). This is what the GRPO
  reference implementations use (`torch.std` in TRL / veRL / OpenRLHF); the DeepSeekMath paper
  only writes "std(r)".
* `eps` is added to the std, not to the variance: ``A = (r - mean) / (std + eps)``. A group with
  identical rewards therefore gets advantage exactly 0 (numerator 0), never NaN.
* A group of size 1 has no baseline information: its advantage is 0 for every estimator (mean =
  its own reward, std taken as 0). veRL instead uses mean 0 / std 1 there; we do not, because a
  lone sample's raw reward is not a relative signal.
* `group_index` values are arbitrary integer labels (need not be contiguous or sorted).
* Results are detached (advantages are targets, never differentiated through) and float32.
"""

from __future__ import annotations

from typing import Callable, Literal, Protocol

import torch
from torch import Tensor

NormalizeBy = Literal["group", "batch"]


class AdvantageEstimator(Protocol):
    """Signature every registered estimator implements."""

    def __call__(self, rewards: Tensor, group_index: Tensor, *, normalize_by: NormalizeBy,
                 eps: float) -> Tensor: ...


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., Tensor]] = {}


def register_advantage_estimator(name: str) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Register `fn` under `name`. Re-registering the same name with another function is an error,
    so two modules cannot silently shadow each other's estimator."""

    def decorator(fn: AdvantageEstimator) -> AdvantageEstimator:
        existing = ADVANTAGE_ESTIMATORS.get(name)
        if existing is not None and existing is not fn:
            raise ValueError(f"advantage estimator {name!r} is already registered ({existing!r})")
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return decorator


def compute_advantages(name: str, rewards: Tensor, group_index: Tensor, *,
                       normalize_by: NormalizeBy = "group", eps: float = 1e-6) -> Tensor:
    """Advantages [B] for rewards [B] (float) grouped by group_index [B] (long), by estimator `name`.

    `normalize_by` only matters for estimators that divide by a std (see each estimator):
    "group" uses each group's own std, "batch" one std over the whole batch.
    """
    fn = ADVANTAGE_ESTIMATORS.get(name)
    if fn is None:
        raise ValueError(f"unknown advantage estimator {name!r}; known: {sorted(ADVANTAGE_ESTIMATORS)}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if normalize_by not in ("group", "batch"):
        raise ValueError(f"normalize_by must be 'group' or 'batch', got {normalize_by!r}")
    _check_inputs(rewards, group_index)
    with torch.no_grad():
        return fn(rewards.detach().float(), group_index, normalize_by=normalize_by, eps=eps)


def _check_inputs(rewards: Tensor, group_index: Tensor) -> None:
    if rewards.dim() != 1 or not rewards.is_floating_point():
        raise ValueError(f"rewards must be a 1-D float tensor, got shape {tuple(rewards.shape)} "
                         f"dtype {rewards.dtype}")
    if group_index.shape != rewards.shape or group_index.dtype != torch.long:
        raise ValueError(f"group_index must be a long tensor of shape {tuple(rewards.shape)}, got "
                         f"shape {tuple(group_index.shape)} dtype {group_index.dtype}")


class _GroupStats:
    """Per-sample view of its group's size, sum, mean and unbiased std (0 for groups of size 1)."""

    def __init__(self, rewards: Tensor, group_index: Tensor) -> None:
        _, inverse = torch.unique(group_index, return_inverse=True)
        num_groups = int(inverse.max().item()) + 1 if inverse.numel() else 0
        zeros = rewards.new_zeros(num_groups)
        count = zeros.index_add(0, inverse, torch.ones_like(rewards))
        total = zeros.index_add(0, inverse, rewards)
        mean = total / count.clamp(min=1)
        sq_dev = zeros.index_add(0, inverse, (rewards - mean[inverse]) ** 2)
        var = torch.where(count > 1, sq_dev / (count - 1).clamp(min=1), torch.zeros_like(sq_dev))
        self.count = count[inverse]
        self.sum = total[inverse]
        self.mean = mean[inverse]
        self.std = var.sqrt()[inverse]


def _scale(numerator: Tensor, std: Tensor, eps: float) -> Tensor:
    """numerator / (std + eps), and 0 where that denominator is 0 (eps = 0 and a flat group or
    batch, where the numerator is 0 too): a 0/0 must not become NaN."""
    den = std + eps
    return torch.where(den > 0, numerator / torch.where(den > 0, den, 1.0), 0.0)


def _batch_std(values: Tensor) -> Tensor:
    """Unbiased std over the whole batch; 0 for a batch of one."""
    if values.numel() < 2:
        return values.new_zeros(())
    return values.std(unbiased=True)


@register_advantage_estimator("grpo")
def grpo(rewards: Tensor, group_index: Tensor, *, normalize_by: NormalizeBy = "group",
         eps: float = 1e-6) -> Tensor:
    """GRPO (DeepSeekMath): ``A_i = (r_i - mean_g) / (std + eps)``.

    normalize_by="group": std = unbiased std of the rewards of i's group (standard GRPO).
    normalize_by="batch": std = unbiased std of the RAW rewards over the whole batch (all groups),
    the "group mean, batch std" of Lite PPO: a near-unanimous group is then not blown up to unit
    scale by its tiny std.
    """
    stats = _GroupStats(rewards, group_index)
    std = stats.std if normalize_by == "group" else _batch_std(rewards).expand_as(rewards)
    return _scale(rewards - stats.mean, std, eps)


@register_advantage_estimator("dr_grpo")
def dr_grpo(rewards: Tensor, group_index: Tensor, *, normalize_by: NormalizeBy = "group",
            eps: float = 1e-6) -> Tensor:
    """Dr. GRPO: ``A_i = r_i - mean_g``; no std division (it biases towards too-easy/too-hard
    questions). `normalize_by` and `eps` are ignored."""
    return rewards - _GroupStats(rewards, group_index).mean


@register_advantage_estimator("rloo")
def rloo(rewards: Tensor, group_index: Tensor, *, normalize_by: NormalizeBy = "group",
         eps: float = 1e-6) -> Tensor:
    """RLOO: ``A_i = r_i - (sum_g - r_i) / (n_g - 1)``, the mean of the OTHER samples of the group,
    so the baseline is independent of the sample it is subtracted from (unbiased gradient). Equal
    to ``n/(n-1) * (r_i - mean_g)``. 0 for groups of size 1. `normalize_by`/`eps` are ignored."""
    stats = _GroupStats(rewards, group_index)
    others = (stats.count - 1).clamp(min=1)
    baseline = (stats.sum - rewards) / others
    return torch.where(stats.count > 1, rewards - baseline, torch.zeros_like(rewards))


@register_advantage_estimator("reinforce_pp_baseline")
def reinforce_pp_baseline(rewards: Tensor, group_index: Tensor, *,
                          normalize_by: NormalizeBy = "group", eps: float = 1e-6) -> Tensor:
    """REINFORCE++-baseline: ``c_i = r_i - mean_g``, then ``A_i = c_i / (std_batch(c) + eps)``
    where std_batch is the unbiased std of the CENTRED values over the whole batch.

    Why batch and not group std: the group mean removes the per-prompt difficulty offset, the
    global std keeps the relative scale between prompts (no 1/std_g blow-up of unanimous groups).
    The mean of c over the batch is exactly 0 (every group is centred), so no re-centring is needed.
    Difference from veRL: veRL whitens token-weighted (a long response counts once per token); here
    each trajectory counts once. `normalize_by` is ignored: this estimator is batch-normalised by
    definition.
    """
    centred = rewards - _GroupStats(rewards, group_index).mean
    return _scale(centred, _batch_std(centred), eps)
