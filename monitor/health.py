"""Health alarms: catch a GRPO run going bad while it runs, not in the post-mortem.

The failure modes watched are the ones RL-for-LLM practitioners keep hitting:
- entropy collapse: the policy turns deterministic, exploration (and so learning) stops;
- reward collapse: every trajectory of the batch gets the same reward (no GRPO signal), or the
  reward falls well below the best it reached;
- truncation: most episodes hit the length limit, so their rewards say little;
- sampler/trainer logprob mismatch: vLLM and the trainer disagree about the same weights; the
  off-policy bias grows until the run diverges (NeMo RL: token_mult_prob_error should stay < 1.05);
- non-finite loss: NaN/Inf steps (the trainer zeroes non-finite micro-batches and skips an update
  with nothing finite, so a NaN never reaches the weights); K in a row means the run is
  broken, not unlucky.

`HealthMonitor.check(metrics, step)` is pure bookkeeping over the metrics dict (no I/O), so each
check is unit-testable on synthetic numbers. A missing metric never trips a check. An alarm that
persists is repeated every `repeat_every` steps rather than every step, so the console and W&B stay
readable; checks listed in `MonitorConfig.stop_on` mark their alarm `stop=True`, and the caller
raises `HealthStop` to end the run cleanly.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from configs.schema import MonitorConfig

NONFINITE_KEYS = ("train/loss", "train/pg_loss", "train/grad_norm")
SKIPPED_KEY = "train/skipped_nonfinite"  # the trainer skips an update when no micro-batch loss is finite
# Every non-finite step is its own event (a skipped update), not a persisting condition.
ALWAYS_REPORTED = frozenset({"nonfinite_loss"})


@dataclass(frozen=True)
class Alarm:
    check: str
    step: int
    message: str
    value: float
    threshold: float
    stop: bool = False

    @property
    def title(self) -> str:
        return f"labrl health: {self.check}" + (" (stopping run)" if self.stop else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class HealthStop(RuntimeError):
    """Raised by the training flow's log function when an alarm is configured to stop the run."""

    def __init__(self, alarms: list[Alarm]):
        self.alarms = alarms
        super().__init__("; ".join(f"{a.check} at step {a.step}: {a.message}" for a in alarms))


def _finite(metrics: dict[str, float], key: str) -> float | None:
    value = metrics.get(key)
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class HealthMonitor:
    """Stateful checks over successive steps' metrics; see the module docstring."""

    def __init__(self, cfg: MonitorConfig):
        self.cfg = cfg
        self._no_signal_steps = 0
        self._reward_means: deque[float] = deque(maxlen=cfg.reward_window)
        self._best_window_mean = -math.inf
        self.nonfinite_consecutive = 0
        self.nonfinite_total = 0
        self._last_alarm_step: dict[str, int] = {}

    def check(self, metrics: dict[str, float], step: int) -> list[Alarm]:
        """The alarms this step raises (empty when healthy or when monitoring is disabled)."""
        if not self.cfg.enabled:
            return []
        raw = [self._entropy(metrics), self._reward_signal(metrics), self._reward_drop(metrics),
               self._truncation(metrics), self._mismatch(metrics), self._nonfinite(metrics)]
        tripped: dict[str, tuple] = {}
        for c in raw:  # one alarm per check and step: the first reason found
            if c is not None:
                tripped.setdefault(c[0], c)
        alarms = []
        for check in ("entropy_collapse", "reward_collapse", "truncation", "logprob_mismatch",
                      "nonfinite_loss"):
            if check not in tripped:
                self._last_alarm_step.pop(check, None)  # cleared: the next trip alerts at once
                continue
            _, message, value, threshold = tripped[check]
            stop = check in self.cfg.stop_on and (
                check != "nonfinite_loss"
                or self.nonfinite_consecutive >= self.cfg.nonfinite_loss_max_consecutive)
            last = self._last_alarm_step.get(check)
            if (not stop and check not in ALWAYS_REPORTED and last is not None
                    and step - last < self.cfg.repeat_every):
                continue
            self._last_alarm_step[check] = step
            alarms.append(Alarm(check, step, message, value, threshold, stop))
        return alarms

    def metrics(self) -> dict[str, float]:
        """Counters worth plotting next to the alarms."""
        return {"health/nonfinite_loss_steps": float(self.nonfinite_total),
                "health/nonfinite_loss_consecutive": float(self.nonfinite_consecutive),
                "health/no_signal_steps": float(self._no_signal_steps)}

    # Each check returns (check name, message, value, threshold) or None.
    def _entropy(self, m: dict[str, float]):
        value, limit = _finite(m, "train/entropy"), self.cfg.entropy_min
        if value is None or limit is None or value >= limit:
            return None
        return ("entropy_collapse", f"policy entropy {value:.4f} nats < {limit:g}: the policy is turning "
                "deterministic and stops exploring (raise temperature or add entropy_coef)", value, limit)

    def _reward_signal(self, m: dict[str, float]):
        std = _finite(m, "rollout/reward_std")
        if std is None:
            return None
        self._no_signal_steps = self._no_signal_steps + 1 if std <= self.cfg.reward_std_min else 0
        k = self.cfg.reward_collapse_steps
        if self._no_signal_steps < k:
            return None
        mean = m.get("rollout/reward_mean", math.nan)
        return ("reward_collapse", f"reward std {std:.2g} for {self._no_signal_steps} steps (>= {k}), all "
                f"rewards ~{mean:.3g}: GRPO gets no signal (tasks too easy/hard? try a reward profile "
                "and env.task_filter_profile)", std, self.cfg.reward_std_min)

    def _reward_drop(self, m: dict[str, float]):
        mean, drop = _finite(m, "rollout/reward_mean"), self.cfg.reward_drop
        if mean is None or drop is None:
            return None
        self._reward_means.append(mean)
        if len(self._reward_means) < self._reward_means.maxlen:
            return None
        window = sum(self._reward_means) / len(self._reward_means)
        self._best_window_mean = max(self._best_window_mean, window)
        if self._best_window_mean - window < drop:
            return None
        return ("reward_collapse", f"reward mean over the last {len(self._reward_means)} steps {window:.3f} "
                f"dropped {self._best_window_mean - window:.3f} (>= {drop:g}) below its best "
                f"{self._best_window_mean:.3f}", window, self._best_window_mean - drop)

    def _truncation(self, m: dict[str, float]):
        value, limit = _finite(m, "rollout/truncation_rate"), self.cfg.truncation_rate_max
        if value is None or limit is None or value <= limit:
            return None
        return ("truncation", f"truncation rate {value:.2f} > {limit:g}: most episodes hit the length "
                "limit (raise generation.max_new_tokens / max_model_len or penalise length)", value, limit)

    def _mismatch(self, m: dict[str, float]):
        if (_finite(m, "rollout/staleness_max") or 0.0) > 0:
            # Stale samples were drawn by older weights: the sampler/trainer gap then includes the
            # policy's own movement since, which is expected and corrected by importance sampling.
            return None
        for key, limit in (("train/token_mult_prob_error", self.cfg.token_mult_prob_error_max),
                           ("train/sampler_logprob_diff_mean", self.cfg.sampler_logprob_diff_max)):
            value = _finite(m, key)
            if value is not None and limit is not None and value > limit:
                return ("logprob_mismatch", f"{key} {value:.4f} > {limit:g}: sampler and trainer disagree "
                        "on the same weights (weight sync, dtype or kernel mismatch; keep importance "
                        "sampling on)", value, limit)
        return None

    def _nonfinite(self, m: dict[str, float]):
        bad = [k for k in NONFINITE_KEYS if k in m and not math.isfinite(float(m[k]))]
        skipped = float(m.get(SKIPPED_KEY, 0.0) or 0.0)
        if not bad and skipped <= 0:
            self.nonfinite_consecutive = 0
            return None
        self.nonfinite_consecutive += 1
        self.nonfinite_total += 1
        k = self.cfg.nonfinite_loss_max_consecutive
        what = ", ".join(bad) if bad else f"{SKIPPED_KEY}={skipped:g}"
        return ("nonfinite_loss", f"non-finite training step ({what}); {self.nonfinite_consecutive} in a "
                f"row (limit {k})", float(self.nonfinite_consecutive), float(k))
