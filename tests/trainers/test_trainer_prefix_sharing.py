"""Packed shared prompts (`collate(..., share_prefix_tokens=N)`) give the padded layout's logprobs
and gradients: each suffix sees its prompt and itself, at its own positions."""

from __future__ import annotations

import random

import pytest
import torch

from trainers.batching import MicroBatch, TrainSample, collate, shifted_logits
from trainers.grpo.losses import gather_logprobs


def group_samples(seed: int, groups: int, size: int) -> list[TrainSample]:
    """GRPO-shaped: `groups` prompts (mask 0), `size` different completions (mask 1) each."""
    rng = random.Random(seed)
    out = []
    for _ in range(groups):
        prompt = [rng.randint(7, 99) for _ in range(rng.randint(3, 9))]
        for _ in range(size):
            n = rng.randint(1, 12)
            out.append(TrainSample(prompt + [rng.randint(7, 99) for _ in range(n)],
                                   [0] * len(prompt) + [1] * n, [0.0] * (len(prompt) + n), rng.gauss(0, 1)))
    rng.shuffle(out)
    return out


def test_packing_layout_and_fallbacks():
    samples = group_samples(0, 3, 4)
    c = collate(MicroBatch(samples), pad_id=0, share_prefix_tokens=1024)
    assert c.logit_index is not None and c.input_ids.shape[0] == 3  # one row per prompt
    assert c.input_ids.numel() < len(samples) * max(len(s.token_ids) for s in samples)
    plain = collate(MicroBatch(samples), pad_id=0)
    for name in ("target_ids", "mask", "sampler_logprobs", "advantages"):
        assert torch.equal(getattr(c, name), getattr(plain, name))
    # A row cap below two suffixes: rows repeat the prompt; too small to save anything: unpacked.
    assert collate(MicroBatch(samples), 0, share_prefix_tokens=1).logit_index is None
    distinct = group_samples(1, 4, 1)
    assert collate(MicroBatch(distinct), 0, share_prefix_tokens=1024).logit_index is None


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("row_cap", [1024, 30])
def test_packed_logprobs_and_gradients_match_padded(tiny_model_dir, attn, row_cap):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attn)
    samples = group_samples(2, 3, 5)
    results = []
    for cap in (0, row_cap):
        b = collate(MicroBatch(samples), model.config.pad_token_id, share_prefix_tokens=cap)
        assert (b.logit_index is None) == (cap == 0)
        model.zero_grad()
        lp = gather_logprobs(shifted_logits(model, b, attn, torch.float32), b.target_ids)
        (-(lp * b.mask * b.advantages[:, None]).sum()).backward()
        results.append((lp.detach() * b.mask, [p.grad.clone() for p in model.parameters()]))
    (lp0, g0), (lp1, g1) = results
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=1e-5)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def system_prompted(seed: int, groups: int, size: int, system_tokens: int = 40) -> list[TrainSample]:
    """Chat-shaped: every sample starts with one long system prompt, then its group's question."""
    system = [(11 * i) % 90 + 7 for i in range(system_tokens)]
    return [TrainSample(system + s.token_ids, [0] * system_tokens + s.loss_mask,
                        [0.0] * system_tokens + s.sampler_logprobs, s.advantage)
            for s in group_samples(seed, groups, size)]


def test_a_prompt_common_to_the_micro_batch_is_cached_only_where_it_halves_the_tokens():
    samples = system_prompted(3, 3, 4)
    c = collate(MicroBatch(samples), 0, share_prefix_tokens=1024, cache_prompt=True)
    assert c.cached_prefix >= 40 and c.logit_index is None and c.first_logit == c.cached_prefix - 1
    assert 2 * c.model_tokens <= c.input_ids.numel()
    wide = torch.randn(len(samples), c.input_ids.shape[1] - 1 - c.first_logit)
    assert c.full_width(wide).shape == c.target_ids.shape and not c.full_width(wide)[:, : c.first_logit].any()
    # A short common prompt saves too little: the packed (or padded) layout, as before.
    assert collate(MicroBatch(group_samples(3, 3, 4)), 0, cache_prompt=True).cached_prefix == 0
    assert collate(MicroBatch(samples), 0).cached_prefix == 0  # only when asked


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cached_prompt_logprobs_and_gradients_match_padded(tiny_model_dir, attn):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attn)
    samples = system_prompted(4, 3, 5)
    results = []
    for cache in (False, True):
        b = collate(MicroBatch(samples), model.config.pad_token_id, cache_prompt=cache)
        assert bool(b.cached_prefix) == cache
        model.zero_grad()
        lp = b.full_width(gather_logprobs(shifted_logits(model, b, attn, torch.float32),
                                          b.from_first_logit(b.target_ids)))
        (-(lp * b.mask * b.advantages[:, None]).sum()).backward()
        results.append((lp.detach() * b.mask, [p.grad.clone() for p in model.parameters()]))
    (lp0, g0), (lp1, g1) = results
    assert lp0.abs().sum() > 0
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=1e-5)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
