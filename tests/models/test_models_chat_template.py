"""The kit's chat template: tools block, canonical tool calls the parser reads back, prefix stability."""

from __future__ import annotations

import json

import pytest

from envs.chat import ChatCodec
from envs.core import Message, ToolCall
from envs.parsing import format_assistant, format_tool_call, parse_assistant
from models.chat_template import TOOLS_CLOSE, TOOLS_OPEN, format_call, render_chat

TOOLS = [
    {"type": "function", "function": {
        "name": "mass", "description": "Atomic mass of an element in g/mol.",
        "parameters": {"type": "object", "properties": {"el": {"type": "string", "description": "Symbol."}},
                       "required": ["el"]}}},
    {"type": "function", "function": {
        "name": "now", "description": "The time (no arguments).",
        "parameters": {"type": "object", "properties": {}}}},
]

# A multi-turn tool episode: two calls in one assistant turn, one call without arguments, non-ASCII.
EPISODE = [
    Message(role="system", content="Answer with tools."),
    Message(role="user", content="Molar mass of Na2S? Time too, s'il vous plaît."),
    Message(role="assistant", content="Looking up.", tool_calls=[
        ToolCall("call_0", "mass", {"el": "Na"}), ToolCall("call_1", "mass", {"el": "S"})]),
    Message(role="tool", content="22.99", tool_call_id="call_0", name="mass"),
    Message(role="tool", content="32.06", tool_call_id="call_1", name="mass"),
    Message(role="assistant", tool_calls=[ToolCall("call_0", "now", {})]),
    Message(role="tool", content="12:00 — noon", tool_call_id="call_0", name="now"),
    Message(role="assistant", content="78.04 g/mol at noon."),
]


def chat(messages: list[Message]) -> list[dict]:
    return [m.to_chat() for m in messages]


def apply(tok, messages: list[Message], tools=TOOLS, gen: bool = False) -> str:
    return tok.apply_chat_template(chat(messages), tools=tools, tokenize=False, add_generation_prompt=gen)


def test_tools_block_declares_each_schema_on_its_own_line(kit_tokenizer):
    text = apply(kit_tokenizer, EPISODE[1:2])
    block = text[text.index(TOOLS_OPEN) + len(TOOLS_OPEN):text.index(TOOLS_CLOSE)]
    lines = block.strip("\n").split("\n")
    assert [json.loads(line) for line in lines] == [t["function"] for t in TOOLS]
    assert text.startswith("<|im_start|>system\n") and "<tool_call>{\"name\": " in text
    assert text.count(TOOLS_OPEN) == text.count(TOOLS_CLOSE) == 1
    assert TOOLS_OPEN not in apply(kit_tokenizer, EPISODE[1:2], tools=None)


def test_user_system_message_comes_first_in_the_one_system_turn(kit_tokenizer):
    text = apply(kit_tokenizer, EPISODE[:2])
    assert text.startswith("<|im_start|>system\nAnswer with tools.\n\n")
    assert text.count("<|im_start|>system") == 1 and text.count("Answer with tools.") == 1
    without_tools = apply(kit_tokenizer, EPISODE[:2], tools=None)
    assert without_tools.startswith("<|im_start|>system\nAnswer with tools.<|im_end|>\n<|im_start|>user\n")


def test_assistant_calls_render_canonically_and_parse_back(kit_tokenizer):
    for turn in (EPISODE[2], EPISODE[5]):
        before = apply(kit_tokenizer, EPISODE[:EPISODE.index(turn)], gen=True)
        after = apply(kit_tokenizer, EPISODE[:EPISODE.index(turn) + 1])
        assistant_text = after[len(before):-len("<|im_end|>\n")]
        assert assistant_text == format_assistant(turn)  # same text as the demonstrations
        parsed = parse_assistant(assistant_text)
        assert parsed.parse_error is None
        assert [(c.name, c.arguments) for c in parsed.tool_calls] == [(c.name, c.arguments) for c in turn.tool_calls]
        assert parsed.content == turn.content


def test_arguments_given_as_json_string_render_like_a_dict(kit_tokenizer):
    as_dict = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "mass", "arguments": {"el": "Na"}}}]}
    as_str = {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "mass", "arguments": '{"el": "Na"}'}}]}
    render = [kit_tokenizer.apply_chat_template([m], tokenize=False) for m in (as_dict, as_str)]
    assert render[0] == render[1] == '<|im_start|>assistant\n<tool_call>{"name": "mass", "arguments": {"el": "Na"}}</tool_call><|im_end|>\n'


def test_format_call_matches_the_parser_canonical_form():
    for name, args in [("mass", {"el": "Na"}), ("now", {}), ("f", {"s": "é—ü", "x": [1, 2.5], "b": None})]:
        assert format_call(name, args) == format_tool_call(ToolCall("call_0", name, args))


def test_each_tool_result_is_its_own_user_turn(kit_tokenizer):
    text = apply(kit_tokenizer, EPISODE[:5])
    assert text.endswith("<|im_start|>user\n<tool_response>22.99</tool_response><|im_end|>\n"
                         "<|im_start|>user\n<tool_response>32.06</tool_response><|im_end|>\n")


@pytest.mark.parametrize("tools", [TOOLS, None])
def test_prefix_stable_over_a_multi_turn_episode(kit_tokenizer, tools):
    renders = [apply(kit_tokenizer, EPISODE[:k], tools=tools) for k in range(1, len(EPISODE) + 1)]
    for k in range(len(renders) - 1):
        assert renders[k + 1].startswith(renders[k]), f"rendering {k + 1} messages is not a prefix"
        assert len(renders[k + 1]) > len(renders[k])
    with_prompt = [apply(kit_tokenizer, EPISODE[:k], tools=tools, gen=True) for k in range(1, len(EPISODE) + 1)]
    for plain, prompted in zip(renders, with_prompt):
        assert prompted == plain + "<|im_start|>assistant\n"


def test_chat_codec_continues_an_episode_token_exactly(kit_tokenizer):
    """The agent loop's token-in/token-out contract holds with the kit tokenizer."""
    codec = ChatCodec(kit_tokenizer, TOOLS)
    tokens = codec.prompt_tokens(EPISODE[:2])
    history = list(EPISODE[:2])
    for start, end in [(2, 5), (5, 7)]:
        action = EPISODE[start]
        tokens += codec.encode(format_assistant(action)) + [codec.eos_token_id]
        tokens += codec.continuation_tokens(history + [action], EPISODE[start + 1:end])
        history = EPISODE[:end]
    assert codec.decode(tokens) == apply(kit_tokenizer, history, gen=True)


def test_render_chat_matches_apply_chat_template(kit_tokenizer, episodes):
    for episode in episodes[:6]:
        for gen in (False, True):
            expected = kit_tokenizer.apply_chat_template(episode.messages, tools=episode.tools,
                                                         tokenize=False, add_generation_prompt=gen)
            assert render_chat(episode.messages, episode.tools, gen) == expected
