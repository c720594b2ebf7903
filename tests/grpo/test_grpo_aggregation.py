"""aggregate() by hand, and exact equivalence of micro-batched loss/gradient with global normalisers."""

import pytest
import torch

from configs.schema import GRPOConfig
from trainers.grpo.aggregation import aggregate
from trainers.grpo.losses import policy_loss

NAN = float("nan")
# row 0: 3 tokens (1, 2, 3), row 1: 2 tokens (5, 6), row 2: no loss tokens (must not count)
VALUES = torch.tensor([[1.0, 2.0, 3.0, NAN], [5.0, 6.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])


def test_token_mean():
    # (1 + 2 + 3 + 5 + 6) / 5 = 3.4 ; the NaN under the mask is ignored
    assert aggregate(VALUES, MASK, "token-mean").item() == pytest.approx(3.4)
    # global normaliser replaces the local count: 17 / 10
    assert aggregate(VALUES, MASK, "token-mean", token_normalizer=10).item() == pytest.approx(1.7)


def test_seq_mean_token_mean():
    # row means 6/3 = 2 and 11/2 = 5.5, empty row excluded -> (2 + 5.5) / 2 = 3.75
    assert aggregate(VALUES, MASK, "seq-mean-token-mean").item() == pytest.approx(3.75)
    # over 5 sequences globally: 7.5 / 5
    assert aggregate(VALUES, MASK, "seq-mean-token-mean", seq_normalizer=5).item() == pytest.approx(1.5)


def test_seq_mean_token_sum_norm():
    # C = mask width 4: row sums 6/4 = 1.5, 11/4 = 2.75 -> (1.5 + 2.75) / 2 = 2.125
    assert aggregate(VALUES, MASK, "seq-mean-token-sum-norm").item() == pytest.approx(2.125)
    # C = 10: (0.6 + 1.1) / 2 = 0.85
    assert aggregate(VALUES, MASK, "seq-mean-token-sum-norm", max_response_tokens=10).item() == pytest.approx(0.85)


def test_empty_mask_gives_zero_not_nan_and_unknown_mode_raises():
    v = torch.ones(2, 3, requires_grad=True)
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        out = aggregate(v, torch.zeros(2, 3), mode)
        assert out.item() == 0.0 and out.requires_grad
    with pytest.raises(ValueError):
        aggregate(v, torch.ones(2, 3), "seq-mean-token-sum")
    with pytest.raises(ValueError):
        aggregate(v, torch.ones(2, 3), "token-mean", token_normalizer=0)


def _batch():
    torch.manual_seed(1)
    b, t = 4, 6
    lengths = torch.tensor([6, 2, 4, 3])
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    old = -torch.rand(b, t) * 2
    lp = old + torch.randn(b, t) * 0.3  # ratios spread well past the clip range
    sampler = old + torch.randn(b, t) * 0.4
    ref = old + torch.randn(b, t) * 0.2
    ent = torch.rand(b, t) * 2
    adv = torch.tensor([1.0, -0.5, 2.0, -1.5])
    return lp, old, sampler, ref, ent, adv, mask


@pytest.mark.parametrize("agg_mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batches_with_global_normalisers_equal_full_batch(agg_mode):
    lp0, old, sampler, ref, ent0, adv, mask = _batch()
    cfg = GRPOConfig(agg_mode=agg_mode, clip_high=0.28, dual_clip=2.0, kl_coef=0.05,
                     entropy_coef=0.01, importance_sampling="token_tis", is_cap=1.5,
                     max_response_tokens=8)

    lp, ent = lp0.clone().requires_grad_(True), ent0.clone().requires_grad_(True)
    full, _ = policy_loss(lp, old, adv, mask, cfg, sampler_logprobs=sampler, ref_logprobs=ref, entropy=ent)
    full.backward()

    # rows {0, 1} and {2, 3}; the second micro-batch is padded narrower (its longest row is 4),
    # as a length-bucketing packer would do
    splits = [(slice(0, 2), 6), (slice(2, 4), 4)]
    # the global counts (what trainers.batching.global_normalizers computes for the trainer):
    # loss tokens, and sequences with at least one
    tok_norm, seq_norm = float(mask.sum()), float(mask.bool().any(-1).sum())
    assert (tok_norm, seq_norm) == (15.0, 4.0)
    mlp, ment = lp0.clone().requires_grad_(True), ent0.clone().requires_grad_(True)
    total = torch.zeros(())
    for rows, w in splits:
        part, _ = policy_loss(mlp[rows, :w], old[rows, :w], adv[rows], mask[rows, :w], cfg,
                              sampler_logprobs=sampler[rows, :w], ref_logprobs=ref[rows, :w],
                              entropy=ment[rows, :w], token_normalizer=tok_norm, seq_normalizer=seq_norm)
        part.backward()
        total = total + part.detach()

    torch.testing.assert_close(total, full.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(mlp.grad, lp.grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ment.grad, ent.grad, rtol=1e-6, atol=1e-7)
    assert lp.grad.abs().sum() > 0


def test_local_normalisers_do_not_match_full_batch():
    # why the global normalisers exist: averaging two locally-normalised token-means weights the
    # micro-batches equally although they hold 8 and 7 tokens
    lp, old, _, _, _, adv, mask = _batch()
    cfg = GRPOConfig(clip_high=0.2, importance_sampling="none")
    full, _ = policy_loss(lp, old, adv, mask, cfg)
    parts = [policy_loss(lp[r], old[r], adv[r], mask[r], cfg)[0] for r in (slice(0, 2), slice(2, 4))]
    assert abs((parts[0] + parts[1]).item() / 2 - full.item()) > 1e-4
