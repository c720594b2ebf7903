"""Metrics of a batch of trajectories: what to watch for collapse and truncation.

Names follow the `rollout/` and `env/<name>/` namespaces used across labrl's W&B runs;
`step_timing_metrics` derives the `timing/` throughput and idle figures of a pipeline step.
Rates are per trajectory except `invalid_tool_call_rate`, which is per attempted tool call (a long episode
with one bad call is not "invalid"); reason, finish and staleness counts are absolute numbers so
they add up across steps.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from statistics import fmean, pstdev

from rollout.trajectory import Trajectory


def mean_interval(values: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """Mean and normal-approximation 95% half-width, with one value per independent unit.

    For held-out success the unit is the task: samples of one task are correlated (an easy task
    is solved every time), so per-task rates, not pooled samples, give an honest interval. For
    paired per-task differences (the same tasks before and after training) it is the paired test,
    which removes the task-difficulty variance that dominates a comparison of two pooled rates.
    """
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, z * math.sqrt(var / n)


def rollout_metrics(trajs: list[Trajectory], current_version: int | None = None,
                    prefix: str = "rollout") -> dict[str, float]:
    if not trajs:
        return {}
    rewards = [t.reward for t in trajs]
    lengths = [t.num_generated_tokens for t in trajs]
    tool_calls = sum(t.num_tool_calls for t in trajs)
    out = {
        f"{prefix}/num_trajectories": float(len(trajs)),
        f"{prefix}/num_generated_tokens": float(sum(lengths)),
        f"{prefix}/reward_mean": fmean(rewards),
        f"{prefix}/reward_std": pstdev(rewards),
        f"{prefix}/reward_min": min(rewards),
        f"{prefix}/reward_max": max(rewards),
        f"{prefix}/success_rate": fmean(t.success for t in trajs),
        f"{prefix}/response_length_mean": fmean(lengths),
        f"{prefix}/response_length_max": float(max(lengths)),
        f"{prefix}/truncation_rate": fmean(t.finish_reason == "length" for t in trajs),
        f"{prefix}/natural_termination_rate": fmean(t.finish_reason == "env_done" for t in trajs),
        f"{prefix}/turns_mean": fmean(t.num_turns for t in trajs),
        f"{prefix}/turns_max": float(max(t.num_turns for t in trajs)),
        f"{prefix}/generation_s_mean": fmean(t.generation_s for t in trajs),
        f"{prefix}/env_s_mean": fmean(t.env_s for t in trajs),
        f"{prefix}/tool_calls_mean": tool_calls / len(trajs),
        f"{prefix}/invalid_tool_call_rate": invalid_tool_call_rate(trajs),
        f"{prefix}/fork_rate": fork_rate(trajs),
    }
    for reason, count in Counter(t.reward_reason for t in trajs).items():
        out[f"{prefix}/reason/{reason}"] = float(count)
    for finish, count in Counter(t.finish_reason for t in trajs).items():
        out[f"{prefix}/finish/{finish}"] = float(count)
    if current_version is not None:
        ages = [current_version - t.policy_version for t in trajs]
        out[f"{prefix}/staleness_mean"] = fmean(ages)
        out[f"{prefix}/staleness_max"] = float(max(ages))
        for age, count in Counter(ages).items():
            out[f"{prefix}/staleness_hist/{age}"] = float(count)
    if prefix == "rollout":  # per-environment breakdown of training batches only
        out.update(env_metrics(trajs))
    return out


def env_metrics(trajs: list[Trajectory]) -> dict[str, float]:
    """Reward and success per environment, and per environment and difficulty level."""
    groups: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajs:
        groups[f"env/{t.env_name}"].append(t)
        groups[f"env/{t.env_name}/d{t.difficulty}"].append(t)
    out: dict[str, float] = {}
    for key, group in groups.items():
        out[f"{key}/num_trajectories"] = float(len(group))
        out[f"{key}/reward_mean"] = fmean(t.reward for t in group)
        out[f"{key}/success_rate"] = fmean(t.success for t in group)
    return out


def invalid_tool_call_rate(trajs: list[Trajectory]) -> float:
    """Failed calls per attempted call, in [0, 1].

    The agent loop counts parsed calls (+1 per unparseable turn) as tool calls, but error
    observations (including "no tool call" turns) as invalid calls, so invalid can exceed calls
    within an episode; an episode's attempts are therefore max(calls, invalid).
    """
    attempts = sum(max(t.num_tool_calls, t.num_invalid_tool_calls) for t in trajs)
    return sum(t.num_invalid_tool_calls for t in trajs) / max(1, attempts)


def fork_rate(trajs: list[Trajectory]) -> float:
    """Share of an agent program's follow-up turns whose prompt did not extend what the policy had
    produced (rollout/openai_api/assembly.py); native episodes never fork."""
    follow_ups = sum(max(0, t.num_turns - 1) for t in trajs)
    return sum(t.num_forks for t in trajs) / max(1, follow_ups)


def step_timing_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Derived `timing/` figures of one pipeline step from the metrics it already reports.

    `idle_s` is the trainer's idle time (waiting for rollouts); `rollout_tokens_per_s` is generated
    tokens per wall second of the whole step (end-to-end pipeline throughput, not engine speed).
    """
    out: dict[str, float] = {}
    step_s = metrics.get("timing/step_s")
    wait_s = metrics.get("timing/wait_rollout_s")
    if wait_s is not None:
        out["timing/idle_s"] = wait_s
        if step_s:
            out["timing/idle_frac"] = wait_s / step_s
    tokens = metrics.get("rollout/num_generated_tokens")
    if tokens is not None and step_s:
        out["timing/rollout_tokens_per_s"] = tokens / step_s
    if "train/tokens_per_s" in metrics:
        out["timing/train_tokens_per_s"] = metrics["train/tokens_per_s"]
    return out
