"""Running each prompt of a micro-batch once, on cached keys and values.

The samples of a GRPO group share their prompt; a chat environment's episodes share a long system
turn (tool schemas: 64% of a protein_stability episode with the model kit's tokenizer). Either way
the shared tokens need to run only once. This layout runs the distinct prompts as one padded batch
with `use_cache`, gives every sample its prompt's keys and values (gradients flow back through
them, so a prompt's gradient is the sum over its samples, as in the padded layout), and runs each
sample's own tokens on them, right-padded, at the positions they had alone. Every token sees
exactly its own context: logprobs match the padded layout up to float summation order.

Why not one packed row per group with a 4D mask (`trainers.batching.pack_shared_prefixes`, kept for
gradient checkpointing, which turns the model's cache off): a packed row's attention covers every
pair of its tokens and masks most of them out. On trl_compare's 30M model (8 groups of 8, 36 + 32
tokens, 1 thread) attention fell from 0.38 s to 0.17 s of a 3.5 s step here.

Two choices of the shared prompt, tried in this order:
* common: the prompt every sample of the micro-batch starts with (one group), used when it saves
  at least half the padded tokens (`MIN_PREFIX_GAIN`);
* per group: each sample's own prompt (`prefix_length`, by default everything before its first
  loss token), samples with equal prompts sharing one, used when that runs fewer tokens than the
  padded layout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from trainers.batching import TrainSample

MIN_PREFIX_GAIN = 2.0  # cache a common prompt only when the padded layout runs this many times the tokens


def prompt_length(s: TrainSample) -> int:
    """Tokens before the first loss token (the prompt all samples of a group share)."""
    return next((t for t, m in enumerate(s.loss_mask) if m), len(s.token_ids))


def common_prompt_length(samples: Sequence[TrainSample]) -> int:
    """Tokens that every sample's prompt starts with: in SFT batches of different tasks of one
    environment, the system prompt (with a chat model's tool schemas, most of each prompt)."""
    shortest = min(prompt_length(s) for s in samples)
    first = samples[0].token_ids
    for t in range(shortest):
        if any(s.token_ids[t] != first[t] for s in samples):
            return t
    return shortest


def cached_prompt_length(samples: Sequence[TrainSample]) -> int:
    """The prompt common to all `samples` when running it once saves enough (`MIN_PREFIX_GAIN`), else 0."""
    shared = common_prompt_length(samples)
    if shared < 2 or shared >= min(len(s.token_ids) for s in samples):
        return 0
    padded = max(len(s.token_ids) for s in samples) * len(samples)
    return shared if padded >= MIN_PREFIX_GAIN * (padded - shared * (len(samples) - 1)) else 0


@dataclass
class PromptCache:
    """The prompts of a micro-batch and how its rows use them. The rows (`Collated.input_ids`) hold
    each sample's tokens after its prompt; their attention mask covers [prompt slots, own tokens]."""

    prompt_ids: Tensor    # [G, P] right-padded
    prompt_mask: Tensor   # [G, P]
    last: Tensor          # [G] column of each prompt's last token
    row_prompt: Tensor    # [B] each row's prompt
    first_logit: int      # the first per-sample column the logits cover
    # [B, T] into cat(last prompt logits [G], row logits [B * S]) when rows' prompts differ in
    # length; None when every row's tokens start at the same column.
    logit_index: Tensor | None = None

    @property
    def model_tokens(self) -> int:
        return self.prompt_ids.numel()

    def to(self, device: torch.device) -> PromptCache:
        index = None if self.logit_index is None else self.logit_index.to(device, non_blocking=True)
        return PromptCache(self.prompt_ids.to(device, non_blocking=True), self.prompt_mask.to(device, non_blocking=True),
                           self.last.to(device), self.row_prompt.to(device), self.first_logit, index)


def _group_by_prompt(samples: Sequence[TrainSample], lengths: list[int]) -> tuple[list[tuple[int, ...]], list[int]]:
    """(distinct prompts in order of appearance, each sample's prompt index)."""
    prompts: dict[tuple[int, ...], int] = {}
    row_prompt = [prompts.setdefault(tuple(s.token_ids[:n]), len(prompts)) for s, n in zip(samples, lengths)]
    return list(prompts), row_prompt


def cache_prompts(samples: Sequence[TrainSample], pad_id: int, per_group: bool,
                  prefix_length: Callable[[TrainSample], int] = prompt_length,
                  ) -> tuple[PromptCache, Tensor, Tensor, Tensor] | None:
    """(cache, row ids [B, S], row attention mask [B, P + S], row position ids [B, S]), or None
    when neither choice (module doc) runs fewer tokens; `per_group=False` tries the common prompt only."""
    common = cached_prompt_length(samples)
    lengths = [common] * len(samples) if common else [prefix_length(s) for s in samples]
    if not common and not per_group:
        return None
    if any(n < 1 or n >= len(s.token_ids) for s, n in zip(samples, lengths)):
        return None  # a sample with no token of its own after the prompt, or no prompt
    prompts, row_prompt = _group_by_prompt(samples, lengths)
    width = max(len(p) for p in prompts)
    suffix = max(len(s.token_ids) - n for s, n in zip(samples, lengths))
    if not common and len(prompts) * width + len(samples) * suffix >= len(samples) * max(
            len(s.token_ids) for s in samples):
        return None
    prompt_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for g, p in enumerate(prompts):
        prompt_ids[g, :len(p)] = torch.tensor(p, dtype=torch.long)
        prompt_mask[g, :len(p)] = 1
    ids = torch.full((len(samples), suffix), pad_id, dtype=torch.long)
    own_mask = torch.zeros((len(samples), suffix), dtype=torch.long)
    for i, (s, n) in enumerate(zip(samples, lengths)):
        ids[i, :len(s.token_ids) - n] = torch.tensor(s.token_ids[n:], dtype=torch.long)
        own_mask[i, :len(s.token_ids) - n] = 1
    rows = torch.tensor(row_prompt, dtype=torch.long)
    starts = torch.tensor(lengths, dtype=torch.long)
    cache = PromptCache(prompt_ids, prompt_mask, prompt_mask.sum(1) - 1, rows, int(starts.min()) - 1,
                        _logit_index(samples, starts, rows, len(prompts), suffix))
    positions = starts[:, None] + torch.arange(suffix)
    return cache, ids, torch.cat([prompt_mask[rows], own_mask], dim=1), positions


def _logit_index(samples: Sequence[TrainSample], starts: Tensor, rows: Tensor, num_prompts: int,
                 suffix: int) -> Tensor | None:
    """Where each per-sample column from `first_logit` on finds its logits (`PromptCache.logit_index`).
    Column t predicts token t+1: from the prompt's last token when t is the prompt's last column,
    from the row when t is past the prompt. Columns before a longer prompt's end and past a sample's
    end carry no loss; they point at the first prompt's logits (any finite values would do)."""
    if bool((starts == starts[0]).all()):
        return None
    first = int(starts.min()) - 1
    longest = max(len(s.token_ids) for s in samples)
    t = first + torch.arange(longest - 1 - first)
    start, end = starts[:, None], torch.tensor([len(s.token_ids) for s in samples])[:, None]
    index = torch.where(t == start - 1, rows[:, None], torch.zeros((), dtype=torch.long))
    in_row = (t >= start) & (t < end)
    row_place = num_prompts + torch.arange(len(samples))[:, None] * suffix + (t - start).clamp(min=0)
    return torch.where(in_row, row_place, index)


def cached_prompt_logits(model: Any, ids: Tensor, attention_mask: Tensor, position_ids: Tensor,
                         cache: PromptCache) -> Tensor:
    """The prompts once, each row's own tokens on its prompt's keys and values; logits [B, T, V]
    for per-sample columns `cache.first_logit` on (column t predicts token t+1)."""
    prompts = model(input_ids=cache.prompt_ids, attention_mask=cache.prompt_mask, use_cache=True)
    past = prompts.past_key_values
    past.batch_select_indices(cache.row_prompt)
    logits = model(input_ids=ids, attention_mask=attention_mask, past_key_values=past, use_cache=True,
                   position_ids=position_ids).logits
    last = prompts.logits[torch.arange(cache.prompt_ids.shape[0], device=ids.device), cache.last]  # [G, V]
    if cache.logit_index is None:
        return torch.cat([last[cache.row_prompt].unsqueeze(1), logits[:, :-1]], dim=1)
    return torch.cat([last, logits.flatten(0, 1)])[cache.logit_index]
