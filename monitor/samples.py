"""Sample trajectories for humans: what the agent actually said, called and got back.

Curves show that reward moved; only transcripts show *why* (reward hacking, a tool misused, a
format drift). `trajectory_sample` flattens a trajectory's chat `messages` into the columns of the
W&B table and of `samples.jsonl`. `SampleRecorder` picks a few trajectories of every N-th step
from the batch the pipeline reports.
"""

from __future__ import annotations

import json
from typing import Any

from rollout.trajectory import Trajectory

SAMPLE_COLUMNS = ("step", "task_id", "env", "difficulty", "prompt", "actions", "tool_calls", "observations",
                  "reward", "reason", "finish_reason", "num_turns")


def _call_text(call: dict[str, Any]) -> str:
    fn = call.get("function", call)
    args = fn.get("arguments", {})
    return f"{fn.get('name', '?')}({json.dumps(args, sort_keys=True) if not isinstance(args, str) else args})"


def submitted_answer(messages: list[dict[str, Any]], tool_name: str = "submit") -> str | None:
    """The arguments of the last `submit` tool call of the episode, as canonical JSON (None if none).

    Canonical (sorted keys) so that equal answers compare equal in majority voting.
    """
    for msg in reversed(messages):
        if msg.get("role") != "assistant":
            continue
        for call in reversed(msg.get("tool_calls") or []):
            fn = call.get("function", call)
            if fn.get("name") == tool_name:
                args = fn.get("arguments", {})
                return json.dumps(args, sort_keys=True) if not isinstance(args, str) else args
    return None


def trajectory_sample(t: Trajectory, step: int) -> dict[str, Any]:
    """One row: prompt (system + first user turns), assistant texts, tool calls, tool observations."""
    prompt, actions, calls, observations = [], [], [], []
    seen_assistant = False
    for msg in t.messages:
        role, content = msg.get("role"), msg.get("content") or ""
        if role == "assistant":
            seen_assistant = True
            actions.append(content)
            calls.extend(_call_text(c) for c in msg.get("tool_calls") or [])
        elif role in ("system", "user") and not seen_assistant:
            prompt.append(f"[{role}] {content}")
        else:
            observations.append(f"[{role}] {content}")
    return {"step": step, "task_id": t.task_id, "env": t.env_name, "difficulty": t.difficulty,
            "prompt": "\n".join(prompt), "actions": "\n---\n".join(actions),
            "tool_calls": "\n".join(calls), "observations": "\n---\n".join(observations),
            "reward": float(t.reward), "reason": t.reward_reason, "finish_reason": t.finish_reason,
            "num_turns": t.num_turns}


class SampleRecorder:
    """Picks up to `num` trajectories of every step whose index is a multiple of `every`.

    From each group it takes the best and the worst trajectory: the contrast GRPO learns from.
    """

    def __init__(self, every: int, num: int):
        self.every, self.num = every, num

    def pick(self, step: int, groups: list[list[Trajectory]]) -> list[Trajectory]:
        if self.every <= 0 or step % self.every:
            return []
        kept: list[Trajectory] = []
        for group in groups:
            ranked = sorted(group, key=lambda t: t.reward)
            kept += [ranked[-1]] + ([ranked[0]] if len(ranked) > 1 else [])
        return kept[: self.num]
