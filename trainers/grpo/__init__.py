"""Pure GRPO math: advantage estimators, the clipped policy loss and its helpers.

No distributed or model code lives here; the trainer actor feeds tensors in and gets a loss and
float metrics out. Modules: `advantages` (estimator registry), `losses` (policy loss, which takes
the `grpo` config section; re-exports the helpers), `aggregation` (exact micro-batch /
data-parallel reductions), `importance` (sampler-mismatch correction), `kl`, `logits`.
"""

from trainers.grpo.advantages import (ADVANTAGE_ESTIMATORS, compute_advantages,
                                      register_advantage_estimator)
from trainers.grpo.losses import aggregate, gather_logprobs, kl_penalty, policy_loss, token_entropy

__all__ = ["ADVANTAGE_ESTIMATORS", "compute_advantages", "register_advantage_estimator",
           "policy_loss", "aggregate", "kl_penalty", "token_entropy", "gather_logprobs"]
