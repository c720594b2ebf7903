"""Agent programs as environments: train an agent that is already a program written against the
OpenAI client, without rewriting it as an `Environment`.

A user writes two functions:

    async def agent(task: Task, client: openai.AsyncOpenAI) -> Any: ...   # the agent's own loop
    def verify(task: Task, answer: Any) -> Reward | float: ...           # may also be async

and registers them with `agent_env_spec`. Each episode gets a client whose `base_url` is a private
URL of labrl's OpenAI-compatible endpoint (rollout/openai_api/); whatever the agent asks the model
goes through the policy being trained, and the trajectory is assembled from the token ids the
engine saw and sampled, never from re-tokenized text. The agent runs its tools itself. Its
return value goes to `verify`, whose reward ends the episode.

An agent program has no scripted solver, so runs with one set `sft.enabled=false` (starting, for
example, from a checkpoint warmed up on the same task: `model.path=...`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

from envs.core import Environment, Reward
from envs.dataset import Task
from envs.registry import DatasetFactory, EnvSpec, no_reference_policy

# `client` is an `openai.AsyncOpenAI` (typed Any: envs does not import the client library).
AgentProgram = Callable[[Task, Any], Awaitable[Any]]
Verifier = Callable[[Task, Any], "Reward | float | Awaitable[Reward | float]"]


@dataclass(frozen=True)
class AgentProgramSpec:
    """The agent's loop (`run`) and the outcome check (`verify`) of one agent program."""

    run: AgentProgram
    verify: Verifier


def agent_env_spec(name: str, make_dataset: DatasetFactory, agent: AgentProgram, verify: Verifier,
                   difficulties: Sequence[int], description: str = "",
                   defaults: dict[str, Any] | None = None) -> EnvSpec:
    """An `EnvSpec` whose episodes are runs of `agent`, scored by `verify` (see the module doc)."""

    def make_env(task: Task) -> Environment:
        raise TypeError(f"{name!r} is an agent program: its episodes run through labrl's OpenAI "
                        "endpoint (rollout/openai_api), not as an Environment")

    return EnvSpec(name=name, make_dataset=make_dataset, make_env=make_env,
                   reference_policy=no_reference_policy, difficulties=tuple(difficulties),
                   description=description, defaults=dict(defaults or {}),
                   agent=AgentProgramSpec(run=agent, verify=verify))
