"""The environment contract: typed messages, tool calls, rewards with reasons, and `Environment`.

Shaped after Aviary: `reset()` gives the first observations and the tools the agent may call,
`step(action)` executes the agent's tool calls and returns observations, a reward, and whether the
episode ended (`done`) or was cut short (`truncated`). Every reward carries a reason.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from envs.tools import Tool

Role = Literal["system", "user", "assistant", "tool"]
DEFAULT_TOOL_TIMEOUT_S = 5.0


@dataclass
class ToolCall:
    """One call the model asked for: `name(**arguments)`, identified by `id`."""

    id: str
    name: str
    arguments: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ToolCall":
        """Inverse of `to_dict` (also accepts the flat form `{"id", "name", "arguments"}`)."""
        fn = d.get("function", d)
        return cls(id=str(d.get("id", "")), name=fn["name"], arguments=dict(fn.get("arguments") or {}))


@dataclass
class Message:
    """A chat message. Assistant messages may carry tool calls; tool messages answer one call.

    `parse_error` is set on an assistant message whose text looked like a tool call but could not
    be parsed (malformed JSON, missing name, ...): the environment turns it into an error
    observation instead of crashing. `is_error` marks a tool message that reports a failed call
    (unknown tool, bad arguments, the tool raised or timed out); agent loops count these.
    """

    role: Role
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None
    parse_error: str | None = None
    is_error: bool = False

    def to_chat(self) -> dict[str, Any]:
        """The dict a Hugging Face chat template expects."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-serialisable (for HTTP environments and logs); see `from_dict`."""
        return {"role": self.role, "content": self.content,
                "tool_calls": [c.to_dict() for c in self.tool_calls],
                "tool_call_id": self.tool_call_id, "name": self.name,
                "parse_error": self.parse_error, "is_error": self.is_error}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Message":
        return cls(role=d["role"], content=d.get("content") or "",
                   tool_calls=[ToolCall.from_dict(c) for c in d.get("tool_calls") or []],
                   tool_call_id=d.get("tool_call_id"), name=d.get("name"),
                   parse_error=d.get("parse_error"), is_error=bool(d.get("is_error", False)))


class Reward(float):
    """A float reward that remembers why it was given (`correct`, `wrong_value`, `tool_error`, ...).

    Being a float keeps `step()` a plain 4-tuple, as in Aviary, while the reason travels with it.
    `masked=True` on an episode's final reward says the verifier could not judge the episode (NeMo
    Gym's `mask_sample`): the trajectory is then dropped before training and counted under
    `accounting/dropped/masked_by_env`, never trained on as a zero.
    """

    reason: str
    masked: bool

    def __new__(cls, value: float, reason: str, masked: bool = False) -> "Reward":
        obj = super().__new__(cls, value)
        obj.reason = reason
        obj.masked = masked
        return obj

    def __reduce__(self):  # keep the reason across pickling (Ray)
        return (Reward, (float(self), self.reason, self.masked))


NO_REWARD = Reward(0.0, "in_progress")


def reward_reason(reward: float) -> str:
    """The reason attached to a reward; plain floats (e.g. from adapters) have none recorded."""
    return getattr(reward, "reason", "unspecified")


class Environment(abc.ABC):
    """One episode of a task. Subclasses implement `reset` and `step`; instances are not reused.

    `tool_timeout_s` is the wall-clock limit of one tool call. Whoever runs the episode may set it
    after building the environment and before `reset()` (the env worker sets it from the run's
    `env.tool_timeout_s`); environments that execute tools themselves honour it (`ToolEnvironment`
    does: a call that runs longer becomes an error observation). Environments whose tools run
    elsewhere (the Aviary and HTTP adapters) leave the limit to whatever executes them.
    """

    tool_timeout_s: float = DEFAULT_TOOL_TIMEOUT_S

    @abc.abstractmethod
    async def reset(self) -> tuple[list[Message], list["Tool"]]:
        """Start the episode: first observations (usually one user message) and the tools."""

    @abc.abstractmethod
    async def step(self, action: Message) -> tuple[list[Message], float, bool, bool]:
        """Act: returns (observations, reward, done, truncated)."""

    async def close(self) -> None:
        """Release resources (HTTP sessions, subprocesses). Default: nothing to release."""
