"""policy_loss: clipping, dual clip, KL / entropy terms, importance sampling, on-policy identity.

Convention in these tests: old_logprobs = 0, so logprobs = log(r) sets the PPO ratio r directly,
and sampler_logprobs = -log(rho) sets the importance ratio rho = exp(old - sampler).
"""

import math

import pytest
import torch

from configs.schema import GRPOConfig
from trainers.grpo.losses import policy_loss


def loss_cfg(**overrides) -> GRPOConfig:
    """The `grpo` section with a symmetric 0.2 clip and no sampler correction unless overridden
    (the hand-computed values below assume them; the section's defaults are 0.28 and token_tis)."""
    return GRPOConfig(**{"clip_high": 0.2, "importance_sampling": "none", **overrides})

ONES = torch.ones(2, 3)
# row 0 has A = +1, row 1 has A = -1
ADV = torch.tensor([1.0, -1.0])
RATIOS = torch.tensor([[1.5, 1.1, 0.5], [0.5, 0.9, 1.5]])


def leaf(ratios: torch.Tensor) -> torch.Tensor:
    return ratios.log().clone().requires_grad_(True)


def run(cfg: GRPOConfig, ratios: torch.Tensor = RATIOS, adv: torch.Tensor = ADV,
        mask: torch.Tensor = ONES, **kw):
    lp = leaf(ratios)
    loss, metrics = policy_loss(lp, torch.zeros_like(lp), adv, mask, cfg, **kw)
    loss.backward()
    return loss, metrics, lp.grad


def test_symmetric_clip_values_fractions_and_gradient():
    # clip range [0.8, 1.2]. Per token l = max(-A r, -A clip(r)):
    # row 0 (A=+1): r=1.5 -> max(-1.5, -1.2) = -1.2 (upper clip active); r=1.1 -> -1.1; r=0.5 -> max(-0.5, -0.8) = -0.5
    # row 1 (A=-1): r=0.5 -> max(0.5, 0.8) = 0.8 (lower clip active); r=0.9 -> 0.9; r=1.5 -> max(1.5, 1.2) = 1.5
    # token-mean = (-1.2 - 1.1 - 0.5 + 0.8 + 0.9 + 1.5) / 6 = 0.4 / 6
    loss, m, grad = run(loss_cfg())
    assert loss.item() == pytest.approx(0.4 / 6)
    assert m["loss"] == pytest.approx(0.4 / 6) and m["pg_loss"] == pytest.approx(0.4 / 6)
    assert m["pg_clipfrac_high"] == pytest.approx(1 / 6)
    assert m["pg_clipfrac_low"] == pytest.approx(1 / 6)
    assert m["dual_clip_frac"] == 0.0
    # d(-A r)/d log r = -A r, over 6 tokens; clipped tokens get 0
    expected = torch.tensor([[0.0, -1.1, -0.5], [0.0, 0.9, 1.5]]) / 6
    torch.testing.assert_close(grad, expected)


def test_clip_higher_is_asymmetric():
    # clip_high 0.28: row 0 r=1.5 -> max(-1.5, -1.28) = -1.28 ; everything else unchanged
    # (-1.28 - 1.1 - 0.5 + 0.8 + 0.9 + 1.5) / 6 = 0.32 / 6
    loss, m, _ = run(loss_cfg(clip_high=0.28))
    assert loss.item() == pytest.approx(0.32 / 6)
    # clip_low 0.6: range [0.4, 1.2] -> r=0.5 with A<0 is inside the range, no lower clipping
    _, m, _ = run(loss_cfg(clip_low=0.6))
    assert m["pg_clipfrac_low"] == 0.0 and m["pg_clipfrac_high"] == pytest.approx(1 / 6)


def test_dual_clip_bounds_negative_advantage_loss():
    # c = 1.4: row 1 r=1.5 (A=-1): l = min(1.5, -A c = 1.4) = 1.4, dual clip active, gradient 0
    # (-1.2 - 1.1 - 0.5 + 0.8 + 0.9 + 1.4) / 6 = 0.3 / 6
    loss, m, grad = run(loss_cfg(dual_clip=1.4))
    assert loss.item() == pytest.approx(0.3 / 6)
    assert m["dual_clip_frac"] == pytest.approx(1 / 6)
    assert grad[1, 2].item() == 0.0
    # the positive-advantage row is never dual-clipped: r=1.5 with A=+1 stays at the upper clip
    assert grad[0, 1].item() == pytest.approx(-1.1 / 6)


def test_approx_kl_is_k3_of_old_vs_current():
    # r = 1.5 everywhere: k3 = r - 1 - log r = 0.5 - 0.40546511 = 0.09453489
    _, m, _ = run(loss_cfg(), ratios=torch.full((2, 3), 1.5))
    assert m["approx_kl"] == pytest.approx(0.5 - math.log(1.5))


@pytest.mark.parametrize("agg_mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_on_policy_is_vanilla_policy_gradient(agg_mode):
    # logprobs == old == sampler: r = 1 exactly, nothing clipped, approx_kl 0, IS weights 1, and
    # the gradient is the REINFORCE gradient of -A log pi aggregated the same way.
    torch.manual_seed(0)
    base = -torch.rand(3, 4) * 3
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    adv = torch.tensor([0.7, -1.3, 0.2])
    cfg = loss_cfg(agg_mode=agg_mode, importance_sampling="token_tis", dual_clip=3.0)
    lp = base.clone().requires_grad_(True)
    loss, m = policy_loss(lp, base.clone(), adv, mask, cfg, sampler_logprobs=base.clone())
    loss.backward()
    assert m["approx_kl"] == 0.0
    assert m["pg_clipfrac_low"] == m["pg_clipfrac_high"] == m["dual_clip_frac"] == 0.0
    assert m["is_ratio_min"] == m["is_ratio_max"] == m["is_ratio_mean"] == 1.0
    assert m["token_mult_prob_error"] == 1.0 and m["sampler_logprob_diff_max"] == 0.0

    vlp = base.clone().requires_grad_(True)
    n = mask.sum(-1).float()  # tokens per row: 3, 2, 4
    per_tok = -(adv[:, None] * vlp) * mask
    if agg_mode == "token-mean":
        vpg = per_tok.sum() / 9
        expected_loss = -(0.7 * 3 - 1.3 * 2 + 0.2 * 4) / 9  # r = 1 -> loss = -sum(A n) / N
    elif agg_mode == "seq-mean-token-mean":
        vpg = (per_tok.sum(-1) / n).mean()
        expected_loss = -(0.7 - 1.3 + 0.2) / 3
    else:
        vpg = (per_tok.sum(-1) / 4).mean()  # C = mask width 4
        expected_loss = -(0.7 * 3 / 4 - 1.3 * 2 / 4 + 0.2 * 4 / 4) / 3
    vpg.backward()
    assert loss.item() == pytest.approx(expected_loss)
    torch.testing.assert_close(lp.grad, vlp.grad)


def test_token_tis_caps_weights_and_reports_mismatch():
    # rho = [0.5, 1, 4], cap 2 -> weights [0.5, 1, 2]; on-policy ratio 1, A = +1
    # token-mean loss = -(0.5 + 1 + 2) / 3 = -3.5/3 ; gradient -w/3
    rho = torch.tensor([[0.5, 1.0, 4.0]])
    cfg = loss_cfg(importance_sampling="token_tis", is_cap=2.0)
    loss, m, grad = run(cfg, ratios=torch.ones(1, 3), adv=torch.tensor([1.0]), mask=torch.ones(1, 3),
                        sampler_logprobs=-rho.log())
    assert loss.item() == pytest.approx(-3.5 / 3)
    torch.testing.assert_close(grad, torch.tensor([[-0.5, -1.0, -2.0]]) / 3)
    assert m["is_ratio_min"] == pytest.approx(0.5) and m["is_ratio_max"] == pytest.approx(4.0)
    assert m["is_ratio_mean"] == pytest.approx((0.5 + 1 + 4) / 3)
    assert m["is_capped_frac"] == pytest.approx(1 / 3) and m["is_masked_frac"] == 0.0
    # |old - sampler| = |log rho| = [0.69314718, 0, 1.38629436]
    assert m["sampler_logprob_diff_mean"] == pytest.approx(math.log(2))
    assert m["sampler_logprob_diff_max"] == pytest.approx(math.log(4))
    # NeMo RL: mean of exp(|diff|) = (2 + 1 + 4) / 3
    assert m["token_mult_prob_error"] == pytest.approx(7 / 3)
    # "none" still reports the metrics but does not reweight: loss = -(1+1+1)/3
    loss, m, _ = run(loss_cfg(), ratios=torch.ones(1, 3), adv=torch.tensor([1.0]),
                     mask=torch.ones(1, 3), sampler_logprobs=-rho.log())
    assert loss.item() == pytest.approx(-1.0) and m["token_mult_prob_error"] == pytest.approx(7 / 3)


def test_seq_mask_drops_far_off_policy_sequences():
    # threshold 2 -> keep a sequence iff exp(mean log rho) in [0.5, 2]:
    # row 0: log rho [0.1, 0.3], mean 0.2 -> 1.22 kept ; row 1: [1.0, 0.6], mean 0.8 -> 2.23 masked
    # row 2: [-1.0, -0.6], mean -0.8 -> 0.45 masked. A = +1, r = 1:
    # token-mean, masked tokens still count: -(1 + 1) / 6 = -1/3
    log_rho = torch.tensor([[0.1, 0.3], [1.0, 0.6], [-1.0, -0.6]])
    cfg = loss_cfg(importance_sampling="seq_mask", seq_mask_threshold=2.0)
    loss, m, grad = run(cfg, ratios=torch.ones(3, 2), adv=torch.ones(3), mask=torch.ones(3, 2),
                        sampler_logprobs=-log_rho)
    assert loss.item() == pytest.approx(-1 / 3)
    assert m["is_masked_frac"] == pytest.approx(4 / 6)
    assert grad[1:].abs().sum().item() == 0.0


def test_kl_and_entropy_terms():
    # A = 0 and r = 1, so only the extra terms remain.
    # d = logprobs - ref = [0.5, -1.0]; k2 = [0.125, 0.5]; kl_coef 0.5, token-mean -> 0.5 * 0.3125
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]])
    ent = torch.tensor([[1.0, 3.0]], requires_grad=True)
    cfg = loss_cfg(kl_coef=0.5, kl_estimator="k2", entropy_coef=0.1)
    loss, m = policy_loss(lp, lp.detach().clone(), torch.zeros(1), torch.ones(1, 2), cfg,
                          ref_logprobs=ref, entropy=ent)
    # 0.15625 - 0.1 * mean(entropy) = 0.15625 - 0.2
    assert loss.item() == pytest.approx(0.15625 - 0.2)
    assert m["kl_ref"] == pytest.approx(0.3125) and m["entropy"] == pytest.approx(2.0)
    loss.backward()
    # d(0.5 * mean(d^2/2))/d lp = 0.5 * d / 2 = [0.125, -0.25]; entropy bonus gradient -0.1/2 each
    torch.testing.assert_close(lp.grad, torch.tensor([[0.125, -0.25]]))
    torch.testing.assert_close(ent.grad, torch.tensor([[-0.05, -0.05]]))


def test_padding_garbage_never_reaches_loss_or_gradient():
    lp = torch.tensor([[-1.0, float("-inf")]], requires_grad=True)
    old = torch.tensor([[-1.0, float("nan")]])
    cfg = loss_cfg(importance_sampling="token_tis", kl_coef=0.1)
    loss, m = policy_loss(lp, old, torch.tensor([2.0]), torch.tensor([[1, 0]]), cfg,
                          sampler_logprobs=torch.tensor([[-1.0, float("inf")]]),
                          ref_logprobs=torch.tensor([[-1.0, float("nan")]]))
    loss.backward()
    assert loss.item() == pytest.approx(-2.0)
    assert torch.isfinite(lp.grad).all() and lp.grad[0, 1].item() == 0.0
    assert all(math.isfinite(v) for v in m.values())


def test_missing_inputs_raise():
    lp = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="sampler_logprobs"):
        policy_loss(lp, lp, torch.zeros(1), torch.ones(1, 2), loss_cfg(importance_sampling="seq_mask"))
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(lp, lp, torch.zeros(1), torch.ones(1, 2), loss_cfg(kl_coef=0.1))
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(lp, lp, torch.zeros(1), torch.ones(1, 2), loss_cfg(entropy_coef=0.1))
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(lp, lp, torch.zeros(3), torch.ones(1, 2), loss_cfg())


def test_token_level_advantages_accepted():
    # [B, T] advantages: A = [[1, -1]], r = 1 -> token-mean -(1 - 1)/2 = 0, gradient [-1/2, 1/2]
    lp = torch.zeros(1, 2, requires_grad=True)
    loss, _ = policy_loss(lp, torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2),
                          loss_cfg())
    loss.backward()
    assert loss.item() == 0.0
    torch.testing.assert_close(lp.grad, torch.tensor([[-0.5, 0.5]]))


def test_empty_mask_gives_zero_loss_and_neutral_metrics():
    lp = torch.zeros(2, 3, requires_grad=True)
    cfg = loss_cfg(importance_sampling="seq_mask", agg_mode="seq-mean-token-mean")
    loss, m = policy_loss(lp, torch.zeros(2, 3), torch.ones(2), torch.zeros(2, 3), cfg,
                          sampler_logprobs=torch.ones(2, 3))
    loss.backward()
    assert loss.item() == 0.0 and lp.grad.abs().sum().item() == 0.0
    assert m["num_tokens"] == 0.0 and m["token_mult_prob_error"] == 1.0 and m["is_ratio_min"] == 1.0
    assert all(math.isfinite(v) for v in m.values())
