"""OpenAI's chat-completions wire format: request validation, responses, and stream chunks.

Pure functions (no HTTP), so the server stays a thin shell and every rule here is testable alone.
Requests are checked strictly: a parameter labrl cannot honour (constrained decoding, top
logprobs, penalties, response formats, ...) is refused with a 400 that names it, never silently
ignored, because an agent trained against an endpoint that dropped its settings would learn from
completions it did not ask for. A key sent as JSON null asks for nothing and is ignored (clients
and frameworks serialise unset options that way).
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from typing import Any

from envs.core import Message, ToolCall
from rollout.openai_api.types import ChatParams, Choice, CompletionResult, EndpointError

MAX_N = 16
# Accepted with no effect: `parallel_tool_calls` (every call the parser finds is returned) and
# `user` (an end-user id for abuse tracking, meaningless here).
_IGNORED = {"parallel_tool_calls": bool, "user": str}
_HANDLED = {"model", "messages", "tools", "tool_choice", "temperature", "top_p", "max_tokens",
            "max_completion_tokens", "n", "stop", "seed", "logprobs", "top_logprobs", "stream",
            "stream_options", "presence_penalty", "frequency_penalty"} | set(_IGNORED)
# Keys an assistant message echoed back from a response may carry (`messages.append(resp...message)`
# dumps them); they mean nothing to the prompt, so they are dropped when empty.
_ECHOED_MESSAGE_KEYS = {"refusal", "annotations", "audio", "function_call", "reasoning_content", "reasoning"}
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


@dataclass
class ParsedRequest:
    """A validated `/chat/completions` body. `model` is what the agent asked for; the endpoint serves
    the policy whatever the name (agents written for a hosted model keep their model string)."""

    messages: list[Message]
    tools: list[dict] | None
    params: ChatParams
    stream: bool = False
    model: str = ""
    include_usage: bool = False


def _bad(param: str, message: str, code: str = "invalid_value") -> EndpointError:
    return EndpointError(400, code, message, param=param)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _int_param(body: dict, name: str, lo: int, hi: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value) or value < lo or (hi is not None and value > hi):
        upper = f" and <= {hi}" if hi is not None else ""
        raise _bad(name, f"'{name}' must be an integer >= {lo}{upper}, not {value!r}")
    return value


def _float_param(body: dict, name: str, lo: float, hi: float, lo_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_number(value) or value > hi or value < lo or (lo_open and value == lo):
        bracket = "(" if lo_open else "["
        raise _bad(name, f"'{name}' must be a number in {bracket}{lo}, {hi}], not {value!r}")
    return float(value)


def _bool_param(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(name, f"'{name}' must be a boolean, not {value!r}")
    return value


def _check_unsupported(body: dict) -> None:
    for key, value in body.items():
        if key not in _HANDLED and value is not None:
            raise _bad(key, f"unsupported parameter '{key}': labrl's endpoint does not implement it; "
                            "remove it from the request", code="unsupported_parameter")
    for key in ("presence_penalty", "frequency_penalty"):
        value = body.get(key)
        if value is not None and (not _is_number(value) or value != 0):
            raise _bad(key, f"'{key}' must be 0: labrl samples from the policy's own distribution, which "
                            "the trainer recomputes, so penalties are not supported", "unsupported_parameter")
    if body.get("top_logprobs") not in (None, 0):
        raise _bad("top_logprobs", "'top_logprobs' is not supported (only the sampled tokens' logprobs are "
                                   "returned); use logprobs=true with top_logprobs 0 or unset",
                   "unsupported_parameter")
    for key, kind in _IGNORED.items():
        if body.get(key) is not None and not isinstance(body[key], kind):
            raise _bad(key, f"'{key}' must be a {kind.__name__}, not {body[key]!r}")


def _tool_choice(value: Any) -> str:
    if value is None or value in ("auto", "none"):
        return value or "auto"
    if value == "required" or isinstance(value, dict):
        raise _bad("tool_choice", f"tool_choice {json.dumps(value)} is not supported: labrl does not "
                                  "constrain decoding, so it cannot force a tool call; use 'auto' or 'none'",
                   "unsupported_parameter")
    raise _bad("tool_choice", f"'tool_choice' must be 'auto' or 'none', not {value!r}")


def _tools(value: Any) -> list[dict] | None:
    """The OpenAI tool schemas as given (shape-checked so the chat template can render them)."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise _bad("tools", "'tools' must be a list of {'type': 'function', 'function': {...}} objects")
    for i, tool in enumerate(value):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            raise _bad(f"tools[{i}]", f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _bad(f"tools[{i}].function.name", f"tools[{i}].function.name must be a non-empty string")
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise _bad(f"tools[{i}].function.parameters", f"tools[{i}].function.parameters must be an object")
    return list(value) or None


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise _bad("stop", f"'stop' must be a non-empty string or a list of them, not {value!r}")
    return list(stops)


def _max_tokens(body: dict) -> int | None:
    legacy = _int_param(body, "max_tokens", 1)
    modern = _int_param(body, "max_completion_tokens", 1)
    if legacy is not None and modern is not None and legacy != modern:
        raise _bad("max_tokens", f"max_tokens ({legacy}) and max_completion_tokens ({modern}) disagree; "
                                 "send one of them")
    return modern if modern is not None else legacy


def _stream_options(body: dict) -> bool:
    """Whether the stream ends with a usage chunk."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise _bad("stream_options", "'stream_options' must be an object like {'include_usage': true}")
    for key in options:
        if key != "include_usage":
            raise _bad(f"stream_options.{key}", f"unsupported parameter 'stream_options.{key}'",
                       "unsupported_parameter")
    return _bool_param(options, "include_usage")


def parse_request(body: Any) -> ParsedRequest:
    """Validate a `/chat/completions` body; raises `EndpointError` (400) naming the bad parameter."""
    if not isinstance(body, dict):
        raise _bad("", "the request body must be a JSON object")
    _check_unsupported(body)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model", f"'model' must be a string, not {model!r}")
    params = ChatParams(max_tokens=_max_tokens(body), temperature=_float_param(body, "temperature", 0.0, 2.0),
                        top_p=_float_param(body, "top_p", 0.0, 1.0, lo_open=True),
                        n=_int_param(body, "n", 1, MAX_N) or 1, stop=_stop(body.get("stop")),
                        seed=_int_param(body, "seed", -(2 ** 63)), tool_choice=_tool_choice(body.get("tool_choice")),
                        logprobs=_bool_param(body, "logprobs"))
    return ParsedRequest(messages=convert_messages(body.get("messages")), tools=_tools(body.get("tools")),
                         params=params, stream=_bool_param(body, "stream"), model=model or "",
                         include_usage=_stream_options(body))


# -- messages ------------------------------------------------------------------------------------


def _content(value: Any, where: str) -> str:
    """Text of a message's content: a string, null, or text parts (joined by newlines, as vLLM does)."""
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, list):
        texts = []
        for j, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _bad(f"{where}.content", f"{where}.content[{j}]: only text parts are supported, not {kind!r}")
            texts.append(part["text"])
        return "\n".join(texts)
    raise _bad(f"{where}.content", f"{where}.content must be a string, null or a list of text parts")


def _tool_call(raw: Any, where: str) -> ToolCall:
    fn = raw.get("function") if isinstance(raw, dict) else None
    if not isinstance(fn, dict) or raw.get("type", "function") != "function":
        raise _bad(where, f"{where} must be {{'id', 'type': 'function', 'function': {{'name', 'arguments'}}}}")
    if not isinstance(raw.get("id"), str):
        raise _bad(f"{where}.id", f"{where}.id must be a string")
    if not isinstance(fn.get("name"), str) or not fn["name"]:
        raise _bad(f"{where}.function.name", f"{where}.function.name must be a non-empty string")
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as err:
            raise _bad(f"{where}.function.arguments",
                       f"{where}.function.arguments is not valid JSON ({err.msg} at char {err.pos})") from err
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise _bad(f"{where}.function.arguments", f"{where}.function.arguments must be a JSON object")
    return ToolCall(id=raw["id"], name=fn["name"], arguments=args)


def _message(raw: Any, where: str, call_names: dict[str, str]) -> Message:
    if not isinstance(raw, dict):
        raise _bad(where, f"{where} must be an object with a 'role'")
    role = _ROLES.get(raw.get("role")) if isinstance(raw.get("role"), str) else None
    if role is None:
        raise _bad(f"{where}.role", f"{where}.role must be one of {sorted(_ROLES)}, not {raw.get('role')!r}")
    allowed = {"role", "content", "name"} | {"assistant": {"tool_calls"}, "tool": {"tool_call_id"}}.get(role, set())
    for key, value in raw.items():
        if key not in allowed and not (key in _ECHOED_MESSAGE_KEYS and not value):
            raise _bad(f"{where}.{key}", f"{where}.{key} is not supported in a {raw['role']} message",
                       "unsupported_parameter")
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise _bad(f"{where}.name", f"{where}.name must be a string")
    message = Message(role=role, content=_content(raw.get("content"), where), name=name)
    if role == "assistant":
        calls = raw.get("tool_calls") or []
        if not isinstance(calls, list):
            raise _bad(f"{where}.tool_calls", f"{where}.tool_calls must be a list")
        message.tool_calls = [_tool_call(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls)]
        call_names.update({c.id: c.name for c in message.tool_calls})
    elif role == "tool":
        # Optional here (OpenAI requires it): an agent answering a turn that made no call, as labrl's
        # environments do ("no tool call"), has no id to give, and templates do not render ids.
        call_id = raw.get("tool_call_id")
        if call_id is not None and not isinstance(call_id, str):
            raise _bad(f"{where}.tool_call_id", f"{where}.tool_call_id must be the id of the call it answers")
        message.tool_call_id = call_id
        # Templates that label tool results need the tool's name; OpenAI's tool messages carry only
        # the call id, so the name comes from the call it answers.
        message.name = name if name is not None else call_names.get(message.tool_call_id)
    return message


def convert_messages(raw: Any) -> list[Message]:
    """OpenAI chat messages as labrl `Message`s (developer -> system; tool arguments decoded)."""
    if not isinstance(raw, list) or not raw:
        raise _bad("messages", "'messages' must be a non-empty list")
    call_names: dict[str, str] = {}
    return [_message(m, f"messages[{i}]", call_names) for i, m in enumerate(raw)]


# -- responses -----------------------------------------------------------------------------------


def new_request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def _call_id(request_id: str, choice: int, call: int) -> str:
    """A call id unique across the episode, as OpenAI's are: the parser numbers calls per message
    (call_0, call_1, ...), and frameworks that key tool results by id across turns would mix them up.
    Prompts never depend on ids (templates do not render them; `session.message_key` ignores them)."""
    return f"call_{request_id.removeprefix('chatcmpl-')[:24]}_{choice}_{call}"


def _tool_call_dict(call: ToolCall, call_id: str) -> dict:
    return {"id": call_id, "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)}}


def _finish_reason(choice: Choice) -> str:
    return "tool_calls" if choice.message.tool_calls and choice.finish_reason != "length" else choice.finish_reason


def _logprobs(choice: Choice) -> dict:
    """One entry per sampled token, the closing EOS included, so the entries sum to the completion's
    log-probability under the policy (what a trainer of this agent would use)."""
    return {"content": [{"token": tok, "logprob": lp, "bytes": list(tok.encode("utf-8")), "top_logprobs": []}
                        for tok, lp in zip(choice.tokens, choice.logprobs)],
            "refusal": None}


def _usage(result: CompletionResult) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def _envelope(obj: str, model: str, request_id: str, created: int, result: CompletionResult) -> dict:
    # system_fingerprint names the weights that answered: OpenAI's field for "which backend
    # configuration produced this", and a cheap way for an agent's logs to show policy updates.
    return {"id": request_id, "object": obj, "created": created, "model": model,
            "system_fingerprint": f"labrl-policy-v{result.policy_version}"}


def chat_completion_response(result: CompletionResult, model: str, request_id: str, created: int,
                             want_logprobs: bool) -> dict:
    """A `chat.completion` object. Content is None when the message is only tool calls, as OpenAI's."""
    choices = []
    for i, choice in enumerate(result.choices):
        calls = choice.message.tool_calls
        message: dict[str, Any] = {"role": "assistant",
                                   "content": None if calls and not choice.message.content else choice.message.content}
        if calls:
            message["tool_calls"] = [_tool_call_dict(c, _call_id(request_id, i, j)) for j, c in enumerate(calls)]
        choices.append({"index": i, "message": message, "logprobs": _logprobs(choice) if want_logprobs else None,
                        "finish_reason": _finish_reason(choice)})
    return {**_envelope("chat.completion", model, request_id, created, result), "choices": choices,
            "usage": _usage(result)}


def chat_completion_chunks(result: CompletionResult, model: str, request_id: str, created: int,
                           want_logprobs: bool, include_usage: bool = False) -> list[dict]:
    """The same result as `chat.completion.chunk` objects, for `stream=true`.

    Generation is not incremental: the router returns whole completions (the engine's tokens and
    logprobs are recorded per completion), so the stream replays the finished completion as
    OpenAI-shaped deltas: per choice a role chunk, a content chunk (carrying the logprobs), for each
    tool call a header chunk (id, name, empty arguments) then its arguments, and a finish chunk; with
    `include_usage` every chunk has `usage: null` and a last chunk with no choices holds the usage.
    Clients that assemble deltas get exactly the non-streaming message.
    """
    head = _envelope("chat.completion.chunk", model, request_id, created, result)
    chunks: list[dict] = []

    def emit(index: int, delta: dict, logprobs: dict | None = None, finish: str | None = None) -> None:
        chunk = {**head, "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                      "finish_reason": finish}]}
        if include_usage:
            chunk["usage"] = None
        chunks.append(chunk)

    for i, choice in enumerate(result.choices):
        logprobs = _logprobs(choice) if want_logprobs else None
        emit(i, {"role": "assistant", "content": ""}, None if choice.message.content else logprobs)
        if choice.message.content:
            emit(i, {"content": choice.message.content}, logprobs)
        for j, call in enumerate(choice.message.tool_calls):
            full = _tool_call_dict(call, _call_id(request_id, i, j))
            emit(i, {"tool_calls": [{"index": j, "id": full["id"], "type": "function",
                                     "function": {"name": call.name, "arguments": ""}}]})
            emit(i, {"tool_calls": [{"index": j, "function": {"arguments": full["function"]["arguments"]}}]})
        emit(i, {}, finish=_finish_reason(choice))
    if include_usage:
        chunks.append({**head, "choices": [], "usage": _usage(result)})
    return chunks


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict:
    """An OpenAI-style error body for refusals that are not `EndpointError`s (404, 405, 413, 500)."""
    return EndpointError(status, code, message, param).body()
