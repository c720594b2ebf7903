"""KL(pi || pi_ref) estimators from sampled-token logprobs (Schulman, "Approximating KL divergence").

With samples x ~ pi and ``d = log pi(x) - log pi_ref(x)``:

* k1 = d                           unbiased, high variance, can be negative per token;
* k2 = d**2 / 2                    biased, low variance, >= 0; its gradient is the reverse-KL
                                   gradient in expectation (why GRPO-style "k2 loss" works);
* k3 = exp(-d) - 1 + d             unbiased, low variance, >= 0 (DeepSeekMath GRPO's choice).

The exponent in k3 is clamped to [-20, 20]: past that the policy has left the reference so far
that the penalty's exact value is meaningless, and an inf would poison the whole batch.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

KLEstimator = Literal["k1", "k2", "k3"]
_EXP_CLAMP = 20.0


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator) -> Tensor:
    """Per-token KL estimate [B, T] of the policy (`logprobs`) against the reference.

    Differentiable w.r.t. `logprobs`; `ref_logprobs` is treated as a constant.
    """
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and ref_logprobs "
                         f"{tuple(ref_logprobs.shape)} differ in shape")
    d = logprobs - ref_logprobs.detach()
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d.square()
    if estimator == "k3":
        return torch.exp((-d).clamp(-_EXP_CLAMP, _EXP_CLAMP)) - 1.0 + d
    raise ValueError(f"unknown KL estimator {estimator!r}; known: ['k1', 'k2', 'k3']")

