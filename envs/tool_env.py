"""`ToolEnvironment`: the base class for environments where the agent acts only through tool calls.

Why a base class: the episode rules (what counts against the budget, how an episode ends, which
reason a reward carries) must be identical across environments, or rewards and failure rates are
not comparable between them. Subclasses only provide the prompt, the tools and a verifier tool.

Episode rules:
- Every tool call counts against `max_tool_calls`; so does an assistant message with no tool call
  (it gets an error observation asking for one) and a message with an unparseable call.
- A successful call of a tool with `ends_episode=True` (the verifier, usually `submit`) ends the
  episode: done=True, truncated=False, and its `Reward` is the episode reward. Calls after it in
  the same message are not run.
- When the budget runs out first: done=True, truncated=True, reward 0 with reason
  `budget_exceeded`, or the reason of the last step's error (`invalid_format`, `tool_error`,
  `timeout`) if that step failed.
- Intermediate steps return reward 0 with reason `in_progress`, or the step's first error reason.
- `step()` before `reset()` or after the end is a bug in the caller and raises RuntimeError.
"""

from __future__ import annotations

import abc
import logging
from typing import Any

from envs.core import DEFAULT_TOOL_TIMEOUT_S, NO_REWARD, Environment, Message, Reward, ToolCall
from envs.dataset import Task
from envs.tools import DEFAULT_MAX_ARG_CHARS, ErrorKind, Tool, error_message, run_tool_call

logger = logging.getLogger(__name__)

REASONS = ("correct", "wrong_value", "partial", "invalid_format", "tool_error", "budget_exceeded",
           "timeout")
NO_CALL_TEXT = "no tool call"


def error_reason(kind: ErrorKind) -> str:
    """The reward reason for a failed call of kind `kind`."""
    return "timeout" if kind == "timeout" else "tool_error"


def outcome_reason(score: float) -> str:
    """The reason of a final score that came without one: correct (>= 1), partial (> 0), wrong_value."""
    return "correct" if score >= 1.0 else "partial" if score > 0.0 else "wrong_value"


def as_reward(value: Any) -> Reward:
    """A verifier's return value as a Reward (plain numbers get a reason from their value)."""
    if isinstance(value, Reward):
        return value
    score = float(value)
    return Reward(score, outcome_reason(score))


class ToolEnvironment(Environment):
    """An episode of tool calls against `self.tools`, ended by a verifier tool or the budget.

    Subclasses implement `prompt()` and `make_tools()`. Tools may be bound methods (they see the
    environment through `self`) or functions with a `state` parameter, which receives `self.state`
    (the environment itself unless a subclass sets something else). A call that runs longer than
    `self.tool_timeout_s` (or its tool's own `timeout_s`) is an error observation with reason
    `timeout`, counted against the budget like any failed call; the episode goes on.
    """

    def __init__(self, task: Task, *, max_tool_calls: int = 8,
                 tool_timeout_s: float = DEFAULT_TOOL_TIMEOUT_S, max_arg_chars: int = DEFAULT_MAX_ARG_CHARS):
        self.task = task
        self.max_tool_calls = max_tool_calls
        self.tool_timeout_s = tool_timeout_s
        self.max_arg_chars = max_arg_chars
        self.state: Any = self
        self.calls_used = 0
        self.started = False
        self.finished = False
        self.reward: Reward = NO_REWARD
        self.tools: list[Tool] = self.make_tools()
        self._by_name = {t.name: t for t in self.tools}
        if not any(t.ends_episode for t in self.tools):
            raise TypeError(f"{type(self).__name__}: no tool has ends_episode=True (a verifier)")

    @abc.abstractmethod
    def prompt(self) -> str:
        """The user message that states the task."""

    @abc.abstractmethod
    def make_tools(self) -> list[Tool]:
        """The tools of this episode; at least one must have `ends_episode=True`."""

    def system_prompt(self) -> str | None:
        """An optional system message (none by default: small models have little context)."""
        return None

    async def reset(self) -> tuple[list[Message], list[Tool]]:
        self.started, self.finished, self.calls_used, self.reward = True, False, 0, NO_REWARD
        system = self.system_prompt()
        observations = [Message(role="system", content=system)] if system else []
        observations.append(Message(role="user", content=self.prompt()))
        return observations, list(self.tools)

    async def step(self, action: Message) -> tuple[list[Message], float, bool, bool]:
        if not self.started:
            raise RuntimeError("step() before reset()")
        if self.finished:
            raise RuntimeError("step() after the episode ended")
        observations: list[Message] = []
        step_error: str | None = None
        ended: Reward | None = None
        if not action.tool_calls and not action.parse_error:
            self.calls_used += 1
            observations.append(error_message(None, NO_CALL_TEXT))
            step_error = "invalid_format"
        for call in action.tool_calls:
            message, reason, reward = await self._run_call(call, ended is not None)
            observations.append(message)
            step_error = step_error or reason
            ended = ended or reward
        if action.parse_error and ended is None:
            self.calls_used = min(self.calls_used + 1, self.max_tool_calls)
            observations.append(error_message(None, f"invalid tool call: {action.parse_error}"))
            step_error = step_error or "invalid_format"
        return self._finish_step(observations, step_error, ended)

    async def _run_call(self, call: ToolCall, after_end: bool) -> tuple[Message, str | None, Reward | None]:
        """(observation, error reason or None, verifier reward or None) for one call."""
        if after_end:
            return error_message(call, "episode already ended"), None, None
        if self.calls_used >= self.max_tool_calls:
            return error_message(call, "tool budget exhausted"), None, None
        self.calls_used += 1
        result = await run_tool_call(call, self._by_name, self.state, self.tool_timeout_s,
                                     self.max_arg_chars)
        if result.error is not None:
            return result.message, error_reason(result.error), None
        if result.tool is not None and result.tool.ends_episode:
            return result.message, None, as_reward(result.value)
        return result.message, None, None

    def _finish_step(self, observations: list[Message], step_error: str | None,
                     ended: Reward | None) -> tuple[list[Message], float, bool, bool]:
        if ended is not None:
            self.finished, self.reward = True, ended
            return observations, ended, True, False
        if self.calls_used >= self.max_tool_calls:
            self.finished = True
            self.reward = Reward(0.0, step_error or "budget_exceeded")
            return observations, self.reward, True, True
        return observations, Reward(0.0, step_error or "in_progress"), False, False


def make_action(*calls: tuple[str, dict[str, Any]], content: str = "") -> Message:
    """An assistant message calling `calls` in order (ids `call_0`, ...), for reference policies.

    The bundled reference policies make one call a turn: a turn of a tiny character-level model
    has room for about one call (the default agent loop allows 96 new tokens a turn).
    """
    return Message(role="assistant", content=content,
                   tool_calls=[ToolCall(id=f"call_{i}", name=name, arguments=dict(args))
                               for i, (name, args) in enumerate(calls)])


def tool_results(history: list[Message]) -> list[tuple[ToolCall, Message]]:
    """(call, observation) pairs in order, matching each assistant turn's calls to the tool
    messages that follow it by id. Ids repeat across turns (`call_0` every turn), so matching is
    per turn. Failed calls are included; check `observation.is_error`.
    """
    pairs: list[tuple[ToolCall, Message]] = []
    pending: dict[str, ToolCall] = {}
    for msg in history:
        if msg.role == "assistant":
            pending = {c.id: c for c in msg.tool_calls}
        elif msg.role == "tool" and msg.tool_call_id in pending:
            pairs.append((pending.pop(msg.tool_call_id), msg))
    return pairs


def successful_results(history: list[Message], name: str) -> list[tuple[ToolCall, str]]:
    """(call, output text) of the successful calls of tool `name` in `history`, in order."""
    return [(c, m.content) for c, m in tool_results(history) if c.name == name and not m.is_error]
