"""labrl's side of the "repeat this string" task: a one-turn environment with no tools.

Config: `env.name=benchmarks.repeat_env:SPEC env.max_turns=1`. The reward is
`benchmarks.repeat_task.repeat_score` of the assistant's text, the same function TRL's reward uses.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from benchmarks.repeat_task import make_target, prompt_text, repeat_score
from envs.core import Environment, Message, Reward
from envs.dataset import Task, TaskDataset
from envs.registry import EnvSpec, register_env
from envs.tools import Tool

NAME = "bench_repeat"


class RepeatEnv(Environment):
    """Say the target string back; one turn, then scored."""

    def __init__(self, task: Task):
        self.task = task

    async def reset(self) -> tuple[list[Message], list[Tool]]:
        return [Message(role="user", content=prompt_text(self.task.data["target"]))], []

    async def step(self, action: Message) -> tuple[list[Message], float, bool, bool]:
        score, reason = repeat_score(action.content, self.task.data["target"])
        return [], Reward(score, reason), True, False


def generate_task(rng: random.Random, difficulty: int) -> dict[str, Any]:  # noqa: ARG001 - one level
    return {"target": make_target(rng)}


def make_dataset(num_train: int, num_heldout: int, difficulties: Sequence[int] = (1,), seed: int = 0) -> TaskDataset:
    return TaskDataset.generate(NAME, generate_task, num_train, num_heldout, difficulties, seed)


async def reference_policy(env: Environment, history: list[Message]) -> Message:  # noqa: ARG001
    if not isinstance(env, RepeatEnv):
        raise TypeError(f"{NAME} reference policy needs a RepeatEnv, got {type(env).__name__}")
    return Message(role="assistant", content=env.task.data["target"])


def prompts(num: int, seed: int = 0) -> list[tuple[str, str]]:
    """(user prompt, target) of the first `num` training tasks: what TRL trains on."""
    tasks = make_dataset(num, 1, (1,), seed).tasks("train")
    return [(prompt_text(t.data["target"]), t.data["target"]) for t in tasks]


SPEC = register_env(EnvSpec(name=NAME, make_dataset=make_dataset, make_env=RepeatEnv,
                            reference_policy=reference_policy, difficulties=(1,),
                            description="single turn: repeat a random lowercase string"))
