"""Episode rules of ToolEnvironment: budget, verifier, and the reward reason of every failure."""

from __future__ import annotations

import asyncio
import time

import pytest

from envs.core import Message, Reward
from envs.dataset import Task
from envs.parsing import parse_assistant
from envs.tool_env import ToolEnvironment, make_action
from envs.tools import Tool


class EchoEnv(ToolEnvironment):
    """A minimal environment: `echo`, a tool that fails, one that hangs, and `submit`."""

    def prompt(self) -> str:
        return "Say 42."

    def make_tools(self) -> list[Tool]:
        return [Tool.from_function(self.echo, "echo"), Tool.from_function(self.fail, "fail"),
                Tool.from_function(self.hang, "hang"),
                Tool.from_function(self.submit, "submit", ends_episode=True)]

    def echo(self, text: str) -> str:
        """Echo text.

        Args:
            text: Text.
        """
        return text

    def fail(self) -> str:
        """Always raises."""
        raise RuntimeError("broken")

    def hang(self) -> str:
        """Takes too long."""
        time.sleep(0.3)
        return "late"

    def submit(self, answer: int) -> Reward:
        """Submit.

        Args:
            answer: The answer.
        """
        return Reward(1.0, "correct") if answer == 42 else Reward(0.0, "wrong_value")


def _env(budget: int = 4) -> EchoEnv:
    return EchoEnv(Task("t", "echo", "train", 1, 0, {}), max_tool_calls=budget, tool_timeout_s=0.05,
                   max_arg_chars=100)


def _step(env: EchoEnv, action: Message | str):
    if isinstance(action, str):
        action = parse_assistant(action)
    return asyncio.run(env.step(action))


def _call(name: str, **args) -> Message:
    return make_action((name, args))


@pytest.fixture
def env() -> EchoEnv:
    env = _env()
    observations, tools = asyncio.run(env.reset())
    assert observations[0].role == "user" and [t.name for t in tools] == ["echo", "fail", "hang", "submit"]
    return env


@pytest.mark.parametrize("action, reason, text", [
    ('<tool_call>{"name": "echo", "arguments": {"text": }</tool_call>', "invalid_format", "invalid tool call"),
    ('<tool_call>{"arguments": {}}</tool_call>', "invalid_format", "missing tool name"),
    ("I think the answer is 42.", "invalid_format", "no tool call"),
    (_call("nope"), "tool_error", "unknown tool 'nope'"),
    (_call("echo", text=5), "tool_error", "'text' must be string"),
    (_call("echo", text="x" * 500), "tool_error", "too long"),
    (_call("fail"), "tool_error", "RuntimeError: broken"),
    (_call("hang"), "timeout", "timed out"),
    (_call("submit", answer="42"), "tool_error", "'answer' must be integer"),
])
def test_each_failure_is_an_error_observation_with_its_reason(env, action, reason, text) -> None:
    observations, reward, done, truncated = _step(env, action)
    assert len(observations) == 1 and observations[0].is_error and observations[0].role == "tool"
    assert text in observations[0].content
    assert float(reward) == 0.0 and reward.reason == reason
    assert not done and not truncated and env.calls_used == 1


def test_failure_ending_the_budget_keeps_its_reason() -> None:
    env = _env(budget=2)
    asyncio.run(env.reset())
    assert _step(env, _call("echo", text="hi"))[1].reason == "in_progress"
    observations, reward, done, truncated = _step(env, "no call here")
    assert done and truncated and reward.reason == "invalid_format" and float(reward) == 0.0


def test_budget_exhaustion() -> None:
    env = _env(budget=2)
    asyncio.run(env.reset())
    observations, reward, done, truncated = _step(env, make_action(("echo", {"text": "a"}), ("echo", {"text": "b"}),
                                                                   ("submit", {"answer": 42})))
    assert [o.content for o in observations] == ["a", "b", "Error: tool budget exhausted"]
    assert done and truncated and reward.reason == "budget_exceeded"
    with pytest.raises(RuntimeError):
        _step(env, _call("echo", text="again"))


def test_submit_ends_and_skips_later_calls(env) -> None:
    observations, reward, done, truncated = _step(
        env, make_action(("echo", {"text": "a"}), ("submit", {"answer": 42}), ("echo", {"text": "b"})))
    assert [o.content for o in observations] == ["a", "correct", "Error: episode already ended"]
    assert float(reward) == 1.0 and reward.reason == "correct" and done and not truncated


def test_wrong_answer_ends_with_wrong_value(env) -> None:
    observations, reward, done, truncated = _step(env, _call("submit", answer=41))
    assert done and not truncated and float(reward) == 0.0 and reward.reason == "wrong_value"


def test_valid_call_next_to_a_parse_error(env) -> None:
    text = ('<tool_call>{"name": "echo", "arguments": {"text": "ok"}}</tool_call>'
            '<tool_call>{"name": "echo", "arguments": [1]}</tool_call>')
    observations, reward, done, _ = _step(env, text)
    assert [o.is_error for o in observations] == [False, True] and observations[0].content == "ok"
    assert reward.reason == "invalid_format" and not done and env.calls_used == 2


def test_step_before_reset_raises() -> None:
    with pytest.raises(RuntimeError):
        _step(_env(), _call("echo", text="x"))


def test_environment_needs_a_verifier() -> None:
    class NoSubmit(EchoEnv):
        def make_tools(self) -> list[Tool]:
            return [Tool.from_function(self.echo, "echo")]

    with pytest.raises(TypeError):
        NoSubmit(Task("t", "echo", "train", 1, 0, {}))


def test_tool_timeout_set_by_the_runner_is_honoured_and_the_episode_goes_on() -> None:
    """The env worker sets `tool_timeout_s` after building the environment (from env.tool_timeout_s)."""
    env = EchoEnv(Task("t", "echo", "train", 1, 0, {}))
    env.tool_timeout_s = 0.05
    asyncio.run(env.reset())

    async def timed_step():  # timed inside the loop: asyncio.run waits for the orphaned thread
        t0 = time.monotonic()
        return await env.step(_call("hang")), time.monotonic() - t0

    (observations, reward, done, truncated), step_s = asyncio.run(timed_step())
    assert step_s < 0.25
    assert [o.content for o in observations] == ["Error: hang timed out after 0.05s"]
    assert observations[0].is_error and observations[0].name == "hang" and reward.reason == "timeout"
    assert not done and not truncated
    observations, reward, done, truncated = _step(env, _call("submit", answer=42))
    assert done and not truncated and reward.reason == "correct"
