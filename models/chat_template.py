"""The chat template of the local model kit: ChatML turns with Hermes-style tool calls, written here.

Layout (every turn is `<|im_start|>ROLE\\n ... <|im_end|>\\n`):

* With `tools`, one system turn opens the conversation: the caller's own system message (if the
  first message is a system message) followed by a blank line, then a block that lists each tool's
  JSON schema on its own line between `<tools>` and `</tools>` and says how to call them.
* An assistant turn is its content followed directly by its calls, each rendered as
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`: exactly the text of
  `envs.parsing.format_tool_call` (same key order and separators, non-ASCII kept), so the text a
  demonstration renders is the text the parser reads back. Arguments given as a JSON string (the
  OpenAI wire form) are inserted as they are.
* Each `tool` message is its own user turn, `<tool_response>CONTENT</tool_response>`. Qwen groups
  consecutive tool results into one user turn; we do not, because then appending a second result
  would rewrite the end of the first turn, and the agent loop (envs/chat.py) needs every rendering
  of a conversation to be a string prefix of the rendering of any longer one.
* `add_generation_prompt` appends `<|im_start|>assistant\\n`.

The template is built from string pieces without literal newlines, so it renders the same under
any Jinja whitespace settings (Hugging Face uses trim_blocks/lstrip_blocks; `render_chat` does not).
"""

from __future__ import annotations

import functools
import json
from typing import Any

TOOLS_OPEN, TOOLS_CLOSE = "<tools>", "</tools>"

# What the tools block says around the schemas. Plain words: small models learn the format from
# demonstrations, larger ones may read it.
# The intro does not spell the delimiters out, so each appears exactly once in a prompt.
TOOLS_INTRO = "You can call the functions below. Each line of the block is the JSON schema of one function."
TOOLS_HOWTO = ("To call a function, write <tool_call>{\"name\": FUNCTION_NAME, \"arguments\": "
               "ARGUMENTS_AS_JSON_OBJECT}</tool_call>. You may write several calls in one reply. "
               "Each result comes back as <tool_response>RESULT</tool_response>.")


def _jinja_str(text: str) -> str:
    """`text` as a Jinja string literal (JSON escaping is valid Jinja string syntax)."""
    return json.dumps(text)


# Message content: a string, None (an assistant turn with only calls), or OpenAI content parts.
_CONTENT_MACRO = (
    "{%- macro content(m) -%}"
    "{%- if m.content is string -%}{{ m.content }}"
    "{%- elif m.content -%}{%- for p in m.content -%}{{ p.text if p.text is defined else '' }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
)

# One call in canonical form; `arguments` may be a dict or an already-encoded JSON string.
_CALL_MACRO = (
    "{%- macro call(c) -%}"
    "{%- set f = c.function if c.function is defined else c -%}"
    "{%- set args = f.arguments if f.arguments is defined and f.arguments is not none else {} -%}"
    "{{ '<tool_call>{\"name\": ' }}{{ f.name | tojson }}{{ ', \"arguments\": ' }}"
    "{%- if args is string -%}{{ args }}{%- else -%}{{ args | tojson }}{%- endif -%}"
    "{{ '}</tool_call>' }}"
    "{%- endmacro -%}"
)

_SYSTEM = (
    "{%- set has_system = messages | length > 0 and messages[0].role == 'system' -%}"
    "{%- if tools -%}"
    "{{ '<|im_start|>system\\n' }}"
    "{%- if has_system -%}{{ content(messages[0]) }}{{ '\\n\\n' }}{%- endif -%}"
    "{{ " + _jinja_str(TOOLS_INTRO + "\n" + TOOLS_OPEN) + " }}"
    "{%- for t in tools -%}{{ '\\n' }}{{ (t.function if t.function is defined else t) | tojson }}{%- endfor -%}"
    "{{ " + _jinja_str("\n" + TOOLS_CLOSE + "\n" + TOOLS_HOWTO) + " }}"
    "{{ '<|im_end|>\\n' }}"
    "{%- elif has_system -%}"
    "{{ '<|im_start|>system\\n' }}{{ content(messages[0]) }}{{ '<|im_end|>\\n' }}"
    "{%- endif -%}"
)

_TURNS = (
    "{%- for m in messages -%}"
    "{%- if loop.first and has_system -%}"
    "{%- elif m.role == 'tool' -%}"
    "{{ '<|im_start|>user\\n<tool_response>' }}{{ content(m) }}{{ '</tool_response><|im_end|>\\n' }}"
    "{%- elif m.role == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}{{ content(m) }}"
    "{%- for c in m.tool_calls or [] -%}{{ call(c) }}{%- endfor -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + m.role + '\\n' }}{{ content(m) }}{{ '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

CHAT_TEMPLATE = _CONTENT_MACRO + _CALL_MACRO + _SYSTEM + _TURNS


def format_call(name: str, arguments: dict[str, Any]) -> str:
    """One call as the template renders it (the text of `envs.parsing.format_tool_call`, which
    `models` may not import: the two packages are independent layers)."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>{body}</tool_call>"


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """The `tojson` filter as Hugging Face chat templates define it (Jinja's own escapes HTML)."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


@functools.lru_cache(maxsize=1)
def _compiled() -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment()
    env.filters["tojson"] = _tojson
    return env.from_string(CHAT_TEMPLATE)


def render_chat(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                add_generation_prompt: bool = False) -> str:
    """Render `CHAT_TEMPLATE` without a tokenizer (the corpus is rendered before one exists).

    Gives the same text as `tokenizer.apply_chat_template(..., tokenize=False)` of a kit tokenizer.
    """
    return _compiled().render(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt)
