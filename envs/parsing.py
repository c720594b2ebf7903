"""Hermes/Qwen tool-call text format: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.

Parsing never raises: a block that cannot be understood sets `Message.parse_error`, which the
environment turns into an error observation, so a malformed call is a learning signal and not a
crashed episode. `format_tool_call` renders the one canonical form used for demonstrations; it uses
the same JSON separators as the `tojson` filter of Hugging Face chat templates, so text rendered here
and text rendered by a Qwen-style template differ at most in whitespace around the JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

from envs.core import Message, ToolCall

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK_RE = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.DOTALL)
_SEPARATORS = (", ", ": ")


def _parse_block(body: str) -> tuple[str, dict[str, Any]] | str:
    """(name, arguments) of one block's JSON, or a short error string."""
    try:
        obj = json.loads(body.strip())
    except json.JSONDecodeError as err:
        return f"malformed JSON ({err.msg} at char {err.pos})"
    if not isinstance(obj, dict):
        return "tool call must be a JSON object"
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return "missing tool name"
    args = obj.get("arguments", {})
    if isinstance(args, str):  # some models emit the arguments as a JSON-encoded string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return f"arguments of '{name}' are not valid JSON"
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return f"arguments of '{name}' must be an object"
    return name, args


def parse_assistant(text: str) -> Message:
    """An assistant `Message` from generated text: tool calls, remaining text, and any parse error.

    Call ids are `call_0`, `call_1`, ... in order of the well-formed calls. An unclosed
    `<tool_call>` (e.g. a generation cut short) is a parse error.
    """
    calls: list[ToolCall] = []
    errors: list[str] = []
    pieces: list[str] = []
    pos = 0
    for match in _BLOCK_RE.finditer(text):
        pieces.append(text[pos:match.start()])
        pos = match.end()
        parsed = _parse_block(match.group(1))
        if isinstance(parsed, str):
            errors.append(parsed)
        else:
            calls.append(ToolCall(id=f"call_{len(calls)}", name=parsed[0], arguments=parsed[1]))
    rest = text[pos:]
    if OPEN in rest:
        cut = rest.index(OPEN)
        pieces.append(rest[:cut])
        errors.append("unclosed <tool_call>")
    else:
        pieces.append(rest)
    content = "".join(pieces).strip()
    return Message(role="assistant", content=content, tool_calls=calls,
                   parse_error="; ".join(errors) if errors else None)


def format_tool_call(call: ToolCall) -> str:
    """The canonical text of one call; `parse_assistant` reads it back to the same name and arguments."""
    body = json.dumps({"name": call.name, "arguments": call.arguments}, separators=_SEPARATORS,
                      ensure_ascii=False)
    return f"{OPEN}{body}{CLOSE}"


def format_assistant(message: Message) -> str:
    """Canonical text of an assistant action: its content, then its calls (no separators).

    Matches what the agent loop renders for reference demonstrations.
    """
    return message.content + "".join(format_tool_call(c) for c in message.tool_calls)
