"""Synthetic trajectories and run directories for the monitor tests (no Ray, no models)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rollout.trajectory import Trajectory


def submit_messages(answer: Any, extra_calls: int = 0) -> list[dict[str, Any]]:
    """A chat transcript: system, user, `extra_calls` calc calls with tool replies, then submit(answer)."""
    msgs: list[dict[str, Any]] = [{"role": "system", "content": "You are a chemist."},
                                  {"role": "user", "content": "How many grams?"}]
    for i in range(extra_calls):
        msgs.append({"role": "assistant", "content": f"calc {i}", "tool_calls": [
            {"id": f"c{i}", "type": "function", "function": {"name": "calc", "arguments": {"expr": "1+1"}}}]})
        msgs.append({"role": "tool", "content": "2", "tool_call_id": f"c{i}", "name": "calc"})
    if answer is not None:
        msgs.append({"role": "assistant", "content": "done", "tool_calls": [
            {"id": "s", "type": "function", "function": {"name": "submit", "arguments": {"answer": answer}}}]})
        msgs.append({"role": "tool", "content": "submitted", "tool_call_id": "s", "name": "submit"})
    return msgs


def traj(reward: float = 1.0, reason: str | None = None, finish: str = "env_done", *, task_id: str = "t0",
         env: str = "stoich", difficulty: int = 1, generated: int = 4, prompt: int = 3, turns: int = 2,
         tool_calls: int = 2, invalid: int = 0, version: int = 0, answer: Any = None) -> Trajectory:
    reason = reason if reason is not None else ("correct" if reward > 0 else "wrong_value")
    n = prompt + generated
    return Trajectory(task_id=task_id, group_id=f"g-{task_id}", env_name=env, token_ids=list(range(n)),
                      loss_mask=[0] * prompt + [1] * generated, sampler_logprobs=[0.0] * prompt + [-0.5] * generated,
                      reward=reward, reward_reason=reason, finish_reason=finish, policy_versions=[version],
                      difficulty=difficulty, num_turns=turns, num_tool_calls=tool_calls,
                      num_invalid_tool_calls=invalid, truncated=finish != "env_done",
                      messages=submit_messages(answer) if answer is not None else submit_messages(None, 1))


def healthy_step(step: int) -> dict[str, float]:
    """Metrics of a healthy GRPO step: rewards vary, entropy high, sampler and trainer agree."""
    return {"rollout/reward_mean": 0.4 + 0.01 * step, "rollout/reward_std": 0.45, "rollout/success_rate": 0.4,
            "rollout/truncation_rate": 0.05, "train/entropy": 1.2, "train/loss": 0.01, "train/pg_loss": 0.01,
            "train/grad_norm": 0.5, "train/token_mult_prob_error": 1.002, "train/sampler_logprob_diff_mean": 0.002}


def write_run_dir(run_dir: Path, steps: int = 6) -> Path:
    """A run directory as `labrl train` leaves it (metrics.jsonl, summary.json, config.json, ...)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"step": 0, "eval_sft/pass@1": 0.3, "eval_sft/ci95": 0.05}]
    for s in range(steps):
        rows.append({"step": s, **healthy_step(s), "rollout/reward_min": 0.0, "rollout/reward_max": 1.0,
                     "rollout/response_length_mean": 40.0 + s, "rollout/response_length_max": 90.0,
                     "rollout/reason/correct": float(3 + s), "rollout/reason/wrong_value": float(10 - s),
                     "rollout/reason/truncated_length": 1.0, "timing/step_s": 2.0, "timing/wait_rollout_s": 1.0,
                     "timing/train_s": 0.8, "timing/sync_s": 0.2})
    summary = {"eval_sft/pass@1": 0.3, "eval_sft/ci95": 0.05, "eval_grpo/pass@1": 0.5, "eval_grpo/ci95": 0.05}
    rows.append({"step": steps, **summary})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "config.json").write_text(json.dumps({"run_name": "synthetic", "grpo": {"num_steps": steps}}))
    (run_dir / "alarms.jsonl").write_text(json.dumps({"check": "truncation", "step": 3, "message": "too long <b>",
                                                      "value": 0.6, "threshold": 0.5, "stop": False}) + "\n")
    (run_dir / "samples.jsonl").write_text(json.dumps({"step": 0, "task_id": "t0", "reward": 1.0,
                                                       "reason": "correct", "prompt": "How <many>?",
                                                       "actions": "done", "tool_calls": "submit(1)",
                                                       "observations": "ok"}) + "\n")
    return run_dir
