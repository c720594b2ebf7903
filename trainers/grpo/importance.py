"""Correcting for the sampler (vLLM) not being exactly the trainer's policy.

The sampler's logprobs differ from the trainer's recomputation of the same policy (`old_logprobs`)
because of kernels, precision, batch-variance, or because the sample is stale (async / off-policy).
The PPO ratio is taken against `old_logprobs`, so the remaining mismatch is the behaviour-policy
ratio ``rho = exp(old_logprobs - sampler_logprobs)``, which the modes below use as a detached
per-token weight on the policy-gradient loss:

* "none":      w = 1.
* "token_tis": w = min(rho, is_cap), truncated importance sampling (Yao et al., "Your efficient RL
               framework secretly brings you off-policy RL training"): unbiased where rho <= cap,
               bounded variance everywhere.
* "seq_mask":  w in {0, 1}: a trajectory whose geometric-mean ratio
               ``exp(mean_t (old - sampler))`` is outside [1/t, t] gets w = 0 on all its tokens
               (it is too far off-policy to be trusted), the others w = 1. The masked tokens still
               count in the aggregation denominators, so normalisers computed before the forward
               stay exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from trainers.grpo.aggregation import masked_sum

ImportanceSampling = Literal["none", "token_tis", "seq_mask"]
IS_MODES: tuple[str, ...] = ("none", "token_tis", "seq_mask")


@dataclass
class ImportanceWeights:
    """Detached per-token weights [B, T] plus the token-level facts the metrics report."""

    weights: Tensor
    log_rho: Tensor
    capped: Tensor
    zeroed: Tensor


def importance_weights(old_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor,
                       mode: ImportanceSampling, *, is_cap: float,
                       seq_mask_threshold: float) -> ImportanceWeights:
    """Weights for `mode` (see module docstring); positions outside `mask` get weight 0."""
    keep = mask.bool()
    with torch.no_grad():
        log_rho = torch.where(keep, old_logprobs.detach() - sampler_logprobs.detach(), 0.0)
        rho = log_rho.clamp(max=50.0).exp()
        no = torch.zeros_like(keep)
        if mode == "none":
            weights, capped, zeroed = torch.ones_like(rho), no, no
        elif mode == "token_tis":
            capped = keep & (rho > is_cap)
            weights, zeroed = rho.clamp(max=is_cap), no
        elif mode == "seq_mask":
            n = keep.sum(-1)
            seq_log_gm = masked_sum(log_rho, keep, dim=-1) / n.clamp(min=1)
            bad_seq = (n > 0) & (seq_log_gm.abs() > math.log(seq_mask_threshold))
            zeroed = keep & bad_seq.unsqueeze(-1)
            weights, capped = (~zeroed).to(rho.dtype), no
        else:
            raise ValueError(f"unknown importance_sampling {mode!r}; known: {list(IS_MODES)}")
        weights = torch.where(keep, weights, 0.0)
    return ImportanceWeights(weights=weights, log_rho=log_rho, capped=capped, zeroed=zeroed)


def sampler_mismatch_metrics(iw: ImportanceWeights, mask: Tensor) -> dict[str, Tensor]:
    """Trainer-vs-sampler diagnostics over loss tokens, as 0-dim tensors (the caller converts all
    metrics to floats in one device sync).

    `is_ratio_*` describe the raw rho (before capping / masking). `token_mult_prob_error` is NeMo
    RL's definition: the mean over tokens of ``exp(|old - sampler|)`` (mean of exp, not exp of
    mean); 1.0 means identical, ~1.01 is a healthy bf16 pipeline. With no loss tokens the values
    are those of a perfect match (ratios 1, differences 0).
    """
    keep = mask.bool()
    with torch.no_grad():
        n = keep.sum().clamp(min=1)
        any_token = keep.any()
        diff = iw.log_rho.abs()
        rho = iw.log_rho.clamp(max=50.0).exp()
        one = torch.ones((), dtype=rho.dtype, device=rho.device)

        def mean(t: Tensor) -> Tensor:
            return torch.where(any_token, masked_sum(t.to(rho.dtype), keep) / n, 0.0)

        return {
            "is_ratio_min": torch.where(any_token, torch.where(keep, rho, float("inf")).min(), one),
            "is_ratio_mean": torch.where(any_token, mean(rho), one),
            "is_ratio_max": torch.where(any_token, torch.where(keep, rho, 0.0).max(), one),
            "is_masked_frac": mean(iw.zeroed),
            "is_capped_frac": mean(iw.capped),
            "sampler_logprob_diff_mean": mean(diff),
            "sampler_logprob_diff_max": torch.where(keep, diff, 0.0).max(),
            "token_mult_prob_error": torch.where(any_token, mean(diff.exp()), one),
        }
