"""labrl messages <-> the OpenAI Responses-API items NeMo Gym speaks.

A NeMo Gym task row carries `responses_create_params` (the prompt as Responses-API `input` items,
the tools as flat function schemas); its verifier takes the episode back as a Responses-API
`response` whose `output` holds every item the agent produced after the prompt: `function_call`
items, the `function_call_output` items that answered them, and `message` items with the
assistant's text. Only plain JSON is built here, so this module needs neither NeMo Gym nor openai.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Iterable

from envs.core import Message, ToolCall

# Responses-API roles that become a system message (the rest are user or assistant turns).
_SYSTEM_ROLES = ("system", "developer")


def _text_of(content: Any) -> str:
    """Text of a Responses-API content field: a string or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def prompt_messages(create_params: dict[str, Any]) -> list[Message]:
    """The row's prompt as labrl messages: `instructions` first (a system message), then `input`."""
    out: list[Message] = []
    if create_params.get("instructions"):
        out.append(Message(role="system", content=str(create_params["instructions"])))
    items = create_params.get("input", [])
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    for item in items:
        role = item.get("role", "user")
        text = _text_of(item.get("content"))
        out.append(Message(role="system" if role in _SYSTEM_ROLES else
                           "assistant" if role == "assistant" else "user", content=text))
    return out


def tool_schemas(create_params: dict[str, Any]) -> list[dict[str, Any]]:
    """The row's function tools (flat Responses-API schemas); other tool kinds are not offered."""
    return [t for t in create_params.get("tools") or [] if t.get("type", "function") == "function"]


def _function_call(call: ToolCall) -> dict[str, Any]:
    return {"type": "function_call", "call_id": call.id, "name": call.name,
            "arguments": json.dumps(call.arguments), "id": f"fc_{uuid.uuid4().hex}",
            "status": "completed"}


def _assistant_text(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "id": f"msg_{uuid.uuid4().hex}",
            "status": "completed", "content": [{"type": "output_text", "text": text, "annotations": []}]}


def output_items(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """The Responses-API output items of the episode's assistant turns and tool results."""
    items: list[dict[str, Any]] = []
    for msg in messages:
        if msg.role == "assistant":
            if msg.content:
                items.append(_assistant_text(msg.content))
            items += [_function_call(c) for c in msg.tool_calls]
        elif msg.role == "tool":
            items.append({"type": "function_call_output", "call_id": msg.tool_call_id or "",
                          "output": msg.content})
        elif msg.role == "user":  # a follow-up from a Gymnasium-shaped environment
            items.append({"type": "message", "role": "user", "content": msg.content})
    return items


def response(create_params: dict[str, Any], messages: Iterable[Message]) -> dict[str, Any]:
    """A complete Responses-API `response` object (what `/verify` and `/step` validate)."""
    return {"id": f"resp_{uuid.uuid4().hex}", "created_at": time.time(), "model": "labrl-policy",
            "object": "response", "output": output_items(messages), "parallel_tool_calls": True,
            "tool_choice": create_params.get("tool_choice", "auto"),
            "tools": tool_schemas(create_params), "error": None, "incomplete_details": None,
            "instructions": None, "metadata": {}, "temperature": None, "top_p": None}
