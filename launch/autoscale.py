"""Automatic rollout capacity: decide from the pipeline's own timers when to add or retire vLLM
engines and env workers (`rollout.autoscale`). This module only decides; `launch/elastic.py` applies
a decision, logs it to `scale_events.jsonl` and calls `AutoscalePolicy.applied`.

Signals, read from each GRPO step's metrics row (`StepSignals`):
  timing/step_s                wall time of the whole step
  timing/wait_rollout_s        part of it the trainer spent waiting for rollouts
  rollout/generation_s_mean    per episode, wall time spent waiting for the policy (vLLM)
  rollout/env_s_mean           per episode, wall time spent in tools / env steps (env workers)
  accounting/in_flight         trajectories still being played when the step ended; 0 means the
                               rollouts had finished everything they were allowed to start and were
                               idle, waiting for the trainer

Policy, over the last `window_steps` steps:
  wait share = sum(wait_rollout_s) / sum(step_s)
  env share  = sum(env_s_mean) / sum(env_s_mean + generation_s_mean)
  * rollout-bound (wait share > wait_high): rollouts are the bottleneck. If env share >
    env_share_high the episodes mostly wait on tools, so +env_workers_step env workers; otherwise
    they mostly wait on the policy, so +1 engine. If that kind is at its max, nothing else is tried
    (the other kind would not relieve the bottleneck); the reason is logged.
  * trainer-bound (wait share < wait_low and in_flight == 0 on every step, with `scale_down`):
    rollouts wait for the trainer, so one member of the less needed kind is retired: an engine when
    env share > env_share_high, else env_workers_step env workers; if that kind is at its min, the
    other kind is tried. Deltas are clamped to [min, max] and a clamped delta of 0 is no decision.

Why a window and a cool-down: one step's timers are noisy (a few long episodes, a checkpoint), so
decisions are made on sums over several steps. A change needs a step or two to show in the timers
(a new engine loads weights for tens of seconds, a retired one drains its requests), so the
`cooldown_steps` steps after an applied change are not measured at all, and the window is cleared
after each decision and each applied change: the next decision is measured on the new layout only.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from configs.schema import AutoscaleConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScaleDecision:
    engines: int  # delta: +1 add one engine, -1 retire one, 0 none
    env_workers: int  # delta
    reason: str  # one human sentence with the numbers that drove it


@dataclass(frozen=True)
class StepSignals:
    step: int
    step_s: float  # timing/step_s
    wait_rollout_s: float  # timing/wait_rollout_s
    generation_s_mean: float  # rollout/generation_s_mean
    env_s_mean: float  # rollout/env_s_mean
    in_flight: int  # accounting/in_flight

    @classmethod
    def from_metrics(cls, step: int, metrics: dict[str, float]) -> "StepSignals":
        """One step's signals from its metrics row. A missing key reads as 0.0 (in_flight as 0); a
        row without `timing/step_s` therefore has step_s 0 and is ignored by the policy."""
        def get(key: str) -> float:
            return float(metrics.get(key, 0.0))
        return cls(step=step, step_s=get("timing/step_s"), wait_rollout_s=get("timing/wait_rollout_s"),
                   generation_s_mean=get("rollout/generation_s_mean"), env_s_mean=get("rollout/env_s_mean"),
                   in_flight=int(get("accounting/in_flight")))


@dataclass(frozen=True)
class _Window:
    """Sums over the window, the numbers a decision is made from."""
    first_step: int
    last_step: int
    wait_share: float
    env_share: float
    all_idle: bool  # in_flight == 0 on every step

    @classmethod
    def of(cls, signals: list[StepSignals]) -> "_Window":
        step_s = sum(s.step_s for s in signals)
        env_s = sum(s.env_s_mean for s in signals)
        episode_s = env_s + sum(s.generation_s_mean for s in signals)
        return cls(first_step=signals[0].step, last_step=signals[-1].step,
                   wait_share=sum(s.wait_rollout_s for s in signals) / step_s if step_s > 0 else 0.0,
                   env_share=env_s / episode_s if episode_s > 0 else 0.0,
                   all_idle=all(s.in_flight == 0 for s in signals))

    def steps(self) -> str:
        if self.first_step == self.last_step:
            return f"step {self.first_step}"
        return f"steps {self.first_step}-{self.last_step}"


def _count(n: int, noun: str) -> str:
    return f"{n:+d} {noun}" + ("" if abs(n) == 1 else "s")


def _clamp_up(current: int, step: int, maximum: int) -> int:
    # Never negative: a size already above its max (set by hand) is not shrunk by an "add".
    return max(0, min(step, maximum - current))


def _clamp_down(current: int, step: int, minimum: int) -> int:
    return -max(0, min(step, current - minimum))


class AutoscalePolicy:
    """Decides after every step from the last `window_steps` steps; see the module docstring."""

    def __init__(self, cfg: AutoscaleConfig) -> None:
        self.cfg = cfg
        self._window: deque[StepSignals] = deque(maxlen=cfg.window_steps)
        self._last_applied: int | None = None

    def applied(self, step: int) -> None:
        """The controller applied a change after `step` (also manual ones): the cool-down restarts
        and what was measured on the old layout is dropped."""
        self._last_applied = step
        self._window.clear()

    def decide(self, signals: StepSignals, engines: int, env_workers: int) -> ScaleDecision | None:
        """Called after every step with the current sizes; returns a decision or None."""
        if not self._record(signals):
            return None
        window = _Window.of(list(self._window))
        cfg = self.cfg
        if window.wait_share > cfg.wait_high:
            decision = self._grow(window, engines, env_workers)
        elif window.wait_share < cfg.wait_low and window.all_idle and cfg.scale_down:
            decision = self._shrink(window, engines, env_workers)
        else:
            decision = None
        if decision is not None:
            self._window.clear()
            logger.info("autoscale after step %d: %s", signals.step, decision.reason)
        return decision

    def _record(self, signals: StepSignals) -> bool:
        """Adds the step to the window; True when the window is full and may be decided on."""
        cooling = self._last_applied is not None and signals.step - self._last_applied <= self.cfg.cooldown_steps
        if cooling:
            return False  # the change is still settling: its timers would mislead
        if signals.step_s <= 0:
            # No timers (e.g. a row without timing/step_s): it would read as "never waited" and retire.
            logger.debug("autoscale: step %d has no step time, not measured", signals.step)
            return False
        self._window.append(signals)
        return len(self._window) == self.cfg.window_steps

    def _grow(self, w: _Window, engines: int, env_workers: int) -> ScaleDecision | None:
        cfg = self.cfg
        why = (f"trainer waited {w.wait_share:.0%} of the step for rollouts (> wait_high {cfg.wait_high:.0%}) "
               f"over {w.steps()}; env time is {w.env_share:.0%} of episode time")
        if w.env_share > cfg.env_share_high:
            why += f" (> {cfg.env_share_high:.0%})"
            delta = _clamp_up(env_workers, cfg.env_workers_step, cfg.max_env_workers)
            if delta == 0:
                logger.info("autoscale: %s, but env workers at max_env_workers %d (now %d): no change",
                            why, cfg.max_env_workers, env_workers)
                return None
            return ScaleDecision(0, delta, f"{why}: {_count(delta, 'env worker')} "
                                           f"({env_workers} -> {env_workers + delta})")
        why += f" (<= {cfg.env_share_high:.0%})"
        delta = _clamp_up(engines, 1, cfg.max_engines)
        if delta == 0:
            logger.info("autoscale: %s, but engines at max_engines %d (now %d): no change",
                        why, cfg.max_engines, engines)
            return None
        return ScaleDecision(delta, 0, f"{why}: {_count(delta, 'engine')} ({engines} -> {engines + delta})")

    def _shrink(self, w: _Window, engines: int, env_workers: int) -> ScaleDecision | None:
        cfg = self.cfg
        why = (f"trainer waited {w.wait_share:.0%} of the step for rollouts (< wait_low {cfg.wait_low:.0%}) "
               f"with nothing in flight over {w.steps()}; env time is {w.env_share:.0%} of episode time")
        d_eng = _clamp_down(engines, 1, cfg.min_engines)
        d_env = _clamp_down(env_workers, cfg.env_workers_step, cfg.min_env_workers)
        engines_first = w.env_share > cfg.env_share_high  # env-heavy episodes need engines least
        why += f" (> {cfg.env_share_high:.0%})" if engines_first else f" (<= {cfg.env_share_high:.0%})"
        if engines_first and d_eng == 0 and d_env != 0:
            why += f"; engines at min_engines {cfg.min_engines}"
        elif not engines_first and d_env == 0 and d_eng != 0:
            why += f"; env workers at min_env_workers {cfg.min_env_workers}"
        if d_eng != 0 and (engines_first or d_env == 0):
            return ScaleDecision(d_eng, 0, f"{why}: {_count(d_eng, 'engine')} ({engines} -> {engines + d_eng})")
        if d_env != 0:
            return ScaleDecision(0, d_env, f"{why}: {_count(d_env, 'env worker')} "
                                           f"({env_workers} -> {env_workers + d_env})")
        logger.debug("autoscale: %s, but engines and env workers are at their mins: no change", why)
        return None
