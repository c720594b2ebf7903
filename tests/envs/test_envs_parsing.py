"""Hermes/Qwen tool-call parsing, the canonical format's round trip, and a Qwen-style chat template."""

from __future__ import annotations

import json
import string

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from envs.core import ToolCall
from envs.parsing import format_assistant, format_tool_call, parse_assistant
from envs.suite.common import calc
from envs.tools import Tool


def test_parses_calls_ids_and_content() -> None:
    text = ('Let me look.\n<tool_call>\n  {"name": "mass",\n "arguments": {"el": "Na"}}\n</tool_call>'
            ' and <tool_call>{"name": "calc", "arguments": "{\\"expr\\": \\"1+2\\"}"}</tool_call>')
    msg = parse_assistant(text)
    assert msg.role == "assistant" and msg.parse_error is None
    assert [(c.id, c.name, c.arguments) for c in msg.tool_calls] == [
        ("call_0", "mass", {"el": "Na"}), ("call_1", "calc", {"expr": "1+2"})]
    assert msg.content == "Let me look.\n and"


def test_plain_text_and_no_arguments() -> None:
    assert parse_assistant("  just text ").content == "just text"
    assert parse_assistant("just text").tool_calls == []
    msg = parse_assistant('<tool_call>{"name": "ping"}</tool_call>')
    assert msg.tool_calls[0].arguments == {} and msg.parse_error is None


@pytest.mark.parametrize("body, error", [
    ('{"name": "x", "arguments": {', "malformed JSON"),
    ('{"arguments": {}}', "missing tool name"),
    ('{"name": 3, "arguments": {}}', "missing tool name"),
    ('{"name": "x", "arguments": [1, 2]}', "must be an object"),
    ('{"name": "x", "arguments": "not json"}', "not valid JSON"),
    ('["x"]', "must be a JSON object"),
])
def test_malformed_blocks_set_parse_error(body: str, error: str) -> None:
    msg = parse_assistant(f'<tool_call>{body}</tool_call><tool_call>{{"name": "ok", "arguments": {{}}}}</tool_call>')
    assert msg.parse_error is not None and error in msg.parse_error
    assert [c.name for c in msg.tool_calls] == ["ok"] and msg.tool_calls[0].id == "call_0"


def test_unclosed_block_is_a_parse_error() -> None:
    msg = parse_assistant('thinking <tool_call>{"name": "calc", "arguments": {"expr": "1+')
    assert msg.parse_error == "unclosed <tool_call>" and msg.content == "thinking" and not msg.tool_calls


@pytest.mark.parametrize("arguments", [
    {}, {"el": "Na"}, {"answer": 58.44}, {"n": -3, "ok": True, "none": None},
    {"muts": ["A1G", "L3V"], "nested": {"k": [1, 2.5]}}, {"text": "quote \" and \\ and é <tool_call>"},
])
def test_round_trip(arguments: dict) -> None:
    call = ToolCall("call_0", "tool", arguments)
    text = format_tool_call(call)
    assert text.startswith('<tool_call>{"name": "tool", "arguments": ') and text.endswith("}</tool_call>")
    back = parse_assistant(text)
    assert back.parse_error is None and back.tool_calls == [call] and back.content == ""
    two = parse_assistant(format_assistant(parse_assistant("hi" + text + text)))
    assert two.content == "hi" and [c.arguments for c in two.tool_calls] == [arguments, arguments]


def test_canonical_form_is_compact() -> None:
    assert format_tool_call(ToolCall("c", "mass", {"el": "Na"})) == \
        '<tool_call>{"name": "mass", "arguments": {"el": "Na"}}</tool_call>'


# A chat template written for this test after Qwen2.5's conventions: tool schemas inside <tools> in
# the system turn, assistant calls as JSON in <tool_call> blocks, tool results in <tool_response>.
QWEN_STYLE_TEMPLATE = (
    "{%- if tools -%}"
    "{{ '<|im_start|>system\\n# Tools\\n<tools>' }}"
    "{%- for tool in tools -%}{{ '\\n' }}{{ tool | tojson }}{%- endfor -%}"
    "{{ '\\n</tools>\\nCall tools inside <tool_call></tool_call> tags.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}{{ m.content }}"
    "{%- for tc in m.tool_calls | default([]) -%}"
    "{%- set f = tc.function if tc.function is defined else tc -%}"
    "{{ '\\n<tool_call>\\n{\"name\": \"' }}{{ f.name }}{{ '\", \"arguments\": ' }}"
    "{{ f.arguments | tojson }}{{ '}\\n</tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- elif m.role == 'tool' -%}"
    "{{ '<|im_start|>user\\n<tool_response>\\n' }}{{ m.content }}{{ '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + m.role + '\\n' }}{{ m.content }}{{ '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def _char_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    core = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(specials + chars)},
                                      unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = QWEN_STYLE_TEMPLATE
    return tok


def test_chat_template_renders_schema_and_calls_that_parse_back() -> None:
    tok = _char_tokenizer()
    schema = Tool.from_function(calc).schema
    action = parse_assistant(format_tool_call(ToolCall("call_0", "calc", {"expr": "2*1.008+15.999"})))
    messages = [{"role": "user", "content": "Molar mass of H2O?"}, action.to_chat(),
                {"role": "tool", "content": "18.015", "tool_call_id": "call_0", "name": "calc"}]
    text = tok.apply_chat_template(messages, tools=[schema], tokenize=False, add_generation_prompt=True)
    tools_block = text.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0]
    assert json.loads(tools_block) == schema
    assistant_text = text.split("<|im_start|>assistant\n", 1)[1].split("<|im_end|>", 1)[0]
    reparsed = parse_assistant(assistant_text)
    assert reparsed.parse_error is None and reparsed.tool_calls == action.tool_calls
    # The template's JSON differs from the canonical form only by newlines around it.
    assert assistant_text.replace("\n", "") == format_assistant(action)
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert text.endswith("<|im_start|>assistant\n")
