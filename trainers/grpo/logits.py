"""Per-token quantities from logits: logprob of the taken token, and entropy.

Both work in float32 whatever the logits dtype (bf16 log-softmax loses ~2-3 significant digits,
which is the same order as the trainer/sampler mismatch we want to measure), and both walk the
flattened [B*T, V] rows in chunks so that the float32 copy of the logits never exists in full.
With autograd enabled each chunk is checkpointed: backward recomputes the chunk's log-softmax
instead of keeping it, so the float32 [tokens, vocab] tensor is never saved. For a 150k vocabulary
that saved copy is 0.6 MB per token, the largest activation of a GRPO step: removing it took a
0.5B-parameter ZeRO-1 step on 30k tokens from 27.9 to 23.4 GB peak on an H200, at no loss of
speed (benchmarks/gpu_check.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

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


def _chunk_logprobs(chunk: Tensor, targets: Tensor, temperature: float) -> Tensor:
    return _log_softmax_fp32(chunk, temperature).gather(-1, targets).squeeze(-1)


def _chunk_entropy(chunk: Tensor, temperature: float) -> Tensor:
    logp = _log_softmax_fp32(chunk, temperature)
    return -(logp.exp() * logp).sum(-1)


def _per_chunk(fn, chunk: Tensor, *args) -> Tensor:
    """`fn(chunk, *args)`; under autograd, recomputed in backward rather than saved (module doc)."""
    if torch.is_grad_enabled() and chunk.requires_grad:
        return checkpoint(fn, chunk, *args, use_reentrant=False)
    return fn(chunk, *args)


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
    parts = [_per_chunk(_chunk_logprobs, flat[s], targets[s], temperature) for s in chunks]
    out = torch.cat(parts) if parts else flat.new_zeros(0, dtype=torch.float32)
    return out.view(logits.shape[:2])


def token_entropy(logits: Tensor, *, temperature: float = 1.0,
                  chunk_rows: int = _DEFAULT_CHUNK_ROWS) -> Tensor:
    """Entropy ``-sum_v p_v log p_v`` of each position's distribution, float32 [B, T]."""
    flat, chunks = _row_chunks(logits, chunk_rows)
    parts = [_per_chunk(_chunk_entropy, flat[s], temperature) for s in chunks]
    out = torch.cat(parts) if parts else flat.new_zeros(0, dtype=torch.float32)
    return out.view(logits.shape[:2])
