"""Token-level correctness of multi-turn tool episodes with the model kit's byte-level BPE chat model
(issue 21), on a real vLLM engine (CPU build).

A kit model (test preset; the bundled environments' reference episodes are in its tokenizer's
corpus) is served by one GenerationWorker for the module. Stoichiometry episodes run through the
native agent loop, and every id is accounted for against what crossed the generation-actor boundary
(a router that keeps a copy of each prompt it sends and each output it gets back):

* the trainer's ids (`to_train_samples`) are each turn's prompt as the engine received it, then the
  ids it sampled, turn after turn, and nothing else: model text is never re-tokenized;
* the loss mask is 1 on exactly the sampled ids; the ids the environment side adds decode to the
  template's text of the tool responses and the next generation prompt, nothing more;
* the engine, scoring the trainer's sequence, gives back the sampler's logprobs: the trainer sees
  the very context each token was sampled from;
* the tool schemas are in the first prompt the engine received.

A random-weight model never writes a tool call, so calls are forced: their ids come from encoding
text in odd pieces (a BPE model is free to spell any text with any tokens), and they go through the
agent loop's own path from ids to an assistant message, between turns the engine samples. The
parser tests feed the same kind of ids, decoded as the rollout decodes a turn (whole), and streamed
token by token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ray

from actors.generation import GenerationWorker
from actors.router import GenerationRouter
from actors.types import EngineSpec, GenerationOutput, SamplingSpec
from configs.schema import EnvConfig, GenerationConfig
from envs.chat import ChatCodec
from envs.dataset import Task
from envs.parsing import parse_assistant
from envs.registry import get_env_spec
from launch.model_kit import reference_episodes
from models.chat_kit import PRESETS, save_chat_model
from models.chat_template import render_chat
from models.corpus import CorpusSpec
from models.loading import load_tokenizer
from rollout.agent_loop import PolicyTurn, TurnContext, run_episode
from rollout.pipeline import to_train_samples
from rollout.policies import SamplerTurnPolicy
from rollout.trajectory import Trajectory

REPO_ROOT = str(Path(__file__).resolve().parents[2])
STOICH = get_env_spec("stoichiometry")
TASKS = STOICH.make_dataset(8, 4, [1, 2], 0).tasks("train")
MAX_MODEL_LEN = 1024  # the test preset's positions
MAX_NEW = 24  # a random model rarely stops: turns are cut here, and scored (env.score_truncated_turns)
SMALL_CORPUS = CorpusSpec(english_sentences=200, number_lines=100, synthetic_calls=60, seed=0)
TIMEOUT = 300


@pytest.fixture(scope="module")
def kit_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("bpe_kit") / "model"
    episodes = reference_episodes(seed=0, per_difficulty=1)
    return str(save_chat_model(path, PRESETS["test"], 2000, episodes=episodes, corpus=SMALL_CORPUS))


@pytest.fixture(scope="module")
def codec(kit_dir: str) -> ChatCodec:
    return ChatCodec(load_tokenizer(kit_dir))


@pytest.fixture(scope="module")
def engine(kit_dir: str):
    """One vLLM engine on the kit model for the module (start-up ~30-60 s here)."""
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
                 runtime_env={"env_vars": {"PYTHONPATH": REPO_ROOT}})
    spec = EngineSpec(kit_dir, GenerationConfig(max_model_len=MAX_MODEL_LEN, max_new_tokens=MAX_NEW, kv_cache_gb=0.5))
    handle = GenerationWorker.as_actor(spec, name="bpe-tokens-gen")
    ray.get(handle.ready.remote(), timeout=600)
    yield handle
    with contextlib.suppress(Exception):
        ray.get(handle.shutdown.remote(), timeout=60)
    ray.kill(handle)
    if started:
        ray.shutdown()


class _RecordingRouter(GenerationRouter):
    """The real router to the real engine, keeping what crossed the actor boundary: the ground truth
    a trajectory is checked against."""

    def __init__(self, workers: list[Any]):
        super().__init__(workers, timeout_s=TIMEOUT)
        self.calls: list[tuple[list[int], GenerationOutput]] = []

    async def generate(self, prompt_token_ids: list[int], spec: SamplingSpec) -> GenerationOutput:
        sent = list(prompt_token_ids)  # the agent loop hands over its live list, which grows later
        out = await super().generate(prompt_token_ids, spec)
        self.calls.append((sent, out))
        return out


@dataclass
class _Turn:
    prompt: list[int]  # the agent loop's ids when it asked for this turn
    ids: list[int]
    sampled: bool  # by the engine (else forced)


def _forced(ids: list[int], finish: str = "stop") -> PolicyTurn:
    return PolicyTurn(list(ids), [0.0] * len(ids), finish, 0)


class _Script:
    """Plays turns in order: `None` asks the engine (through `sampler`), a `PolicyTurn` is forced."""

    def __init__(self, sampler: SamplerTurnPolicy | None, steps: list[PolicyTurn | None]):
        self.sampler = sampler
        self.steps = steps
        self.turns: list[_Turn] = []

    async def act(self, ctx: TurnContext) -> PolicyTurn:
        k = len(self.turns)
        step = self.steps[k] if k < len(self.steps) else None
        prompt = list(ctx.prompt_token_ids)
        if step is None:
            assert self.sampler is not None, "an engine turn in an engine-free script"
            step = await self.sampler.act(ctx)
            self.turns.append(_Turn(prompt, list(step.token_ids), True))
        else:
            self.turns.append(_Turn(prompt, list(step.token_ids), False))
        return step


def _play(engine: Any, codec: ChatCodec, tasks: list[Task], steps: list[PolicyTurn | None],
          max_turns: int) -> list[tuple[Trajectory, _Script, _RecordingRouter]]:
    """Play each task once, concurrently (the engine batches them), each with its own router."""
    env_cfg = EnvConfig(max_turns=max_turns, score_truncated_turns=True)
    generation = GenerationConfig(max_new_tokens=MAX_NEW, max_model_len=MAX_MODEL_LEN)
    spec = SamplingSpec(max_tokens=MAX_NEW, temperature=1.0, stop_token_ids=[codec.eos_token_id], seed=0)
    runs = []
    for task in tasks:
        router = _RecordingRouter([engine])
        runs.append((task, _Script(SamplerTurnPolicy(router, spec, stream=task.id), steps), router))

    async def main() -> list[Trajectory]:
        return list(await asyncio.gather(*(run_episode(STOICH.make_env(t), t, "g", s, codec, env_cfg, generation)
                                           for t, s, _ in runs)))

    return [(traj, script, router) for traj, (_, script, router) in zip(asyncio.run(main()), runs)]


def _observations_after_each_turn(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    out: list[list[dict[str, Any]]] = []
    for m in messages:
        if m["role"] == "assistant":
            out.append([])
        elif out:
            out[-1].append(m)
    return out


def _assert_accounted(traj: Trajectory, script: _Script, calls: list[tuple[list[int], GenerationOutput]],
                      codec: ChatCodec, tools: list[dict[str, Any]]) -> None:
    """Items 1-3 of the module doc for one trajectory; `calls`: what crossed the engine's boundary."""
    ids, turns = traj.token_ids, script.turns
    assert len(turns) == traj.num_turns >= 2
    # What the engine received and returned is what the loop asked with and recorded, in order.
    assert [(t.prompt, t.ids) for t in turns if t.sampled] == [(p, o.token_ids) for p, o in calls]
    expected_mask = [0] * len(ids)
    end = 0
    for turn in turns:
        assert len(turn.prompt) > end and ids[:len(turn.prompt)] == turn.prompt  # prompts only grow
        end = len(turn.prompt) + len(turn.ids)
        assert ids[len(turn.prompt):end] == turn.ids
        expected_mask[len(turn.prompt):end] = [1] * len(turn.ids)
    assert ids == turns[-1].prompt + turns[-1].ids  # nothing after the last turn: the policy never saw it
    assert traj.loss_mask == expected_mask
    for prompt, out in calls:
        assert traj.sampler_logprobs[len(prompt):len(prompt) + len(out.token_ids)] == out.logprobs
    [sample] = to_train_samples([[traj]], "grpo")
    assert (sample.token_ids, sample.loss_mask, sample.sampler_logprobs) == (
        ids, traj.loss_mask, traj.sampler_logprobs)

    # The first prompt: the template's rendering of the opening messages, tools declared.
    first = codec.decode(turns[0].prompt)
    assert first == render_chat(traj.messages[:1], tools, add_generation_prompt=True)
    for tool in tools:
        f = tool["function"]
        assert first.count(json.dumps(f, ensure_ascii=False)) == 1
        assert json.dumps(f["name"]) in first and json.dumps(f["description"]) in first

    # Between two turns the environment side adds only: the EOS that closes a turn the policy did
    # not close (cut by length), the newline after it, one user turn per tool response, and the
    # next generation prompt; markup as single special ids.
    observations = _observations_after_each_turn(traj.messages)
    for k in range(len(turns) - 1):
        delta = turns[k + 1].prompt[len(turns[k].prompt) + len(turns[k].ids):]
        closed = turns[k].ids[-1:] == [codec.eos_token_id]
        text = ("" if closed else codec.eos_text) + "\n" + "".join(
            f"<|im_start|>user\n<tool_response>{m['content']}</tool_response><|im_end|>\n"
            for m in observations[k]) + "<|im_start|>assistant\n"
        assert observations[k] and codec.decode(delta) == text and delta == codec.encode(text)


def _assert_engine_rescores(engine: Any, traj: Trajectory, router: _RecordingRouter) -> None:
    """The engine's logprob of each sampled id, given the trainer's sequence before it, is the
    sampler's; one position off, it is not (so a shifted or re-tokenized context would show)."""
    scored = ray.get(engine.prompt_logprobs.remote(traj.token_ids), timeout=TIMEOUT)
    sampled = [(len(prompt) + i, lp) for prompt, out in router.calls for i, lp in enumerate(out.logprobs)]
    assert max(abs(scored[at] - lp) for at, lp in sampled) < 1e-3
    assert max(abs(scored[at + 1] - lp) for at, lp in sampled if at + 1 < len(scored)) > 1e-2


def _non_canonical(codec: ChatCodec, ids: list[int]) -> bool:
    """True when the tokenizer would spell the text of `ids` with other ids: a loop that
    re-tokenized this turn would change what the trainer sees."""
    return codec.encode(codec.decode(ids)) != ids


def _pieces(codec: ChatCodec, text: str, width: int) -> list[int]:
    """`text` encoded `width` characters at a time: the BPE spelling a model may sample, which cuts
    keys, values and the markup itself at odd places (the tokenizer's own spelling when width=0)."""
    if width == 0:
        return codec.encode(text)
    ids = [i for s in range(0, len(text), width) for i in codec.encode(text[s:s + width])]
    assert codec.decode(ids) == text
    return ids


def test_sampled_multi_turn_episodes_train_on_exactly_what_the_engine_saw_and_sampled(engine, codec):
    """Four episodes, every turn sampled by the engine (cut at MAX_NEW, scored, answered by the
    environment's error observation), three turns each."""
    played = _play(engine, codec, TASKS[::2], [], max_turns=3)
    tools = [t.schema for t in STOICH.make_env(TASKS[0]).tools]
    for traj, script, router in played:
        assert traj.num_turns == 3 and traj.finish_reason == "budget"
        _assert_accounted(traj, script, router.calls, codec, tools)
        _assert_engine_rescores(engine, traj, router)
    sampled = [t.ids for _, s, _ in played for t in s.turns]
    # The sampled spellings are not the tokenizer's, and some turns were cut without an EOS: the
    # assertions above would catch a re-tokenizing loop and an unclosed turn.
    assert sum(_non_canonical(codec, ids) for ids in sampled) >= len(sampled) // 2
    assert any(ids[-1] != codec.eos_token_id for ids in sampled)


# Forced turns of the mixed episode: odd whitespace, two calls in a turn, calls without arguments.
TWO_MASSES = ('\n  <tool_call>\n{"name": "mass",\n "arguments": {"el": "Ag"}}\n</tool_call>\n\n'
              '<tool_call>{"name":"mass","arguments":{"el":"Zn"}}</tool_call> ')
NO_ARGUMENTS = 'Now the sum. <tool_call>{"name": "calc"}</tool_call><tool_call>{"name": "calc", "arguments": {}}</tool_call>'
SUBMIT = '<tool_call> {"name": "submit", "arguments": {"answer": 708.17}} </tool_call>'


def test_forced_bpe_tool_calls_reach_the_environment_between_engine_turns(engine, codec):
    """Engine turns and forced call turns alternate; the forced ids (odd spellings) reach the
    next engine prompt verbatim, the environment runs what the parser read, and the answer wins."""
    task = TASKS[4]  # Ag3Zn2I2, 708.17 g/mol; budget 8 calls
    forced = [_pieces(codec, text, w) + [codec.eos_token_id] for text, w in ((TWO_MASSES, 5), (NO_ARGUMENTS, 3),
                                                                          (SUBMIT, 7))]
    assert all(_non_canonical(codec, ids[:-1]) for ids in forced)
    steps = [None, _forced(forced[0]), None, _forced(forced[1]), _forced(forced[2])]
    [(traj, script, router)] = _play(engine, codec, [task], steps, max_turns=6)
    assert (traj.reward, traj.reward_reason, traj.finish_reason) == (1.0, "correct", "env_done")
    assert [t.sampled for t in script.turns] == [True, False, True, False, False]
    _assert_accounted(traj, script, router.calls, codec, [t.schema for t in STOICH.make_env(task).tools])
    _assert_engine_rescores(engine, traj, router)
    # The second engine prompt holds the forced turn's ids as forced, then the two tool responses.
    assert router.calls[1][0][len(script.turns[1].prompt):][:len(forced[0])] == forced[0]
    assert _calls_per_turn(traj)[1:2] + _calls_per_turn(traj)[3:] == [
        [("mass", {"el": "Ag"}), ("mass", {"el": "Zn"})], [("calc", {}), ("calc", {})],
        [("submit", {"answer": 708.17})]]
    masses = [m["content"] for m in _observations_after_each_turn(traj.messages)[1]]
    assert masses == ["107.87", "65.38"]


def _calls_per_turn(traj: Trajectory) -> list[list[tuple[str, dict[str, Any]]]]:
    return [[(c["function"]["name"], c["function"]["arguments"]) for c in m.get("tool_calls", [])]
            for m in traj.messages if m["role"] == "assistant"]


def _play_forced(codec: ChatCodec, task: Task, steps: list[PolicyTurn], max_turns: int,
                 max_model_len: int = MAX_MODEL_LEN) -> tuple[Trajectory, _Script]:
    """An episode of forced turns only (no engine): the agent loop's own path from ids to messages."""
    script = _Script(None, steps)
    env_cfg = EnvConfig(max_turns=max_turns, score_truncated_turns=True)
    generation = GenerationConfig(max_new_tokens=MAX_NEW, max_model_len=max_model_len)
    traj = asyncio.run(run_episode(STOICH.make_env(task), task, "g", script, codec, env_cfg, generation))
    return traj, script


# Assistant turns as a BPE model may write them: (text, calls read from it, remaining content).
PARSE_CASES: dict[str, tuple[str, list[tuple[str, dict[str, Any]]], str]] = {
    "one_call": ('<tool_call>{"name": "mass", "arguments": {"el": "Na"}}</tool_call>', [("mass", {"el": "Na"})], ""),
    "whitespace": ('\n\n  <tool_call>\n  {\n    "name" : "mass" ,\n    "arguments" : { "el" : "Na" }\n  }\n'
                   '</tool_call>\n\n', [("mass", {"el": "Na"})], ""),
    "two_calls": ('I need both.\n<tool_call>{"name": "mass", "arguments": {"el": "Na"}}</tool_call>\n'
                  '<tool_call>{"name": "calc", "arguments": {"expr": "2*22.99+32.06"}}</tool_call>\n',
                  [("mass", {"el": "Na"}), ("calc", {"expr": "2*22.99+32.06"})], "I need both."),
    "no_arguments": ('<tool_call>{"name": "calc"}</tool_call>', [("calc", {})], ""),
    "empty_arguments": ('<tool_call>{"name": "calc", "arguments": {}}</tool_call>', [("calc", {})], ""),
}


@pytest.mark.parametrize("width", [0, 1, 3, 7], ids=lambda w: f"pieces{w}")
@pytest.mark.parametrize("case", sorted(PARSE_CASES))
def test_the_parser_reads_calls_spelled_by_bpe_tokens_whole_and_streamed(codec, case, width):
    """Decoded whole (as the agent loop decodes a turn), the ids give back the text and its calls;
    streamed token by token, every prefix parses without raising to a prefix of those calls (a block
    cut mid-key is an unclosed call, never a wrong one)."""
    text, calls, content = PARSE_CASES[case]
    ids = _pieces(codec, text, width) + [codec.eos_token_id]
    whole = codec.assistant_text(ids)
    assert whole == text
    message = parse_assistant(whole)
    assert message.parse_error is None and message.content == content
    assert [(c.name, c.arguments) for c in message.tool_calls] == calls
    pieces = [codec.decode([i]) for i in ids[:-1]]
    assert "".join(pieces) == text  # ASCII: no token splits a character
    seen = ""
    for piece in pieces[:-1]:
        seen += piece
        got = parse_assistant(seen)
        assert [(c.name, c.arguments) for c in got.tool_calls] == calls[:len(got.tool_calls)]
        assert len(got.tool_calls) < len(calls) or got.parse_error is None


def test_forced_bpe_ids_become_the_same_messages_through_the_agent_loop(codec):
    """Each case, spelled 3 characters at a time, as one turn of a real episode: the message the
    environment acted on holds the calls the text says; the episode's ids hold the forced ids."""
    steps = [_forced(_pieces(codec, PARSE_CASES[c][0], 3) + [codec.eos_token_id]) for c in sorted(PARSE_CASES)]
    traj, script = _play_forced(codec, TASKS[5], steps, max_turns=len(steps))  # budget 8 calls
    assert traj.num_turns == len(steps)
    assert _calls_per_turn(traj) == [PARSE_CASES[c][1] for c in sorted(PARSE_CASES)]
    assert [m["content"] for m in traj.messages if m["role"] == "assistant"] == [
        PARSE_CASES[c][2] for c in sorted(PARSE_CASES)]
    _assert_accounted(traj, script, [], codec, [t.schema for t in STOICH.make_env(TASKS[5]).tools])


def test_a_character_split_across_byte_tokens_survives_because_a_turn_is_decoded_whole(codec):
    text = '<tool_call>{"name": "mass", "arguments": {"el": "Å"}}</tool_call>'
    assert len(codec.encode("Å")) == 2  # the kit's BPE spells it as its two UTF-8 bytes
    ids = codec.encode(text) + [codec.eos_token_id]
    assert "\ufffd" in "".join(codec.decode([i]) for i in ids)  # what a per-token decode would read
    traj, _ = _play_forced(codec, TASKS[0], [_forced(ids)], max_turns=1)
    assert _calls_per_turn(traj) == [[("mass", {"el": "Å"})]]
    assert "unknown element 'Å'" in traj.messages[-1]["content"]


def test_turns_without_a_closing_eos_are_closed_by_the_env_side_without_loss(codec):
    """vLLM stops on every end token of the model's generation config (the kit lists <|endoftext|>
    beside <|im_end|>, as Qwen2.5 checkpoints do), and a scored turn cut by length has no end token
    at all: the next prompt still closes the turn with <|im_end|>, which carries no loss, and the
    stray end token is not message text."""
    pad = codec.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert pad != codec.eos_token_id
    mass = codec.encode(PARSE_CASES["one_call"][0].replace("Na", "Co"))
    cut = codec.encode("Next I need the mass of fluor")
    submit = codec.encode('<tool_call>{"name": "submit", "arguments": {"answer": 174.86}}</tool_call>')
    steps = [_forced(mass + [pad]), _forced(cut, "length"), _forced(submit + [codec.eos_token_id])]
    traj, script = _play_forced(codec, TASKS[0], steps, max_turns=3)  # Co2F3, 174.86 g/mol
    assert (traj.reward, traj.reward_reason) == (1.0, "correct")
    _assert_accounted(traj, script, [], codec, [t.schema for t in STOICH.make_env(TASKS[0]).tools])
    for turn in script.turns[:2]:
        after = len(turn.prompt) + len(turn.ids)
        assert traj.token_ids[after] == codec.eos_token_id and traj.loss_mask[after] == 0
    assert [m["content"] for m in traj.messages if m["role"] == "assistant"][:2] == [
        "", "Next I need the mass of fluor"]


def test_an_episode_out_of_context_ends_on_its_last_turn_within_max_model_len(codec):
    """The tool response after the first turn does not fit: the episode ends there, and the tokens
    it would have added (never seen by the policy) are not in the trajectory."""
    env = STOICH.make_env(TASKS[0])
    observations, tools = asyncio.run(env.reset())
    prompt = codec.with_tools(tools).prompt_tokens(observations)
    turn = codec.encode(PARSE_CASES["one_call"][0]) + [codec.eos_token_id]
    limit = len(prompt) + len(turn) + 4  # the response turn alone is longer than 4 tokens
    traj, script = _play_forced(codec, TASKS[0], [_forced(turn)] * 2, max_turns=2, max_model_len=limit)
    assert (traj.finish_reason, traj.reward_reason, traj.num_turns) == ("length", "context_exhausted", 1)
    assert traj.token_ids == prompt + turn and traj.loss_mask == [0] * len(prompt) + [1] * len(turn)
