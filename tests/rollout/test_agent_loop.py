"""The agent loop is token-in/token-out: the episode's tokens are exactly the chat rendering of the
conversation, loss lands only on what the policy generated, and failures end episodes, not runs."""

import asyncio

import pytest

from configs.schema import EnvConfig, GenerationConfig
from envs.chat import ChatCodec
from envs.registry import get_env_spec
from models.tiny import build_tokenizer
from rollout.agent_loop import PolicyTurn, run_episode
from rollout.policies import ReferenceTurnPolicy

SPEC = get_env_spec("stoichiometry")
TASKS = SPEC.make_dataset(8, 4, [1, 2], 0).tasks("train")


@pytest.fixture(scope="module")
def codec():
    return ChatCodec(build_tokenizer())


def _play(policy, codec, task, env_cfg=EnvConfig(), generation=GenerationConfig(max_new_tokens=160)):
    return asyncio.run(run_episode(SPEC.make_env(task), task, "g0", policy, codec, env_cfg, generation))


@pytest.mark.parametrize("task", TASKS[:4], ids=lambda t: t.id)
def test_reference_episode_tokens_match_chat_rendering(codec, task):
    traj = _play(ReferenceTurnPolicy(SPEC.reference_policy, codec), codec, task)
    assert traj.success and traj.finish_reason == "env_done" and traj.num_tool_calls >= 2
    text = codec.decode(traj.token_ids)
    # Generated spans, joined, are exactly the assistant turns of the rendering.
    generated = "".join(codec.decode([t]) for t, m in zip(traj.token_ids, traj.loss_mask) if m)
    assistant_turns = [seg.split("<|im_end|>")[0] + "<|im_end|>"
                       for seg in text.split("<|im_start|>assistant\n")[1:]]
    assert generated == "".join(assistant_turns)
    assert "<tool_response>" not in generated and "<|im_start|>" not in generated
    assert text.startswith("<|im_start|>user\n")
    assert traj.loss_mask[0] == 0 and traj.loss_mask[-1] == 1  # ends on the closing EOS of a turn


class _Babbler:
    """A policy that never closes its turn: the episode must end as truncated by length."""

    async def act(self, ctx):
        return PolicyTurn([10] * ctx.max_tokens, [-1.0] * ctx.max_tokens, "length", 3)


class _NoToolCalls:
    """Answers in prose forever: the turn budget must end the episode."""

    def __init__(self, codec):
        self.ids = codec.encode("I think it is 42.") + [codec.eos_token_id]

    async def act(self, ctx):
        return PolicyTurn(self.ids, [-0.5] * len(self.ids), "stop", 7)


def test_length_truncation_is_recorded(codec):
    traj = _play(_Babbler(), codec, TASKS[0])
    assert traj.finish_reason == "length" and traj.truncated and traj.reward == 0.0
    assert traj.policy_versions == [3] and sum(traj.loss_mask) == 160


def test_truncated_turn_is_scored_when_asked(codec):
    """A turn cut by length that says the right thing: unscored by default, scored on request."""
    from benchmarks.repeat_env import SPEC as REPEAT

    task = REPEAT.make_dataset(1, 1).tasks("train")[0]

    class CutAnswer:
        async def act(self, ctx):
            ids = codec.encode(task.data["target"])
            return PolicyTurn(ids, [-1.0] * len(ids), "length", 2)

    for score, reward, finish in [(False, 0.0, "length"), (True, 1.0, "env_done")]:
        env_cfg = EnvConfig(max_turns=1, score_truncated_turns=score)
        traj = asyncio.run(run_episode(REPEAT.make_env(task), task, "g0", CutAnswer(), codec, env_cfg,
                                       GenerationConfig()))
        assert (traj.reward, traj.finish_reason, traj.truncated) == (reward, finish, True)


class _SpansAnUpdate(_NoToolCalls):
    """Each turn was sampled partly by version 7 and partly by 8 (an in-flight weight update)."""

    async def act(self, ctx):
        turn = await super().act(ctx)
        turn.newest_policy_version = 8
        return turn


def test_turns_spanning_an_update_record_both_versions(codec):
    traj = _play(_SpansAnUpdate(codec), codec, TASKS[0], EnvConfig(max_turns=2), GenerationConfig())
    assert traj.policy_versions == [7, 8] * traj.num_turns and traj.policy_version == 7  # staleness: oldest


def test_prose_without_tool_calls_hits_the_budget(codec):
    traj = _play(_NoToolCalls(codec), codec, TASKS[0], EnvConfig(max_turns=3), GenerationConfig())
    assert traj.reward == 0.0 and traj.num_turns <= 3
    assert traj.reward_reason in {"budget_exceeded", "invalid_format"}
    assert traj.num_invalid_tool_calls >= 1
    gen_lp = [lp for lp, m in zip(traj.sampler_logprobs, traj.loss_mask) if m]
    assert gen_lp and all(lp == -0.5 for lp in gen_lp)


class _Crash:
    async def act(self, ctx):
        raise RuntimeError("sampler exploded")


def test_a_crashing_policy_ends_the_episode_not_the_worker(codec):
    traj = _play(_Crash(), codec, TASKS[0])
    assert traj.finish_reason == "error" and traj.reward == 0.0


class _Slow:
    async def act(self, ctx):
        await asyncio.sleep(5)


def test_episode_timeout(codec):
    traj = _play(_Slow(), codec, TASKS[0], EnvConfig(episode_timeout_s=0.2))
    assert traj.finish_reason == "timeout" and traj.reward_reason == "timeout"


def test_seeded_sampling_gives_each_member_and_turn_its_own_reproducible_seed():
    from actors.types import SamplingSpec
    from envs.core import Message
    from rollout.agent_loop import TurnContext
    from rollout.policies import SamplerTurnPolicy

    def seed(base, stream, assistant_turns):
        history = [Message(role="user", content="q")] + [Message(role="assistant", content="a")] * assistant_turns
        ctx = TurnContext([1, 2], history, env=None, max_tokens=8)
        return SamplerTurnPolicy(None, SamplingSpec(max_tokens=16, seed=base), stream).request_spec(ctx).seed

    assert seed(None, "g/0", 0) is None  # unseeded runs stay unseeded
    assert seed(0, "g/0", 1) == seed(0, "g/0", 1)
    assert len({seed(0, "g/0", 0), seed(0, "g/1", 0), seed(0, "g/0", 1), seed(1, "g/0", 0)}) == 4
