"""k1/k2/k3, gather_logprobs and token_entropy by hand."""

import math

import pytest
import torch

from trainers.grpo.losses import gather_logprobs, kl_penalty, token_entropy

LP = torch.tensor([[-1.0, -2.0]])
REF = torch.tensor([[-1.5, -1.0]])  # d = log pi - log ref = [0.5, -1.0]


def test_kl_estimators():
    torch.testing.assert_close(kl_penalty(LP, REF, "k1"), torch.tensor([[0.5, -1.0]]))
    # d^2 / 2
    torch.testing.assert_close(kl_penalty(LP, REF, "k2"), torch.tensor([[0.125, 0.5]]))
    # exp(-d) - 1 + d: exp(-0.5) - 0.5 = 0.10653066 ; exp(1) - 2 = 0.71828183
    torch.testing.assert_close(kl_penalty(LP, REF, "k3"), torch.tensor([[0.10653066, 0.71828183]]))
    assert kl_penalty(LP, LP, "k3").abs().max().item() == 0.0
    with pytest.raises(ValueError):
        kl_penalty(LP, REF, "k4")


def test_gather_logprobs_and_entropy():
    # logits [0, ln 3] -> p = [1/4, 3/4]; log p = [-1.38629436, -0.28768207]
    # H = 0.25 * 1.38629436 + 0.75 * 0.28768207 = 0.56233514
    logits = torch.tensor([[[0.0, math.log(3)], [math.log(3), 0.0]]])
    targets = torch.tensor([[1, 1]])
    torch.testing.assert_close(gather_logprobs(logits, targets), torch.tensor([[-0.28768207, -1.38629436]]))
    torch.testing.assert_close(token_entropy(logits), torch.tensor([[0.56233514, 0.56233514]]))
    # temperature 2 on doubled logits is the same distribution
    torch.testing.assert_close(gather_logprobs(2 * logits, targets, temperature=2.0),
                               torch.tensor([[-0.28768207, -1.38629436]]))


def test_logits_fp32_chunking_and_grad():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    targets = torch.randint(0, 11, (3, 5))
    ref = torch.log_softmax(logits.double(), -1).gather(-1, targets[..., None]).squeeze(-1)
    for chunk in (1, 4, 1000):
        torch.testing.assert_close(gather_logprobs(logits, targets, chunk_rows=chunk).double(), ref)
    out = gather_logprobs(logits.bfloat16(), targets)
    assert out.dtype == torch.float32 and token_entropy(logits.bfloat16()).dtype == torch.float32
    x = logits.clone().requires_grad_(True)
    (gather_logprobs(x, targets, chunk_rows=4).sum() + token_entropy(x, chunk_rows=4).sum()).backward()
    assert torch.isfinite(x.grad).all()


def test_checkpointed_chunks_give_the_unchunked_gradient():
    """Chunks are recomputed in backward (not saved): values and gradients must not change."""
    torch.manual_seed(0)
    x = torch.randn(3, 50, 37, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 37, (3, 50))
    w = torch.randn(3, 50, dtype=torch.float64)
    logp, ent = gather_logprobs(x, targets, temperature=0.7, chunk_rows=16), token_entropy(x, temperature=0.7, chunk_rows=16)
    grad = torch.autograd.grad(((logp + ent) * w).sum(), x)[0]
    full = torch.log_softmax(x.float() / 0.7, -1)
    ref_logp, ref_ent = full.gather(-1, targets[..., None]).squeeze(-1), -(full.exp() * full).sum(-1)
    ref_grad = torch.autograd.grad(((ref_logp + ref_ent) * w).sum(), x)[0]
    torch.testing.assert_close(logp, ref_logp)
    torch.testing.assert_close(ent, ref_ent)
    torch.testing.assert_close(grad, ref_grad)
