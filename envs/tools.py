"""Tools: plain Python functions whose docstring and type hints become the schema the model sees.

Why functions and not hand-written schemas: the signature is the single source of truth, so the
schema shown to the model, the argument validation and the call can never drift apart.

A parameter named `state` is the environment's state. The environment injects it; it is never part
of the schema and a model that passes it gets an error. `run_tool_call` turns everything that can
go wrong in a call (unknown tool, bad or oversized arguments, a tool that raises or runs past its
time limit) into an error observation (`Message(role="tool", is_error=True)`) the model can learn
from, never an exception.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Union

from envs.core import Message, ToolCall

logger = logging.getLogger(__name__)

STATE_PARAM = "state"
DEFAULT_MAX_ARG_CHARS = 2000
_SECTION_RE = re.compile(r"^(Args|Arguments|Parameters|Returns|Return|Raises|Yields|Examples?|Notes?):\s*$")
_ARG_LINE_RE = re.compile(r"^(\*{0,2}\w+)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")

ErrorKind = Literal["unknown_tool", "bad_arguments", "too_large", "raised", "timeout"]


class ToolArgumentError(ValueError):
    """Arguments that do not match the tool's signature; the message is shown to the model."""


@dataclass
class Tool:
    """A callable the model may invoke, with the OpenAI-style JSON schema it is described by.

    `fn` is None for a tool known only by its schema (a remote environment executes it). A tool with
    `ends_episode=True` is a verifier (`submit`): it returns a `Reward` and its successful call ends
    the episode in `ToolEnvironment`.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any] | None = None
    hints: dict[str, Any] = field(default_factory=dict)
    needs_state: bool = False
    ends_episode: bool = False
    timeout_s: float | None = None

    @classmethod
    def from_function(cls, fn: Callable[..., Any], name: str | None = None, *,
                      ends_episode: bool = False, timeout_s: float | None = None) -> "Tool":
        """Build a tool from `fn`'s Google-style docstring (summary + `Args:`) and type hints."""
        sig = inspect.signature(fn)
        try:
            hints = typing.get_type_hints(fn)
        except (NameError, TypeError) as err:
            raise TypeError(f"cannot resolve type hints of {fn!r}: {err}") from err
        summary, arg_docs = parse_docstring(inspect.getdoc(fn) or "")
        properties: dict[str, Any] = {}
        required: list[str] = []
        kept_hints: dict[str, Any] = {}
        needs_state = False
        for pname, param in sig.parameters.items():
            if pname == STATE_PARAM:
                needs_state = True
                continue
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"tool {fn.__name__}: *args/**kwargs cannot be described to a model")
            hint = hints.get(pname, Any)
            kept_hints[pname] = hint
            prop = type_to_schema(hint)
            if pname in arg_docs:
                prop = {**prop, "description": arg_docs[pname]}
            properties[pname] = prop
            if param.default is inspect.Parameter.empty:
                required.append(pname)
        parameters = {"type": "object", "properties": properties, "required": required}
        return cls(name=name or fn.__name__, description=summary, parameters=parameters, fn=fn,
                   hints=kept_hints, needs_state=needs_state, ends_episode=ends_episode,
                   timeout_s=timeout_s)

    @classmethod
    def from_schema(cls, schema: dict[str, Any]) -> "Tool":
        """A schema-only tool (no local function), e.g. one that a remote environment executes."""
        fn_schema = schema.get("function", schema)
        return cls(name=fn_schema["name"], description=fn_schema.get("description", ""),
                   parameters=fn_schema.get("parameters") or {"type": "object", "properties": {}})

    @property
    def schema(self) -> dict[str, Any]:
        """The OpenAI function-calling schema (what `apply_chat_template(tools=[...])` takes)."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}}


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Summary (text before the first section) and per-argument descriptions of a Google docstring."""
    lines = doc.splitlines()
    summary_lines: list[str] = []
    args: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    arg_indent: int | None = None
    for raw in lines:
        stripped = raw.strip()
        header = _SECTION_RE.match(stripped)
        if header and (raw[:1] not in (" ", "\t") or section is None):
            section, current, arg_indent = header.group(1), None, None
            continue
        if section is None:
            summary_lines.append(stripped)
            continue
        if section not in ("Args", "Arguments", "Parameters") or not stripped:
            continue
        indent = len(raw) - len(raw.lstrip())
        match = _ARG_LINE_RE.match(stripped)
        if match and (arg_indent is None or indent <= arg_indent):
            arg_indent = indent
            current = match.group(1).lstrip("*")
            args[current] = match.group(3).strip()
        elif current is not None:
            args[current] = (args[current] + " " + stripped).strip()
    summary = " ".join(" ".join(summary_lines).split())
    return summary, args


def _is_optional(hint: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(members) != len(typing.get_args(hint)):
            inner = members[0] if len(members) == 1 else Union[tuple(members)]  # type: ignore[misc]
            return True, inner
    return False, hint


def type_to_schema(hint: Any) -> dict[str, Any]:
    """JSON schema for a supported type hint: str/int/float/bool/list[...]/dict/Literal/Optional."""
    if hint is Any or hint is inspect.Parameter.empty:
        return {}
    optional, inner = _is_optional(hint)
    if optional:
        schema = type_to_schema(inner)
        if isinstance(schema.get("type"), str):
            return {**schema, "type": [schema["type"], "null"]}
        return {"anyOf": [schema, {"type": "null"}]}
    origin = typing.get_origin(hint)
    if origin is Literal:
        values = list(typing.get_args(hint))
        kinds = {type(v) for v in values}
        base = type_to_schema(kinds.pop()) if len(kinds) == 1 else {}
        return {**base, "enum": values}
    if origin in (Union, types.UnionType):
        return {"anyOf": [type_to_schema(a) for a in typing.get_args(hint)]}
    if hint is str:
        return {"type": "string"}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer"}
    if hint is float:
        return {"type": "number"}
    if hint is list or origin is list:
        args = typing.get_args(hint)
        return {"type": "array", "items": type_to_schema(args[0])} if args else {"type": "array"}
    if hint is dict or origin is dict:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is not Any:
            return {"type": "object", "additionalProperties": type_to_schema(args[1])}
        return {"type": "object"}
    raise TypeError(f"unsupported tool parameter type: {hint!r}")


def _type_name(hint: Any) -> str:
    schema = type_to_schema(hint)
    kind = schema.get("type", "any")
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    if kind == "array" and "type" in schema.get("items", {}):
        return f"array of {schema['items']['type']}"
    return "/".join(kind) if isinstance(kind, list) else str(kind)


def coerce_value(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against `hint`, returning it (ints become floats where a float is expected).

    Raises ToolArgumentError with a short message naming `where` (the argument) on a mismatch.
    """
    if hint is Any or hint is inspect.Parameter.empty:
        return value
    optional, inner = _is_optional(hint)
    if optional:
        return None if value is None else coerce_value(value, inner, where)
    origin = typing.get_origin(hint)
    ok = True
    if origin is Literal:
        ok = value in typing.get_args(hint) and not (isinstance(value, bool)
                                                     and bool not in {type(a) for a in typing.get_args(hint)})
    elif origin in (Union, types.UnionType):
        for member in typing.get_args(hint):
            try:
                return coerce_value(value, member, where)
            except ToolArgumentError:
                continue
        ok = False
    elif hint is str:
        ok = isinstance(value, str)
    elif hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            return float(value)
    elif hint is list or origin is list:
        if not isinstance(value, list):
            ok = False
        else:
            args = typing.get_args(hint)
            if args:
                return [coerce_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    elif hint is dict or origin is dict:
        ok = isinstance(value, dict)
    if not ok:
        raise ToolArgumentError(f"'{where}' must be {_type_name(hint)}")
    return value


_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def _schema_types(schema: dict[str, Any]) -> list[str]:
    kinds = schema.get("type")
    return [kinds] if isinstance(kinds, str) else list(kinds or [])


def _schema_name(schema: dict[str, Any]) -> str:
    """How an argument's JSON schema is named in an error the model reads ("integer or null")."""
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        return " or ".join(_schema_name(o) for o in options if isinstance(o, dict))
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    kinds = _schema_types(schema)
    items = schema.get("items")
    if kinds == ["array"] and isinstance(items, dict) and _schema_types(items):
        return f"array of {_schema_name(items)}"
    return "/".join(kinds) or "valid"


def _same_json(a: Any, b: Any) -> bool:
    """JSON equality: `true` is not `1`, although Python says True == 1."""
    return isinstance(a, bool) is isinstance(b, bool) and a == b


def check_json_value(value: Any, schema: Any, where: str) -> Any:
    """Check `value` against a JSON schema fragment, for tools known only by their schema (MCP, remote).

    Why here and not in the server: a call with bad arguments must come back as the same error
    observation whether the tool runs here or on a server, and must never cost a round trip.
    Checked: `type` (a name or a list), `enum`, `anyOf`/`oneOf`, array `items`. Other keywords
    (ranges, patterns, nested object properties, `$ref`) are left to the server. An integral
    float where an integer is expected (a model writing 10.0) is accepted and sent as an int, as
    JSON Schema counts 10.0 as an integer.
    """
    if not isinstance(schema, dict):
        return value
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        for option in options:
            try:
                return check_json_value(value, option, where)
            except ToolArgumentError:
                continue
        raise ToolArgumentError(f"'{where}' must be {_schema_name(schema)}")
    kinds = _schema_types(schema)
    fits = ("enum" not in schema or any(_same_json(value, e) for e in schema["enum"])) and (
        not kinds or any(_JSON_TYPES.get(k, lambda v: True)(value) for k in kinds))
    if not fits:
        raise ToolArgumentError(f"'{where}' must be {_schema_name(schema)}")
    if isinstance(value, float) and "integer" in kinds and "number" not in kinds:
        return int(value)
    if isinstance(value, list) and "items" in schema:
        return [check_json_value(v, schema["items"], f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def validate_arguments(tool: Tool, arguments: Any) -> dict[str, Any]:
    """Arguments checked against the tool's signature; raises ToolArgumentError on any mismatch.

    A parameter with a Python type hint (tools built from functions) is checked against the hint;
    one without (schema-only tools, e.g. from an MCP server) against its JSON schema. Keys the
    schema does not list are refused unless it sets `additionalProperties`.
    """
    if not isinstance(arguments, dict):
        raise ToolArgumentError("arguments must be an object")
    props = tool.parameters.get("properties", {})
    extra_allowed = tool.parameters.get("additionalProperties") not in (None, False)
    for key in arguments:
        if key not in props and not extra_allowed:
            raise ToolArgumentError(f"unexpected argument '{key}'")
    for key in tool.parameters.get("required", []):
        if key not in arguments:
            raise ToolArgumentError(f"missing argument '{key}'")
    return {k: coerce_value(v, tool.hints[k], k) if k in tool.hints else check_json_value(v, props.get(k), k)
            for k, v in arguments.items()}


def format_result(value: Any) -> str:
    """Text of a tool's return value: strings as they are, numbers compactly, the rest as JSON."""
    if isinstance(value, str):
        return value
    reason = getattr(value, "reason", None)
    if reason is not None:  # a Reward from a verifier tool: the reason is the observation
        return str(reason)
    if isinstance(value, float):
        return format(value, ".6g")
    if isinstance(value, (dict, list, tuple, bool, int)) or value is None:
        return json.dumps(value, separators=(", ", ": "))
    return str(value)


@dataclass
class ToolResult:
    """One executed call: the observation, the raw return value, and the error kind if it failed."""

    message: Message
    tool: Tool | None = None
    value: Any = None
    error: ErrorKind | None = None


def error_message(call: ToolCall | None, text: str) -> Message:
    """A tool observation reporting a failure; `text` is kept short for small models."""
    return Message(role="tool", content=f"Error: {text}", is_error=True,
                   tool_call_id=call.id if call else None, name=call.name if call else None)


def _short(err: BaseException, limit: int = 80) -> str:
    text = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def run_tool_call(call: ToolCall, tools: dict[str, Tool], state: Any, timeout_s: float,
                        max_arg_chars: int = DEFAULT_MAX_ARG_CHARS) -> ToolResult:
    """Execute one call; every failure comes back as an error `ToolResult`, never as an exception.

    The limit is `tool.timeout_s` when the tool sets one, else `timeout_s`. A call that runs past it
    becomes the error observation "<tool> timed out after <limit>s" (kind `timeout`).
    Async tools are cancelled at the limit. Sync tools run in the event loop's default thread pool
    (`asyncio.to_thread`), so a slow one never blocks the loop (other episodes keep running) and
    the caller gets its error at the limit; a thread cannot be killed, though, so the timed-out
    function keeps running in the background until it returns, holding one pool thread, and
    whatever it returns then is discarded.
    """
    tool = tools.get(call.name)
    if tool is None or tool.fn is None:
        return ToolResult(error_message(call, f"unknown tool '{call.name}'"), error="unknown_tool")
    try:
        size = len(json.dumps(call.arguments, default=str))
    except (TypeError, ValueError):
        size = max_arg_chars + 1
    if size > max_arg_chars:
        return ToolResult(error_message(call, f"arguments too long ({size} > {max_arg_chars} chars)"),
                          tool, error="too_large")
    try:
        kwargs = validate_arguments(tool, call.arguments)
    except ToolArgumentError as err:
        return ToolResult(error_message(call, f"{call.name}: {err}"), tool, error="bad_arguments")
    if tool.needs_state:
        kwargs[STATE_PARAM] = state
    limit = tool.timeout_s if tool.timeout_s is not None else timeout_s
    try:
        if inspect.iscoroutinefunction(tool.fn):
            value = await asyncio.wait_for(tool.fn(**kwargs), timeout=limit)
        else:
            value = await asyncio.wait_for(asyncio.to_thread(tool.fn, **kwargs), timeout=limit)
    except asyncio.TimeoutError:
        return ToolResult(error_message(call, f"{call.name} timed out after {limit:g}s"), tool,
                          error="timeout")
    except Exception as err:  # noqa: BLE001 - a failing tool is an observation, not a crash
        logger.debug("tool %s raised", call.name, exc_info=True)
        return ToolResult(error_message(call, f"{call.name}: {_short(err)}"), tool, error="raised")
    msg = Message(role="tool", content=format_result(value), tool_call_id=call.id, name=call.name)
    return ToolResult(msg, tool, value=value)
