"""Reducing a [B, T] per-token loss to a scalar, exactly, across micro-batches and ranks.

Modes (m = mask, l = per-token loss, n_i = sum_t m_it, S = sequences with n_i > 0):

* "token-mean"               sum_it m l / N,  N = sum_i n_i                   (DAPO: every token
                             weighs the same, long answers are not diluted)
* "seq-mean-token-mean"      (1/|S|) sum_{i in S} (sum_t m l) / n_i           (original GRPO)
* "seq-mean-token-sum-norm"  (1/|S|) sum_{i in S} (sum_t m l) / C             (Dr. GRPO: a
                             constant C instead of n_i removes the length bias; C defaults to the
                             mask width T, better set to the generation budget)

These match veRL's current definitions, except that veRL's seq-mean denominator is the number of
rows while ours is the number of rows with at least one loss token (padding rows and fully masked
trajectories do not dilute the mean).

Exactness across micro-batches / data-parallel ranks. The full-batch loss is a sum over sequences
divided by a batch-wide count (N or |S|). Passing that GLOBAL count as `token_normalizer` (token-mean)
or `seq_normalizer` (both seq-mean modes) makes each micro-batch return its exact share, so
``sum over every micro-batch on every rank == full-batch loss`` (and the same for gradients). The
trainer counts them once on the driver over the whole mini-batch
(`trainers.batching.global_normalizers`) and hands every rank the same values. For
seq-mean-token-sum-norm also pass a constant `max_response_tokens`: the default C (local mask
width) changes with each micro-batch's padding.
Then scale for what the framework averages: DDP/DeepSpeed average gradients over the R
data-parallel ranks, and DeepSpeed's ``engine.backward`` also divides by gradient_accumulation_steps
G, so back-propagate ``loss * R * G`` under DeepSpeed (``loss * R`` under plain DDP with manual
accumulation) to obtain exactly the full-batch gradient. A row must be one trajectory: packing
several trajectories into one row breaks the per-sequence modes (unpack, or use token-mean).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
AGG_MODES: tuple[str, ...] = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `values` where mask is set. Uses `where`, not multiplication, so inf/NaN at
    masked-out positions (padding) cannot leak into the result."""
    kept = torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))
    return kept.sum() if dim is None else kept.sum(dim)


def aggregate(values: Tensor, mask: Tensor, mode: AggMode, *, token_normalizer: float | None = None,
              seq_normalizer: float | None = None, max_response_tokens: int | None = None) -> Tensor:
    """Scalar reduction of `values` [B, T] over `mask` [B, T] per `mode` (see module docstring).

    Without normalizers the local counts are used (an empty mask gives 0, still attached to the
    graph). `token_normalizer` is read only by token-mean, `seq_normalizer` only by the seq modes.
    """
    if values.shape != mask.shape or values.dim() != 2:
        raise ValueError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} must both be [B, T]")
    for name, norm in (("token_normalizer", token_normalizer), ("seq_normalizer", seq_normalizer)):
        if norm is not None and norm <= 0:
            raise ValueError(f"{name} must be > 0 (a global count), got {norm}")
    keep = mask.bool()
    if mode == "token-mean":
        denom = token_normalizer if token_normalizer is not None else keep.sum().clamp(min=1)
        return masked_sum(values, keep) / denom
    row_sums = masked_sum(values, keep, dim=-1)
    n_tokens = keep.sum(-1)
    if mode == "seq-mean-token-mean":
        per_seq = row_sums / n_tokens.clamp(min=1)
    elif mode == "seq-mean-token-sum-norm":
        width = max_response_tokens if max_response_tokens is not None else values.shape[-1]
        if width <= 0:
            raise ValueError(f"max_response_tokens must be positive, got {width}")
        per_seq = row_sums / width
    else:
        raise ValueError(f"unknown agg mode {mode!r}; known: {list(AGG_MODES)}")
    denom = seq_normalizer if seq_normalizer is not None else (n_tokens > 0).sum().clamp(min=1)
    return per_seq.sum() / denom
