"""EpisodeSession + assembly: prompts re-use the sampled ids, forks split the episode, and no trained
token is one the engine did not sample, with the char tokenizer and with a BPE tokenizer whose
re-tokenization differs from what the engine sampled.

The engine is scripted here (it returns chosen ids, e.g. a non-canonical BPE split, which a random
policy produces all the time); the real-engine runs are in tests/e2e/test_openai_agents.py.
"""

from __future__ import annotations

import asyncio

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from actors.types import GenerationOutput, SamplingSpec
from envs.chat import ChatCodec
from envs.core import Message, ToolCall
from models.tiny import CHAT_TEMPLATE, EOS, IM_END, IM_START, MARKUP_TOKENS, build_tokenizer
from rollout.openai_api.assembly import assemble_segments
from rollout.openai_api.session import EpisodeSession
from rollout.openai_api.types import ChatParams, EndpointError

CALL = '<tool_call>{"name": "mass", "arguments": {"element": "Na"}}</tool_call>'


class ScriptedEngine:
    """Returns the next scripted completion (ids) and remembers every prompt it was sent."""

    def __init__(self, completions: list[list[int]], version: int = 0):
        self.completions, self.version, self.prompts = list(completions), version, []

    async def generate(self, prompt_token_ids: list[int], spec: SamplingSpec) -> GenerationOutput:
        self.prompts.append(list(prompt_token_ids))
        ids = self.completions.pop(0)
        return GenerationOutput(ids, [-0.25] * len(ids), "stop", self.version)


def _bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained here on a little chemistry text (merges 'Na', 'mass', ...)."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    corpus = ["The molar mass of Na2S is 78.04 g/mol.", "mass of NaCl", "element Na mass 22.99"] * 50
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[EOS, IM_START, IM_END, *MARKUP_TOKENS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=IM_END, pad_token=EOS)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _session(codec: ChatCodec, engine: ScriptedEngine, **kw) -> EpisodeSession:
    spec = SamplingSpec(max_tokens=64, stop_token_ids=[codec.eos_token_id])
    return EpisodeSession(codec, engine, spec, max_model_len=kw.pop("max_model_len", 1024),
                          max_turns=kw.pop("max_turns", 6), **kw)


def _trained_tokens_were_sampled(session: EpisodeSession) -> None:
    """Every loss-mask-1 run of every segment is exactly one completion's sampled ids."""
    built = assemble_segments(session.completions)
    sampled = [c.token_ids for c in session.completions]
    runs = []
    for seg in built.segments:
        run: list[int] = []
        for tok, m in zip(seg.token_ids, seg.loss_mask):
            if m:
                run.append(tok)
            elif run:
                runs.append(run)
                run = []
        if run:
            runs.append(run)
    assert sorted(map(tuple, runs)) == sorted(map(tuple, sampled))


def _tool_turns(codec: ChatCodec, first_reply_ids: list[int], edit_history: bool):
    """Two turns of a tool-using agent: the reply to turn 1 is re-sent (or edited) in turn 2."""
    engine = ScriptedEngine([first_reply_ids, codec.encode("done") + [codec.eos_token_id]])
    session = _session(codec, engine)
    user = Message("user", "Molar mass of Na2S in g/mol?")
    result = asyncio.run(session.complete([user], None, ChatParams()))
    reply = result.choices[0].message
    if edit_history:  # e.g. an agent that strips what the model said before its call
        reply = Message("assistant", "", tool_calls=reply.tool_calls)
    tool = Message("tool", "22.99", tool_call_id="call_0")
    asyncio.run(session.complete([user, reply, tool], None, ChatParams()))
    return engine, session, user, reply, tool


def test_unchanged_history_reuses_the_sampled_ids_even_where_retokenizing_differs():
    codec = ChatCodec(_bpe_tokenizer())
    text = "The mass of Na is " + CALL
    # The engine sampled "mass" and "Na" character by character: a valid but non-canonical split.
    odd = [i for ch in "The mass of Na is " for i in codec.encode(ch)] + codec.encode(CALL)
    assert codec.decode(odd) == text and codec.encode(text) != odd
    engine, session, user, reply, tool = _tool_turns(codec, odd + [codec.eos_token_id], edit_history=False)
    naive = codec.prompt_tokens([user, reply, tool])
    assert engine.prompts[1][:len(engine.prompts[0]) + len(odd)] == engine.prompts[0] + odd
    assert naive != engine.prompts[1], "the BPE tokenizer must re-tokenize differently for this test"
    built = assemble_segments(session.completions)
    assert built.forks == 0 and len(built.segments) == 1
    assert reply.tool_calls[0].arguments == {"element": "Na"}
    _trained_tokens_were_sampled(session)


def test_an_edited_history_forks_into_segments_of_sampled_tokens_only():
    codec = ChatCodec(_bpe_tokenizer())
    odd = [i for ch in "Let me look up Na. " for i in codec.encode(ch)] + codec.encode(CALL)
    engine, session, *_ = _tool_turns(codec, odd + [codec.eos_token_id], edit_history=True)
    built = assemble_segments(session.completions)
    assert built.forks == 1 and len(built.segments) == 2
    # The fork's segment holds turn 1's re-rendered text as context (mask 0) only.
    second = built.segments[built.last]
    assert second.token_ids[:len(engine.prompts[1])] == engine.prompts[1]
    assert not any(second.loss_mask[:len(engine.prompts[1])])
    _trained_tokens_were_sampled(session)


def test_char_model_json_whitespace_does_not_fork():
    """The parser normalises the call's JSON; the agent re-sends it normalised; the ids stay the sampled ones."""
    codec = ChatCodec(build_tokenizer())
    sloppy = '<tool_call>{"name":"mass","arguments":{ "element":"Na"}}</tool_call>'
    engine, session, user, reply, tool = _tool_turns(codec, codec.encode(sloppy) + [codec.eos_token_id],
                                                     edit_history=False)
    assert codec.prompt_tokens([user, reply, tool]) != engine.prompts[1]
    assert assemble_segments(session.completions).forks == 0
    _trained_tokens_were_sampled(session)


def test_siblings_of_n_choices_are_segments_but_not_forks():
    codec = ChatCodec(build_tokenizer())
    a, b = codec.encode("a") + [codec.eos_token_id], codec.encode("b") + [codec.eos_token_id]
    engine = ScriptedEngine([a, b, codec.encode("c") + [codec.eos_token_id]])
    session = _session(codec, engine)
    user = Message("user", "pick")
    result = asyncio.run(session.complete([user], None, ChatParams(n=2)))
    chosen = result.choices[1].message  # the agent continues from the second choice
    asyncio.run(session.complete([user, chosen, Message("user", "more")], None, ChatParams()))
    built = assemble_segments(session.completions)
    assert (len(built.segments), built.forks) == (2, 0)
    assert built.segments[built.last].token_ids[:len(engine.prompts[0]) + 2] == engine.prompts[0] + b
    _trained_tokens_were_sampled(session)


def test_versions_limits_and_stop_strings():
    codec = ChatCodec(build_tokenizer())
    engine = ScriptedEngine([codec.encode("x") + [codec.eos_token_id]] * 2)
    session = _session(codec, engine, max_turns=2)
    user = Message("user", "q")
    first = asyncio.run(session.complete([user], None, ChatParams()))
    engine.version = 1  # a weight update between two turns of the episode
    asyncio.run(session.complete([user, first.choices[0].message, Message("user", "again")], None, ChatParams()))
    assert assemble_segments(session.completions).versions == [0, 1]
    with pytest.raises(EndpointError) as spent:
        asyncio.run(session.complete([user], None, ChatParams()))
    assert spent.value.code == "turn_budget_exhausted" and session.limit == "budget"
    with pytest.raises(EndpointError) as bad_stop:
        asyncio.run(_session(codec, engine).complete([user], None, ChatParams(stop=["<|im_start|>x"])))
    assert bad_stop.value.param == "stop"
    with pytest.raises(EndpointError) as long_prompt:
        asyncio.run(_session(codec, engine, max_model_len=5).complete([user], None, ChatParams()))
    assert long_prompt.value.code == "context_length_exceeded"


def test_an_unparseable_call_comes_back_as_text_and_is_counted():
    codec = ChatCodec(build_tokenizer())
    broken = '<tool_call>{"name": "mass", "arguments": {</tool_call>'
    session = _session(codec, ScriptedEngine([codec.encode(broken) + [codec.eos_token_id]]))
    choice = asyncio.run(session.complete([Message("user", "q")], None, ChatParams())).choices[0]
    assert choice.parse_failed and choice.message.content == broken and not choice.message.tool_calls
    assert session.unparsed_calls == 1 and choice.finish_reason == "stop"


def test_tool_calls_render_in_the_tiny_template_as_the_parser_writes_them():
    codec = ChatCodec(build_tokenizer())
    call = Message("assistant", "", tool_calls=[ToolCall("call_0", "mass", {"element": "Na"})])
    rendered = codec.decode(codec.prompt_tokens([Message("user", "q"), call, Message("tool", "1")]))
    assert CALL + "<|im_end|>" in rendered
