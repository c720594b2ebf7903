"""An Aviary environment, defined here with Aviary's own API, runs unchanged through the adapter."""

from __future__ import annotations

import asyncio

import pytest

aviary_core = pytest.importorskip("aviary.core", reason="fhaviary not installed")

from envs.adapters.aviary import AviaryEnvironment, aviary_spec  # noqa: E402
from envs.parsing import parse_assistant  # noqa: E402
from envs.tool_env import make_action  # noqa: E402


class AddState(aviary_core.DummyEnvState):
    target: int = 0


class AddEnv(aviary_core.Environment[AddState]):
    """Aviary-style: the agent adds two numbers with `add`, then calls `answer`."""

    def __init__(self, a: int, b: int, explode: bool = False):
        self.a, self.b, self.explode = a, b, explode

    async def reset(self):
        def add(x: int, y: int) -> str:
            """Add two integers.

            Args:
                x: First.
                y: Second.
            """
            return str(x + y)

        def answer(value: int, state: AddState) -> str:
            """Give the final answer.

            Args:
                value: The sum.
                state: Environment state.
            """
            state.done = True
            state.reward = 1.0 if value == state.target else 0.0
            return "done"

        self.state = AddState(messages=[], target=self.a + self.b)
        self.tools = [aviary_core.Tool.from_function(add), aviary_core.Tool.from_function(answer)]
        return [aviary_core.Message(content=f"What is {self.a}+{self.b}?")], self.tools

    async def step(self, action):
        if self.explode:
            raise RuntimeError("kaboom")
        msgs = await self.exec_tool_calls(action, state=self.state, handle_tool_exc=True)
        return msgs, self.state.reward, self.state.done, False


def test_aviary_episode_through_the_adapter() -> None:
    async def main() -> None:
        env = AviaryEnvironment(AddEnv(2, 3))
        observations, tools = await env.reset()
        assert observations[0].content == "What is 2+3?" and observations[0].role == "user"
        add = next(t for t in tools if t.name == "add").schema["function"]
        assert add["parameters"]["required"] == ["x", "y"] and add["description"].startswith("Add two")
        assert "state" not in next(t for t in tools if t.name == "answer").parameters["properties"]

        [obs], reward, done, _ = await env.step(parse_assistant('<tool_call>{"name": "add"</tool_call>'))
        assert obs.is_error and reward.reason == "invalid_format" and not done
        [obs], reward, done, _ = await env.step(make_action(("add", {"x": 2, "y": 3})))
        assert obs.role == "tool" and obs.content == "5" and obs.tool_call_id == "call_0" and not done
        [obs], reward, done, _ = await env.step(make_action(("answer", {"value": 5})))
        assert done and float(reward) == 1.0 and reward.reason == "correct"
        await env.close()

    asyncio.run(main())


def test_failing_aviary_environment_ends_with_an_error_observation() -> None:
    async def main() -> None:
        env = AviaryEnvironment(AddEnv(1, 1, explode=True))
        await env.reset()
        [obs], reward, done, truncated = await env.step(make_action(("add", {"x": 1, "y": 1})))
        assert obs.is_error and reward.reason == "env_error" and done and truncated

    asyncio.run(main())


class AddDataset(aviary_core.TaskDataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def get_new_env_by_idx(self, idx: int):
        return AddEnv(idx, 10)


def test_spec_over_aviary_datasets() -> None:
    spec = aviary_spec("adder", AddDataset(5), AddDataset(2))
    ds = spec.make_dataset(3, 9, (1,), 0)
    assert len(ds.tasks("train")) == 3 and len(ds.tasks("heldout")) == 2
    env = spec.make_env(ds.tasks("train")[2])
    observations, _ = asyncio.run(env.reset())
    assert observations[0].content == "What is 2+10?"
