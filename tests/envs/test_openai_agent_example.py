"""The stoichiometry agent program (examples/openai_agent_lab) against its native environment.

The agent talks to an object shaped like `openai.AsyncOpenAI` that is labrl's endpoint minus HTTP:
the request body goes through the endpoint's own wire format (`protocol.parse_request`, then
`chat_completion_response` read back with the `openai` package's `ChatCompletion`) and its real
`EpisodeSession`, in front of a scripted engine that "samples" a given text: the reference
solver's action, or a scripted bad turn. The same texts are played through the native agent loop. Turn by
turn the policy must see exactly the same prompt ids both ways (the endpoint's ids, which re-use
what was sampled, and a fresh rendering of what the agent sent), and episodes must end with the
same reward and reason.
"""

import asyncio
import json
from collections.abc import Awaitable, Callable
from types import SimpleNamespace

import pytest
from openai.types.chat import ChatCompletion

from actors.types import GenerationOutput, SamplingSpec
from configs.schema import EnvConfig, GenerationConfig
from envs.chat import ChatCodec
from envs.core import Message
from envs.parsing import format_assistant
from envs.registry import get_env_spec
from envs.suite.stoichiometry import StoichiometryEnv, make_dataset, reference_policy
from examples.openai_agent_lab.agent import MODEL, SPEC, Outcome, agent, verify
from models.tiny import build_tokenizer
from rollout.agent_loop import PolicyTurn, run_episode
from rollout.openai_api.protocol import (
    chat_completion_response,
    convert_messages,
    new_request_id,
    parse_request,
)
from rollout.openai_api.session import EpisodeSession

# Room enough that only the environment's tool budget ends an episode.
MAX_TURNS, MAX_NEW, MAX_LEN = 12, 400, 4096
TASKS = make_dataset(8, 4, (1, 2, 3, 4), 0).tasks("train")

# What the model "generates" in a turn, given the environment and the conversation so far.
Reply = Callable[[StoichiometryEnv, list[Message]], Awaitable[str]]


class Cut(str):
    """A reply cut at max_new_tokens: no closing EOS, finish reason `length`."""


async def reference(env: StoichiometryEnv, history: list[Message]) -> str:
    return format_assistant(await reference_policy(env, history))


def scripted(*texts: str) -> Reply:
    async def reply(env: StoichiometryEnv, history: list[Message]) -> str:
        return texts[sum(m.role == "assistant" for m in history)]
    return reply


def call(name: str, **arguments) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def sampled(codec: ChatCodec, text: str) -> tuple[list[int], str]:
    ids = codec.encode(text)
    return (ids, "length") if isinstance(text, Cut) else (ids + [codec.eos_token_id], "stop")


@pytest.fixture(scope="module")
def codec() -> ChatCodec:
    return ChatCodec(build_tokenizer())


# --- the native side: the agent loop with a policy that "samples" the reply's text -------------

class TextPolicy:
    """A native turn policy that "samples" the reply's text and records every prompt it is given."""

    def __init__(self, reply: Reply, codec: ChatCodec):
        self.reply, self.codec, self.prompts = reply, codec, []

    async def act(self, ctx):
        self.prompts.append(list(ctx.prompt_token_ids))
        ids, finish = sampled(self.codec, await self.reply(ctx.env, ctx.history))
        return PolicyTurn(ids, [0.0] * len(ids), finish, 0)


def play_native(task, reply: Reply, codec: ChatCodec):
    policy = TextPolicy(reply, codec)
    traj = asyncio.run(run_episode(StoichiometryEnv(task), task, "g0", policy, codec,
                                   EnvConfig(max_turns=MAX_TURNS),
                                   GenerationConfig(max_new_tokens=MAX_NEW, max_model_len=MAX_LEN)))
    return traj, policy.prompts


# --- the agent side: an AsyncOpenAI-shaped client in front of labrl's EpisodeSession -----------

class ScriptedEngine:
    """A generation router that returns the ids it is told to."""

    def __init__(self):
        self.next: tuple[list[int], str] = ([], "stop")

    async def generate(self, prompt_token_ids, spec):
        ids, finish = self.next
        return GenerationOutput(list(ids), [0.0] * len(ids), finish, 0)


class FakeOpenAI:
    """`client.chat.completions.create(**kwargs)` as labrl's endpoint answers it, without HTTP."""

    def __init__(self, task, reply: Reply, codec: ChatCodec):
        self.env, self.reply, self.codec = StoichiometryEnv(task), reply, codec
        self.engine = ScriptedEngine()
        self.session = EpisodeSession(codec=codec, router=self.engine, sampling=SamplingSpec(max_tokens=MAX_NEW),
                                      max_model_len=MAX_LEN, max_turns=MAX_TURNS)
        self.requests: list[dict] = []
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))

    async def _create(self, **kwargs) -> ChatCompletion:
        body = json.loads(json.dumps(kwargs))  # what goes over the wire
        self.requests.append(body)
        request = parse_request(body)
        self.engine.next = sampled(self.codec, await self.reply(self.env, request.messages))
        result = await self.session.complete(request.messages, request.tools, request.params)
        return ChatCompletion.model_validate(
            chat_completion_response(result, request.model, new_request_id(), 0, want_logprobs=False))


def play_agent(task, reply: Reply, codec: ChatCodec) -> tuple[Outcome, FakeOpenAI]:
    client = FakeOpenAI(task, reply, codec)
    return asyncio.run(agent(task, client)), client


def assert_same_as_native(task, reply: Reply, codec: ChatCodec):
    """Play `reply` both ways; the prompts, the reward and its reason must agree. Returns both."""
    traj, native_prompts = play_native(task, reply, codec)
    outcome, client = play_agent(task, reply, codec)
    reward = verify(task, outcome)
    assert (float(reward), reward.reason) == (traj.reward, traj.reward_reason)
    assert len(client.requests) == len(native_prompts) == traj.num_turns
    schemas = [t.schema for t in StoichiometryEnv(task).tools]
    for turn, (request, native) in enumerate(zip(client.requests, native_prompts)):
        assert request["tools"] == schemas and request["model"] == MODEL
        sent = convert_messages(request["messages"])
        fresh = ChatCodec(codec.tokenizer, request["tools"]).prompt_tokens(sent)
        assert fresh == native, f"turn {turn}: rendering what the agent sent differs from the native prompt"
        assert client.session.completions[turn].prompt_ids == native, f"turn {turn}: endpoint prompt differs"
    return traj, outcome, client


def tool_texts(messages: list[dict]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "tool"]


@pytest.mark.parametrize("task", [t for d in (1, 2, 3, 4) for t in [x for x in TASKS if x.difficulty == d][:2]],
                         ids=lambda t: t.id)
def test_reference_solver_episode_is_token_identical_and_correct(codec, task):
    traj, outcome, _ = assert_same_as_native(task, reference, codec)
    assert verify(task, outcome) == 1.0 and verify(task, outcome).reason == "correct"
    assert outcome.answer is not None and traj.num_turns >= 3  # masses, calc, submit


def test_wrong_submit_gets_the_native_reason(codec):
    task = TASKS[0]
    _, outcome, _ = assert_same_as_native(task, scripted(call("submit", answer=task.data["answer"] * 2)), codec)
    assert outcome.answer == pytest.approx(task.data["answer"] * 2)
    assert (float(verify(task, outcome)), verify(task, outcome).reason) == (0.0, "wrong_value")


def test_bad_turns_get_the_native_error_observations(codec):
    """Unknown tool, bad argument type, a tool that raises, prose, and a turn with one good and one
    broken call: each gets the native error text and costs the native budget; then a right submit."""
    task = next(t for t in TASKS if t.difficulty == 2)  # tool budget 8
    reply = scripted(call("weigh", el="Na"), call("mass", el=3), call("mass", el="Xx"), "It is 42.",
                     call("calc", expr="1+1") + '<tool_call>{"name": "mass", </tool_call>',
                     call("submit", answer=task.data["answer"]))
    traj, outcome, client = assert_same_as_native(task, reply, codec)
    assert verify(task, outcome).reason == "correct"
    sent = tool_texts(client.requests[-1]["messages"])
    assert sent == tool_texts(traj.messages)[:len(sent)]
    assert sent[0] == "Error: unknown tool 'weigh'" and sent[3] == "Error: no tool call"
    assert sent[4] == "2" and sent[5].startswith("Error: invalid tool call: malformed JSON")


@pytest.mark.parametrize("reply, reason", [
    (scripted(*["Na?"] * 6), "invalid_format"),                      # prose until the budget is spent
    (scripted(call("mass", el="Xx"), *[call("mass", el="Na")] * 5), "budget_exceeded"),
    (scripted(*[call("mass", el="Na")] * 5, '<tool_call>{"name": </tool_call>'), "invalid_format"),
    (scripted("".join([call("mass", el="Na")] * 5), call("mass", el="Na") + call("submit", answer=1.0)),
     "budget_exceeded"),                                             # the submit falls past the budget
    (scripted(Cut('<tool_call>{"name": "mass", "argu')), "truncated_length"),
], ids=["prose", "lookups", "last_call_unparsed", "submit_past_budget", "cut_turn"])
def test_episodes_without_an_answer_end_as_native_ones(codec, reply, reason):
    task = TASKS[0]  # difficulty 1: tool budget 6
    _, outcome, _ = assert_same_as_native(task, reply, codec)
    assert outcome.answer is None and verify(task, outcome).reason == reason


def test_spec_shares_the_native_tasks():
    assert get_env_spec("examples.openai_agent_lab.agent:SPEC") is SPEC
    assert SPEC.agent is not None and SPEC.agent.run is agent and SPEC.agent.verify is verify
    assert not SPEC.has_reference and SPEC.difficulties == (1, 2, 3, 4)
    native = get_env_spec("stoichiometry").make_dataset(6, 4, (1, 2), 3)
    ours = SPEC.make_dataset(6, 4, (1, 2), 3)
    for split in ("train", "heldout"):
        assert [t.to_dict() for t in ours.tasks(split)] == [t.to_dict() for t in native.tasks(split)]
    with pytest.raises(TypeError, match="agent program"):
        SPEC.make_env(native.tasks("train")[0])
