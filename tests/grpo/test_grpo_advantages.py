"""Advantage estimators against hand-computed numbers (arithmetic in the comments)."""

import math

import pytest
import torch

from trainers.grpo.advantages import (ADVANTAGE_ESTIMATORS, compute_advantages,
                                      register_advantage_estimator)

R2 = torch.tensor([1.0, 0.0, 0.0, 1.0])
G2 = torch.tensor([0, 0, 1, 1])
# Group labels 7 and 2 on purpose: labels need not be contiguous or sorted.
R5 = torch.tensor([3.0, 1.0, 2.0, 5.0, 5.0])
G5 = torch.tensor([7, 7, 7, 2, 2])


def close(actual: torch.Tensor, expected: list[float], tol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), rtol=0, atol=tol)


def test_grpo_pairs():
    # group 0 = [1, 0]: mean 0.5, unbiased var ((0.5)^2 + (0.5)^2) / (2 - 1) = 0.5, std = 0.70710678
    # A = +-0.5 / 0.70710678 = +-0.70710678 ; group 1 = [0, 1] mirrors it
    close(compute_advantages("grpo", R2, G2, eps=0.0), [0.70710678, -0.70710678, -0.70710678, 0.70710678])


def test_grpo_group_std_and_flat_group():
    # group 7 = [3, 1, 2]: mean 2, deviations (1, -1, 0), unbiased var (1 + 1 + 0) / 2 = 1, std 1
    # group 2 = [5, 5]: deviations 0 -> A = 0 / (0 + eps) = 0, never NaN
    close(compute_advantages("grpo", R5, G5, eps=0.0), [1.0, -1.0, 0.0, 0.0, 0.0])


def test_grpo_eps_is_added_to_std():
    # [1, 0]: std 0.70710678, eps 0.5 -> 0.5 / 1.20710678 = 0.41421356
    close(compute_advantages("grpo", torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), eps=0.5),
          [0.41421356, -0.41421356])


def test_grpo_batch_std():
    # group means as above; the std is over ALL raw rewards [3, 1, 2, 5, 5]:
    # mean 16/5 = 3.2, squared deviations .04 + 4.84 + 1.44 + 3.24 + 3.24 = 12.8, /4 = 3.2,
    # std = sqrt(3.2) = 1.78885438 -> A = (1, -1, 0, 0, 0) / 1.78885438 = +-0.55901699
    close(compute_advantages("grpo", R5, G5, normalize_by="batch", eps=0.0),
          [0.55901699, -0.55901699, 0.0, 0.0, 0.0])


def test_singleton_group_gets_zero_advantage():
    for name in ADVANTAGE_ESTIMATORS:
        out = compute_advantages(name, torch.tensor([4.0, 1.0, 0.0]), torch.tensor([0, 1, 1]))
        assert out[0].item() == 0.0, name


def test_dr_grpo_no_std():
    # reward - group mean: [1-.5, 0-.5, 0-.5, 1-.5]; [3-2, 1-2, 2-2, 5-5, 5-5]
    close(compute_advantages("dr_grpo", R2, G2), [0.5, -0.5, -0.5, 0.5])
    close(compute_advantages("dr_grpo", R5, G5, normalize_by="batch"), [1.0, -1.0, 0.0, 0.0, 0.0])


def test_rloo_leave_one_out():
    # pairs: the baseline is the other sample: 1 - 0 = 1, 0 - 1 = -1
    close(compute_advantages("rloo", R2, G2), [1.0, -1.0, -1.0, 1.0])
    # group 7: 3 - (1+2)/2 = 1.5 ; 1 - (3+2)/2 = -1.5 ; 2 - (3+1)/2 = 0 ; group 2: 5 - 5 = 0
    close(compute_advantages("rloo", R5, G5), [1.5, -1.5, 0.0, 0.0, 0.0])


def test_reinforce_pp_baseline_batch_std_of_centred():
    # centred = [1, -1, 0, 0, 0] (mean 0); unbiased var (1 + 1) / 4 = 0.5, std 0.70710678
    # A = centred / 0.70710678 = [1.41421356, -1.41421356, 0, 0, 0]
    # (differs from grpo/batch, 0.559, which takes the std of the raw rewards)
    close(compute_advantages("reinforce_pp_baseline", R5, G5, eps=0.0), [1.41421356, -1.41421356, 0.0, 0.0, 0.0])
    # pairs: centred [.5, -.5, -.5, .5], var 4 * .25 / 3 = 1/3, std 0.57735027 -> +-0.8660254
    close(compute_advantages("reinforce_pp_baseline", R2, G2, eps=0.0), [0.8660254, -0.8660254, -0.8660254, 0.8660254])


def test_unknown_estimator_lists_known_names():
    with pytest.raises(ValueError) as info:
        compute_advantages("ppo_gae", R2, G2)
    for name in ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"):
        assert name in str(info.value)


def test_bad_inputs():
    with pytest.raises(ValueError):
        compute_advantages("grpo", R2, G2.float())
    with pytest.raises(ValueError):
        compute_advantages("grpo", R2.view(2, 2), G2.view(2, 2))
    with pytest.raises(ValueError):
        compute_advantages("grpo", R2, G2, normalize_by="token")


def test_register_custom_estimator_and_conflict():
    @register_advantage_estimator("_test_const")
    def const(rewards, group_index, *, normalize_by, eps):
        return torch.full_like(rewards, math.pi)

    try:
        close(compute_advantages("_test_const", R2, G2), [math.pi] * 4)
        with pytest.raises(ValueError):
            register_advantage_estimator("_test_const")(lambda r, g, **kw: r)
    finally:
        ADVANTAGE_ESTIMATORS.pop("_test_const")


def test_advantages_are_detached():
    rewards = R2.clone().requires_grad_(True)
    assert not compute_advantages("grpo", rewards, G2).requires_grad
