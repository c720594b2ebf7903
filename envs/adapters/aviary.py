"""Run an Aviary (`fhaviary`, import name `aviary`) environment unchanged behind our `Environment`.

Why: Aviary is the reference API for scientific agent environments; wrapping instead of porting
lets existing Aviary environments train here as they are. The wrapped environment executes its
own tools; we only translate messages and tool schemas, and make sure nothing it raises escapes.

Aviary gives plain float rewards; the adapter records a reason: at the end of an episode
`correct` (reward >= 1), `partial` (> 0) or `wrong_value`; `budget_exceeded` when it was truncated;
`in_progress` otherwise. Text that could not be parsed into a tool call never reaches the Aviary
environment: it gets our own error observation (reason `invalid_format`), as in `ToolEnvironment`.
fhaviary is optional: importing this module without it raises ImportError with a hint.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

try:
    from aviary.core import Environment as AviaryEnv
    from aviary.core import Message as AviaryMessage
    from aviary.core import TaskDataset as AviaryTaskDataset
    from aviary.core import ToolCall as AviaryToolCall
    from aviary.core import ToolRequestMessage, ToolResponseMessage
except ImportError as err:  # pragma: no cover - exercised only without fhaviary
    raise ImportError("envs.adapters.aviary needs fhaviary: pip install fhaviary") from err

from envs.core import Environment, Message, Reward
from envs.dataset import Task, TaskDataset
from envs.registry import EnvSpec, ReferencePolicy
from envs.tools import Tool, error_message

logger = logging.getLogger(__name__)


def message_from_aviary(msg: AviaryMessage) -> Message:
    """Our Message for an Aviary observation (tool responses keep their call id and tool name)."""
    role = msg.role if msg.role in ("system", "user", "assistant", "tool") else "user"
    content = msg.content if isinstance(msg.content, str) else ("" if msg.content is None else str(msg.content))
    if isinstance(msg, ToolResponseMessage):
        return Message(role="tool", content=content, tool_call_id=msg.tool_call_id, name=msg.name)
    return Message(role=role, content=content)  # type: ignore[arg-type]


def action_to_aviary(action: Message) -> ToolRequestMessage:
    """The Aviary request for our assistant action (calls keep their ids)."""
    calls = [AviaryToolCall.from_name(c.name, id=c.id, **c.arguments) for c in action.tool_calls]
    return ToolRequestMessage(content=action.content or None, tool_calls=calls)


def tool_from_aviary(tool: Any) -> Tool:
    """A schema-only Tool (Aviary executes it) from an Aviary Tool."""
    return Tool.from_schema(tool.model_dump(by_alias=True, exclude_none=True))


def _reason(reward: float, done: bool, truncated: bool) -> str:
    if done:
        return "correct" if reward >= 1.0 else "partial" if reward > 0 else "wrong_value"
    return "budget_exceeded" if truncated else "in_progress"


class AviaryEnvironment(Environment):
    """Wraps one Aviary environment instance for one episode."""

    def __init__(self, env: AviaryEnv):
        self.env = env
        self.tools: list[Tool] = []

    async def reset(self) -> tuple[list[Message], list[Tool]]:
        observations, tools = await self.env.reset()
        self.tools = [tool_from_aviary(t) for t in tools]
        return [message_from_aviary(m) for m in observations], list(self.tools)

    async def step(self, action: Message) -> tuple[list[Message], float, bool, bool]:
        parse_obs = ([error_message(None, f"invalid tool call: {action.parse_error}")]
                     if action.parse_error else [])
        if action.parse_error and not action.tool_calls:
            return parse_obs, Reward(0.0, "invalid_format"), False, False
        try:
            observations, reward, done, truncated = await self.env.step(action_to_aviary(action))
        except Exception as err:  # noqa: BLE001 - a failing environment ends the episode, not the run
            logger.warning("aviary environment step failed: %s: %s", type(err).__name__, err)
            return ([error_message(None, f"environment failed: {type(err).__name__}")],
                    Reward(0.0, "env_error"), True, True)
        value = float(reward)
        out = [message_from_aviary(m) for m in observations] + parse_obs
        return out, Reward(value, _reason(value, done, truncated)), bool(done), bool(truncated)

    async def close(self) -> None:
        await self.env.close()


async def _no_reference(env: Environment, history: list[Message]) -> Message:
    raise NotImplementedError("this Aviary environment has no reference policy")


def aviary_spec(name: str, train: AviaryTaskDataset, heldout: AviaryTaskDataset | None = None,
                reference_policy: ReferencePolicy | None = None,
                make_aviary_env: Callable[[Task], AviaryEnv] | None = None) -> EnvSpec:
    """An EnvSpec over Aviary task datasets (one difficulty level; tasks are dataset indices).

    `make_dataset` takes the first `num_train` / `num_heldout` indices of `train` / `heldout` (all
    when fewer exist); `difficulties` and `seed` are ignored because the Aviary datasets fix them.
    """
    def make_dataset(num_train: int, num_heldout: int, difficulties: Sequence[int] = (1,),
                     seed: int = 0) -> TaskDataset:
        tasks = [Task(f"{name}/train/{i:05d}", name, "train", 1, seed, {"index": i})
                 for i in range(min(num_train, len(train)))]
        if heldout is not None:
            tasks += [Task(f"{name}/heldout/{i:05d}", name, "heldout", 1, seed, {"index": i})
                      for i in range(min(num_heldout, len(heldout)))]
        return TaskDataset(tasks)

    def make_env(task: Task) -> Environment:
        if make_aviary_env is not None:
            return AviaryEnvironment(make_aviary_env(task))
        source = train if task.split == "train" or heldout is None else heldout
        return AviaryEnvironment(source.get_new_env_by_idx(task.data["index"]))

    return EnvSpec(name=name, make_dataset=make_dataset, make_env=make_env,
                   reference_policy=reference_policy or _no_reference, difficulties=(1,),
                   description=f"Aviary environment {name}")
