"""Per-token quantities from logits: logprob of the taken token, and entropy.

Both work in float32 whatever the logits dtype (bf16 log-softmax loses ~2-3 significant digits,
which is the same order as the trainer/sampler mismatch we want to measure), and both walk the
flattened [B*T, V] rows in chunks so that the float32 copy of the logits never exists in full when
no gradient is needed (reference / old-policy logprob passes). With autograd enabled, the
log-softmax output of every chunk is kept for backward anyway, so chunking then only bounds the
transient cast, not the saved activations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_DEFAULT_CHUNK_ROWS = 2048


def _row_chunks(logits: Tensor, chunk_rows: int) -> tuple[Tensor, list[slice]]:
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    if chunk_rows <= 0:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    flat = logits.reshape(-1, logits.shape[-1])
    return flat, [slice(s, s + chunk_rows) for s in range(0, flat.shape[0], chunk_rows)]


def _log_softmax_fp32(chunk: Tensor, temperature: float) -> Tensor:
    chunk = chunk.float()
    if temperature != 1.0:
        chunk = chunk / temperature
    return F.log_softmax(chunk, dim=-1)


def gather_logprobs(logits: Tensor, target_ids: Tensor, *, temperature: float = 1.0,
                    chunk_rows: int = _DEFAULT_CHUNK_ROWS) -> Tensor:
    """``log softmax(logits / temperature)[b, t, target_ids[b, t]]`` as float32 [B, T].

    `logits[b, t]` must already be the distribution that produced `target_ids[b, t]` (i.e. the
    caller has shifted by one). `temperature` must match the sampler's, otherwise trainer and
    sampler logprobs differ by construction.
    """
    if target_ids.shape != logits.shape[:2]:
        raise ValueError(f"target_ids shape {tuple(target_ids.shape)} != logits[:2] "
                         f"{tuple(logits.shape[:2])}")
    flat, chunks = _row_chunks(logits, chunk_rows)
    targets = target_ids.reshape(-1, 1).long()
    parts = [_log_softmax_fp32(flat[s], temperature).gather(-1, targets[s]).squeeze(-1)
             for s in chunks]
    out = torch.cat(parts) if parts else flat.new_zeros(0, dtype=torch.float32)
    return out.view(logits.shape[:2])


def token_entropy(logits: Tensor, *, temperature: float = 1.0,
                  chunk_rows: int = _DEFAULT_CHUNK_ROWS) -> Tensor:
    """Entropy ``-sum_v p_v log p_v`` of each position's distribution, float32 [B, T]."""
    flat, chunks = _row_chunks(logits, chunk_rows)
    parts = []
    for s in chunks:
        logp = _log_softmax_fp32(flat[s], temperature)
        parts.append(-(logp.exp() * logp).sum(-1))
    out = torch.cat(parts) if parts else flat.new_zeros(0, dtype=torch.float32)
    return out.view(logits.shape[:2])
