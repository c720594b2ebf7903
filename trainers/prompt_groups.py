"""Grouped prompts: each GRPO group's prompt runs once on cached keys and values, and every sample's
own tokens run on its group's cache.

The packed layout (`trainers.batching.pack_shared_prefixes`) also runs each prompt once, but as one
row per group, ``prompt, suffix_1, ..., suffix_k``, under a 4D mask: attention then computes every
pair of the row, ~(k x suffix)^2, and throws most of them away. Here the prompts run as one batch
([G, P], right-padded, keeping their keys and values), each sample's cache is its group's (selected
by index, so the prompt's gradient is the sum over the group's samples, as in the packed rows), and
the samples' own tokens run as a batch [B, S] at their own positions, seeing their prompt and
themselves only: the same context as in their own row, so the same logprobs up to float summation
order. On the 30M `trl_compare` step (8 groups x 8 samples of 36 + 32 tokens) that cuts attention
from 292 x 292 pairs per group to 36 x 36 + 8 x 32 x 68.

Logits of both passes, flattened ([G * P + B * S, V]), are gathered into the per-sample shifted
layout by `logit_index`: column t of sample i (predicting token t + 1) reads its prompt's logits
while t is inside the prompt, its own after.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor


@dataclass
class GroupedPrompts:
    prompt_ids: Tensor       # [G, P] the groups' prompts, right-padded
    prompt_mask: Tensor      # [G, P]
    input_ids: Tensor        # [B, S] each sample's tokens after its prompt, right-padded
    attention_mask: Tensor   # [B, P + S] its prompt's valid positions, then its own
    position_ids: Tensor     # [B, S] positions after its prompt's
    prompt_of_row: Tensor    # [B] which prompt (cache row) each sample continues
    logit_index: Tensor      # [B, L-1] into the flattened logits of both passes

    @property
    def model_tokens(self) -> int:
        return self.prompt_ids.numel() + self.input_ids.numel()

    def to(self, device: torch.device) -> "GroupedPrompts":
        return GroupedPrompts(*(getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)))


def group_prompts(samples: list[Any], pad_id: int, prefix_length: Callable[[Any], int],
                  width: int) -> GroupedPrompts | None:
    """The grouped layout of `samples` (TrainSamples; `width`: the padded layout's row width), or
    None when no two samples share a prompt or some sample has none."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(tuple(s.token_ids[:prefix_length(s)]), []).append(i)
    if () in groups or all(len(members) < 2 for members in groups.values()):
        return None
    prompts = list(groups)
    num_prompts, prompt_width = len(prompts), max(len(p) for p in prompts)
    own = max(1, max(len(s.token_ids) - prefix_length(s) for s in samples))
    b = len(samples)
    prompt_ids = torch.full((num_prompts, prompt_width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((num_prompts, prompt_width), dtype=torch.long)
    ids = torch.full((b, own), pad_id, dtype=torch.long)
    attn = torch.zeros((b, prompt_width + own), dtype=torch.long)
    pos = torch.zeros((b, own), dtype=torch.long)
    prompt_of_row = torch.zeros(b, dtype=torch.long)
    index = torch.zeros((b, max(1, width - 1)), dtype=torch.long)
    for g, prompt in enumerate(prompts):
        p = len(prompt)
        prompt_ids[g, :p] = torch.tensor(prompt, dtype=torch.long)
        prompt_mask[g, :p] = 1
        for i in groups[prompt]:
            tail = samples[i].token_ids[p:]
            ids[i, :len(tail)] = torch.tensor(tail, dtype=torch.long)
            attn[i, :p] = 1
            attn[i, prompt_width:prompt_width + len(tail)] = 1
            pos[i] = torch.arange(p, p + own)
            prompt_of_row[i] = g
            t = torch.arange(len(samples[i].token_ids) - 1)
            index[i, :len(t)] = torch.where(t < p, g * prompt_width + t,
                                            num_prompts * prompt_width + i * own + (t - p))
    return GroupedPrompts(prompt_ids, prompt_mask, ids, attn, pos, prompt_of_row, index)


def grouped_prompt_logits(model: Any, b: GroupedPrompts) -> Tensor:
    """Logits [B, L-1, V] in the per-sample shifted layout (position t predicts token t+1)."""
    prompts = model(input_ids=b.prompt_ids, attention_mask=b.prompt_mask, use_cache=True)
    cache = prompts.past_key_values
    cache.batch_select_indices(b.prompt_of_row)
    own = model(input_ids=b.input_ids, attention_mask=b.attention_mask, past_key_values=cache,
                use_cache=True, position_ids=b.position_ids).logits
    flat = torch.cat([prompts.logits.flatten(0, 1), own.flatten(0, 1)])
    return flat[b.logit_index]
