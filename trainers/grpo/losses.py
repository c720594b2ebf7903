"""The clipped policy-gradient loss of GRPO / DAPO / Dr. GRPO, with KL and entropy terms.

Per token (A = advantage, r = exp(logprobs - old_logprobs), the PPO ratio against the trainer's
own recomputation of the sampling policy):

    l1 = -A r,   l2 = -A clip(r, 1 - clip_low, 1 + clip_high),   l = max(l1, l2)
    dual clip (c = dual_clip, A < 0 only):   l = min(l, -A c)
    l_pg = w * l            w = importance weight vs the sampler (see `importance`), detached
    loss = agg(l_pg) + kl_coef * agg(kl(logprobs, ref)) - entropy_coef * agg(entropy)

`max` keeps PPO's pessimism: the clipped branch wins (and its gradient is 0) only when the ratio has
moved past the clip range in the direction the advantage pushes it. Asymmetric clip_high >
clip_low is DAPO's "clip-higher" (more room to raise unlikely tokens). The dual clip bounds the
loss of a negative-advantage token whose ratio exploded (r > c) at |A| c, so a single stale token
cannot dominate the batch.

Metrics are python floats over this micro-batch's loss tokens. `loss` and `pg_loss` are the values
returned (with global normalisers: this micro-batch's share, which sums to the full-batch value);
every other metric is a local masked mean/min/max, to be combined weighted by `num_tokens`.

* pg_clipfrac_low:  tokens with A < 0 and r < 1 - clip_low  (lower clip active, no gradient)
* pg_clipfrac_high: tokens with A > 0 and r > 1 + clip_high (upper clip active, no gradient)
* dual_clip_frac:   tokens with A < 0 and r > dual_clip     (dual clip active, no gradient)
* approx_kl: k3 estimate of KL(old || current) = mean of (r - 1 - log r); >= 0, unbiased under the
  sampling distribution, exactly 0 on-policy.
* kl_ref / entropy: masked means of the per-token KL vs reference / the given entropy.
* is_*, sampler_logprob_diff_*, token_mult_prob_error: see `importance.sampler_mismatch_metrics`
  (present only when `sampler_logprobs` is given).
"""

from __future__ import annotations

import torch
from torch import Tensor

from configs.schema import GRPOConfig
from trainers.grpo.aggregation import aggregate, masked_sum
from trainers.grpo.importance import importance_weights, sampler_mismatch_metrics
from trainers.grpo.kl import kl_penalty
from trainers.grpo.logits import gather_logprobs, token_entropy

__all__ = ["policy_loss", "aggregate", "kl_penalty", "token_entropy", "gather_logprobs"]

_LOG_RATIO_CLAMP = 20.0


def _masked_mean(values: Tensor, keep: Tensor) -> Tensor:
    """Mean over loss tokens as a 0-dim tensor (0 with no tokens); no device sync."""
    return masked_sum(values.detach().float(), keep) / keep.sum().clamp(min=1)


def _token_advantages(advantages: Tensor, like: Tensor) -> Tensor:
    if advantages.dim() == 1 and advantages.shape[0] == like.shape[0]:
        return advantages.detach().to(like.dtype).unsqueeze(-1).expand_as(like)
    if advantages.shape == like.shape:
        return advantages.detach().to(like.dtype)
    raise ValueError(f"advantages must be [B] or [B, T] for logprobs {tuple(like.shape)}, "
                     f"got {tuple(advantages.shape)}")


def _check_same_shape(ref: Tensor, **others: Tensor | None) -> None:
    if ref.dim() != 2:
        raise ValueError(f"logprobs must be [B, T], got {tuple(ref.shape)}")
    for name, t in others.items():
        if t is not None and t.shape != ref.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} != logprobs shape {tuple(ref.shape)}")


def policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                cfg: GRPOConfig, *, sampler_logprobs: Tensor | None = None,
                ref_logprobs: Tensor | None = None, entropy: Tensor | None = None,
                token_normalizer: float | None = None, seq_normalizer: float | None = None,
                ) -> tuple[Tensor, dict[str, float]]:
    """Scalar loss (differentiable w.r.t. `logprobs` and `entropy`) and its metrics.

    `cfg` is the run's `grpo` section; the loss reads clip_low, clip_high, dual_clip, agg_mode,
    max_response_tokens, kl_coef, kl_estimator, entropy_coef, importance_sampling, is_cap and
    seq_mask_threshold (ranges checked by the schema).

    `old_logprobs`, `sampler_logprobs`, `ref_logprobs` and `advantages` are treated as constants.
    Positions outside `mask` may hold anything (padding, -inf): they are replaced before any
    arithmetic, so they reach neither the loss nor the gradient. See `aggregation` for how to set
    `token_normalizer` / `seq_normalizer` across micro-batches and ranks.
    """
    _check_same_shape(logprobs, old_logprobs=old_logprobs, mask=mask,
                      sampler_logprobs=sampler_logprobs, ref_logprobs=ref_logprobs, entropy=entropy)
    keep = mask.bool()

    def clean(t: Tensor) -> Tensor:
        return torch.where(keep, t, torch.zeros((), dtype=t.dtype, device=t.device))

    def agg(values: Tensor) -> Tensor:
        return aggregate(values, keep, cfg.agg_mode, token_normalizer=token_normalizer,
                         seq_normalizer=seq_normalizer, max_response_tokens=cfg.max_response_tokens)

    logprobs = clean(logprobs)
    old = clean(old_logprobs.detach())
    adv = clean(_token_advantages(advantages, logprobs))

    log_ratio = (logprobs - old).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio = log_ratio.exp()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    clip_active = clipped > unclipped
    per_token = torch.where(clip_active, clipped, unclipped)
    dual_active = torch.zeros_like(keep)
    if cfg.dual_clip is not None:
        bound = -adv * cfg.dual_clip
        dual_active = (adv < 0) & (per_token > bound)
        per_token = torch.where(dual_active, bound, per_token)

    metrics: dict[str, Tensor] = {}
    if sampler_logprobs is not None:
        iw = importance_weights(old, clean(sampler_logprobs), keep, cfg.importance_sampling,
                                is_cap=cfg.is_cap, seq_mask_threshold=cfg.seq_mask_threshold)
        per_token = per_token * iw.weights
        metrics.update(sampler_mismatch_metrics(iw, keep))
    elif cfg.importance_sampling != "none":
        raise ValueError(f"importance_sampling={cfg.importance_sampling!r} needs sampler_logprobs")

    pg_loss = agg(per_token)
    loss = pg_loss
    if ref_logprobs is not None:
        kl_tok = kl_penalty(logprobs, clean(ref_logprobs), cfg.kl_estimator)
        metrics["kl_ref"] = _masked_mean(kl_tok, keep)
        if cfg.kl_coef != 0.0:
            loss = loss + cfg.kl_coef * agg(kl_tok)
    elif cfg.kl_coef != 0.0:
        raise ValueError("kl_coef != 0 needs ref_logprobs")
    if entropy is not None:
        ent = clean(entropy)
        metrics["entropy"] = _masked_mean(ent, keep)
        if cfg.entropy_coef != 0.0:
            loss = loss - cfg.entropy_coef * agg(ent)
    elif cfg.entropy_coef != 0.0:
        raise ValueError("entropy_coef != 0 needs entropy")

    with torch.no_grad():
        lr = log_ratio.detach()
        metrics.update({
            "loss": loss.detach(),
            "pg_loss": pg_loss.detach(),
            "pg_clipfrac_low": _masked_mean(clip_active & (adv < 0), keep),
            "pg_clipfrac_high": _masked_mean(clip_active & (adv > 0), keep),
            "dual_clip_frac": _masked_mean(dual_active, keep),
            "approx_kl": _masked_mean(lr.exp() - 1.0 - lr, keep),
            "num_tokens": keep.sum(),
            "num_seqs": keep.any(-1).sum(),
        })
        names = list(metrics)
        values = torch.stack([metrics[k].float() for k in names]).tolist()  # one device sync
    return loss, dict(zip(names, values))
