"""Shared prompts run once, packed into rows (`collate(..., share_prefix_tokens=N)`) or on cached keys
and values (`cache_prompt=True`), give the padded layout's logprobs and gradients: each sample's own
tokens see its prompt and themselves, at their own positions."""

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


def logprobs_and_grads(model, b, attn):
    """The sample-layout logprobs (loss tokens) of one collated batch and the gradients of a GRPO-shaped loss."""
    model.zero_grad()
    lp = b.full_width(gather_logprobs(shifted_logits(model, b, attn, torch.float32), b.from_first_logit(b.target_ids)))
    (-(lp * b.mask * b.advantages[:, None]).sum()).backward()
    return lp.detach() * b.mask, [p.grad.clone() for p in model.parameters()]


def assert_same_logprobs_and_grads(results):
    (lp0, g0), (lp1, g1) = results
    assert lp0.abs().sum() > 0
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=1e-5)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


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
        results.append(logprobs_and_grads(model, b, attn))
    assert_same_logprobs_and_grads(results)


def system_prompted(seed: int, groups: int, size: int, system_tokens: int = 40) -> list[TrainSample]:
    """Chat-shaped: every sample starts with one long system prompt, then its group's question."""
    system = [(11 * i) % 90 + 7 for i in range(system_tokens)]
    return [TrainSample(system + s.token_ids, [0] * system_tokens + s.loss_mask,
                        [0.0] * system_tokens + s.sampler_logprobs, s.advantage)
            for s in group_samples(seed, groups, size)]


def test_a_prompt_common_to_the_micro_batch_is_cached_only_where_it_halves_the_tokens():
    samples = system_prompted(3, 3, 4)
    c = collate(MicroBatch(samples), 0, share_prefix_tokens=1024, cache_prompt=True)
    pc = c.prompt_cache
    assert pc is not None and pc.prompt_ids.shape[0] == 1 and pc.prompt_ids.shape[1] >= 40
    assert pc.logit_index is None and c.first_logit == pc.prompt_ids.shape[1] - 1
    assert 2 * c.model_tokens <= len(samples) * max(len(s.token_ids) for s in samples)
    wide = torch.randn(len(samples), c.target_ids.shape[1] - c.first_logit)
    assert c.full_width(wide).shape == c.target_ids.shape and not c.full_width(wide)[:, : c.first_logit].any()
    # A short common prompt saves too little: the padded layout, unless groups may share theirs.
    assert collate(MicroBatch(group_samples(3, 3, 4)), 0, cache_prompt=True).prompt_cache is None
    assert collate(MicroBatch(samples), 0).prompt_cache is None  # only when asked


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cached_prompt_logprobs_and_gradients_match_padded(tiny_model_dir, attn):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attn)
    samples = system_prompted(4, 3, 5)
    results = []
    for cache in (False, True):
        b = collate(MicroBatch(samples), model.config.pad_token_id, cache_prompt=cache)
        assert (b.prompt_cache is not None) == cache
        results.append(logprobs_and_grads(model, b, attn))
    assert_same_logprobs_and_grads(results)


def test_each_groups_prompt_is_cached_once():
    samples = group_samples(5, 3, 4)  # prompts of 3-9 tokens: rows start at different columns
    c = collate(MicroBatch(samples), 0, share_prefix_tokens=1024, cache_prompt=True)
    pc = c.prompt_cache
    assert pc is not None and pc.prompt_ids.shape[0] == 3 and pc.logit_index is not None
    assert c.model_tokens < len(samples) * max(len(s.token_ids) for s in samples)
    assert c.first_logit == min(int(n) for n in pc.last)  # the shortest prompt's last column
    # Every sample's prompt is its group's: same tokens, and it is where the sample begins.
    for s, g in zip(samples, pc.row_prompt.tolist()):
        n = int(pc.last[g]) + 1
        assert pc.prompt_ids[g, :n].tolist() == s.token_ids[:n] and s.loss_mask[n] == 1 and not any(s.loss_mask[:n])
    # No two samples share a prompt: nothing to save, the padded layout.
    distinct = group_samples(6, 4, 1)
    assert collate(MicroBatch(distinct), 0, share_prefix_tokens=1024, cache_prompt=True).prompt_cache is None


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("equal_prompts", [False, True])
def test_group_prompt_cache_logprobs_and_gradients_match_padded(tiny_model_dir, attn, equal_prompts):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attn)
    samples = group_samples(7, 3, 5)
    if equal_prompts:  # every prompt cut to the shortest: rows all start at one column
        shortest = min(s.loss_mask.index(1) for s in samples)
        samples = [TrainSample(s.token_ids[s.loss_mask.index(1) - shortest:], s.loss_mask[s.loss_mask.index(1) - shortest:],
                               s.sampler_logprobs[s.loss_mask.index(1) - shortest:], s.advantage) for s in samples]
    results = []
    for cache in (False, True):
        b = collate(MicroBatch(samples), model.config.pad_token_id, share_prefix_tokens=1024 if cache else 0,
                    cache_prompt=cache)
        assert (b.prompt_cache is not None) == cache
        if cache:
            assert (b.prompt_cache.logit_index is None) == equal_prompts
        results.append(logprobs_and_grads(model, b, attn))
    assert_same_logprobs_and_grads(results)
