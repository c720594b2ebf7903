"""The environment server's wire format: strict parsing of what a client sends.

Why strict: every field of a request reaches an environment, so the server checks shapes and types
before anything runs, and a malformed request is the client's error (400 with a message), never an
environment exception or a server crash. Messages quote client input only through `clip`, so a
hostile client cannot make responses or logs large.
"""

from __future__ import annotations

import json
from typing import Any

from envs.core import Message, ToolCall
from envs.dataset import SPLITS, Task

API_KEY_HEADER = "X-API-Key"
API_KEY_ENV = "LABRL_ENV_API_KEY"
CLIP_CHARS = 80

_MESSAGE_KEYS = frozenset({"role", "content", "tool_calls", "tool_call_id", "name", "parse_error", "is_error"})
_TASK_KEYS = frozenset({"id", "env_name", "split", "difficulty", "seed", "data"})
CREATE_KEYS = frozenset({"env", "task"})
STEP_KEYS = frozenset({"action"})


class WireError(ValueError):
    """A request body that does not have the protocol's shape (answered with 400)."""


def clip(value: Any, limit: int = CLIP_CHARS) -> str:
    """`repr(value)` cut to `limit` characters, saying how long it was."""
    text = value if isinstance(value, str) else type(value).__name__
    shown = repr(text[:limit])
    return shown if len(text) <= limit else f"{shown}... ({len(text)} chars)"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json_object(raw: bytes, what: str = "body") -> dict[str, Any]:
    """A UTF-8 JSON object (no NaN/Infinity); anything else is a `WireError`."""
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise WireError(f"{what} must be UTF-8 JSON") from None
    except RecursionError:  # "[[[[...": json recurses once per level
        raise WireError(f"{what} is nested too deeply") from None
    except ValueError as err:
        raise WireError(f"{what} must be JSON: {clip(str(err))}") from None
    if not isinstance(body, dict):
        raise WireError(f"{what} must be a JSON object, not {type(body).__name__}")
    return body


def check_keys(obj: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise WireError(f"{what}: unexpected field {clip(unknown[0])}; expected {', '.join(sorted(allowed))}")


def _typed(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str, *,
           optional: bool = False) -> Any:
    if key not in obj or obj[key] is None:
        if optional:
            return None
        raise WireError(f"{what}: missing field {key!r}")
    value = obj[key]
    # bool is an int subclass: `"difficulty": true` is a wrong type, not 1.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, (int, float))):
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise WireError(f"{what}: field {key!r} must be {name}, not {type(value).__name__}")
    return value


def parse_task(obj: Any) -> Task:
    """A `Task` from its `to_dict()` form, every field type-checked."""
    if not isinstance(obj, dict):
        raise WireError(f"task must be an object, not {type(obj).__name__}")
    check_keys(obj, _TASK_KEYS, "task")
    split = _typed(obj, "split", str, "task")
    if split not in SPLITS:
        raise WireError(f"task: split must be one of {', '.join(SPLITS)}, not {clip(split)}")
    return Task(id=_typed(obj, "id", str, "task"), env_name=_typed(obj, "env_name", str, "task"),
                split=split, difficulty=_typed(obj, "difficulty", int, "task"),
                seed=_typed(obj, "seed", int, "task"), data=_typed(obj, "data", dict, "task", optional=True) or {})


def _parse_tool_call(obj: Any, i: int) -> ToolCall:
    what = f"action.tool_calls[{i}]"
    if not isinstance(obj, dict):
        raise WireError(f"{what} must be an object, not {type(obj).__name__}")
    check_keys(obj, frozenset({"id", "type", "function", "name", "arguments"}), what)
    call_id = _typed(obj, "id", str, what, optional=True) or ""
    fn = obj.get("function", obj)  # `{"id", "function": {"name", "arguments"}}` or the flat form
    if not isinstance(fn, dict):
        raise WireError(f"{what}.function must be an object, not {type(fn).__name__}")
    if fn is not obj:
        check_keys(fn, frozenset({"name", "arguments"}), f"{what}.function")
    arguments = _typed(fn, "arguments", dict, what, optional=True) or {}
    return ToolCall(id=call_id, name=_typed(fn, "name", str, what), arguments=arguments)


def parse_action(obj: Any) -> Message:
    """The agent's assistant message (`Message.to_dict()` form), every field type-checked."""
    if not isinstance(obj, dict):
        raise WireError(f"action must be an object, not {type(obj).__name__}")
    check_keys(obj, _MESSAGE_KEYS, "action")
    role = _typed(obj, "role", str, "action")
    if role != "assistant":
        raise WireError(f"action: role must be 'assistant', not {clip(role)}")
    calls = _typed(obj, "tool_calls", list, "action", optional=True) or []
    is_error = _typed(obj, "is_error", bool, "action", optional=True)
    return Message(role="assistant", content=_typed(obj, "content", str, "action", optional=True) or "",
                   tool_calls=[_parse_tool_call(c, i) for i, c in enumerate(calls)],
                   tool_call_id=_typed(obj, "tool_call_id", str, "action", optional=True),
                   name=_typed(obj, "name", str, "action", optional=True),
                   parse_error=_typed(obj, "parse_error", str, "action", optional=True),
                   is_error=bool(is_error))
