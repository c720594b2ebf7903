"""Agent-program episodes end as native ones do: every way an agent can fail has a finish reason
and a reward reason, and a failed one is dropped and counted by the pipeline (finish `error`).

Real `AgentEndpoint`, real `openai` client, real sessions; the engine is scripted.
"""

from __future__ import annotations

import asyncio

from actors.types import SamplingSpec
from envs.agent import AgentProgramSpec
from envs.chat import ChatCodec
from envs.core import Reward
from envs.dataset import Task
from models.tiny import build_tokenizer
from rollout.agent_episode import run_agent_episode
from rollout.openai_api.server import AgentEndpoint
from rollout.openai_api.session import EpisodeSession
from tests.rollout.test_openai_session import ScriptedEngine

TASK = Task(id="t0", env_name="lab", split="train", difficulty=1, seed=0)
CODEC = ChatCodec(build_tokenizer())
REPLY = CODEC.encode("42") + [CODEC.eos_token_id]
SAMPLING = SamplingSpec(max_tokens=16, stop_token_ids=[CODEC.eos_token_id])


async def ask_until_done(task, client, turns=2):
    messages = [{"role": "user", "content": "What is 6 x 7?"}]
    for _ in range(turns):
        reply = (await client.chat.completions.create(model="policy", messages=messages)).choices[0].message
        messages += [reply.model_dump(exclude_none=True), {"role": "user", "content": "Sure?"}]
    return reply.content


def verify(task, answer):
    return Reward(1.0, "correct") if answer == "42" else Reward(0.0, "wrong_value")


async def _play(run, check=verify, max_turns=4, timeout_s=30.0):
    endpoint = AgentEndpoint()
    await endpoint.start()
    session = EpisodeSession(CODEC, ScriptedEngine([REPLY] * 8), SAMPLING, 512, max_turns)
    try:
        return await run_agent_episode(AgentProgramSpec(run, check), TASK, "g0", session, endpoint, timeout_s)
    finally:
        await endpoint.stop()


def play(run, **kw):
    return asyncio.run(_play(run, **kw))


def test_a_verified_answer_ends_the_episode_with_its_reward_and_the_sampled_tokens():
    t = play(ask_until_done)
    assert (t.finish_reason, t.reward, t.reward_reason, t.num_turns) == ("env_done", 1.0, "correct", 2)
    assert t.num_generated_tokens == 2 * len(REPLY) and t.policy_versions == [0, 0] and not t.forked_segments
    assert t.messages[-1] == {"role": "assistant", "content": "42"}


def test_every_failure_has_a_reason():
    async def raises(task, client):
        await ask_until_done(task, client, turns=1)
        raise KeyError("the agent's own bug")

    async def silent(task, client):
        return "42"

    async def slow(task, client):
        await ask_until_done(task, client, turns=1)
        await asyncio.sleep(10)

    def broken_verifier(task, answer):
        raise ValueError("cannot judge")

    cases = {"raises": (play(raises), "error", "agent_error"),
             "never asks": (play(silent), "error", "no_completions"),
             "verifier raises": (play(ask_until_done, check=broken_verifier), "error", "verify_error"),
             "too slow": (play(slow, timeout_s=1.0), "timeout", "timeout"),
             # the third request is refused (turn budget); the agent lets the 400 propagate
             "turn budget": (play(lambda task, client: ask_until_done(task, client, turns=3), max_turns=2),
                             "budget", "budget_exceeded")}
    for name, (t, finish, reason) in cases.items():
        assert (t.finish_reason, t.reward_reason, t.reward) == (finish, reason, 0.0), name
    assert cases["too slow"][0].truncated and cases["turn budget"][0].truncated
    assert cases["raises"][0].num_generated_tokens == len(REPLY)  # what it sampled is still recorded


def test_a_verifier_that_says_the_budget_ran_out_ends_the_episode_truncated():
    t = play(ask_until_done, check=lambda task, answer: Reward(0.0, "budget_exceeded"))
    assert (t.finish_reason, t.truncated) == ("budget", True)


def test_concurrent_episodes_share_one_endpoint_without_mixing():
    async def main():
        endpoint = AgentEndpoint()
        await endpoint.start()
        sessions = [EpisodeSession(CODEC, ScriptedEngine([REPLY] * 4), SAMPLING, 512, 4) for _ in range(8)]
        trajs = await asyncio.gather(*(run_agent_episode(AgentProgramSpec(ask_until_done, verify), TASK, "g",
                                                         s, endpoint, 30.0) for s in sessions))
        await endpoint.stop()
        return sessions, trajs

    sessions, trajs = asyncio.run(main())
    assert [s.turns for s in sessions] == [2] * 8 and all(t.reward == 1.0 for t in trajs)
    assert all(len(s.completions) == 2 for s in sessions)
