"""Tool schemas from docstrings and hints; every failing call becomes an error observation."""

from __future__ import annotations

import asyncio
import time
from typing import Literal, Optional

import pytest

from envs.core import Message, ToolCall
from envs.tools import Tool, run_tool_call


def lookup(query: str, limit: int, scale: float, exact: bool, tags: list[str],
           mode: Literal["fast", "slow"], note: Optional[str] = None, state=None) -> str:
    """Look something up in the catalogue.

    Longer explanation that is part of the summary paragraph.

    Args:
        query: What to look for.
        limit (int): How many results to return,
            at most.
        scale: A factor.
        exact: Match exactly.
        tags: Tags to filter by.
        mode: Search mode.
        note: Free text.
        state: Injected by the environment.

    Returns:
        The result line.
    """
    return f"{query}:{limit}:{scale!r}:{exact}:{tags}:{mode}:{note}:{state}"


def test_schema_from_docstring_and_hints() -> None:
    schema = Tool.from_function(lookup).schema
    fn = schema["function"]
    assert schema["type"] == "function" and fn["name"] == "lookup"
    assert fn["description"] == ("Look something up in the catalogue. "
                                 "Longer explanation that is part of the summary paragraph.")
    params = fn["parameters"]
    assert params["type"] == "object"
    assert params["required"] == ["query", "limit", "scale", "exact", "tags", "mode"]
    props = params["properties"]
    assert "state" not in props
    assert props["query"] == {"type": "string", "description": "What to look for."}
    assert props["limit"] == {"type": "integer", "description": "How many results to return, at most."}
    assert props["scale"]["type"] == "number" and props["exact"]["type"] == "boolean"
    assert props["tags"]["type"] == "array" and props["tags"]["items"] == {"type": "string"}
    assert props["mode"]["enum"] == ["fast", "slow"] and props["mode"]["type"] == "string"
    assert props["note"]["type"] == ["string", "null"]


def test_name_override_and_bound_methods() -> None:
    class Thing:
        def act(self, n: int) -> int:
            """Do it.

            Args:
                n: How often.
            """
            return n * 2

    tool = Tool.from_function(Thing().act, name="go")
    assert tool.name == "go" and list(tool.parameters["properties"]) == ["n"]


def _run(calls: list[ToolCall], tools: list[Tool], timeout_s: float = 2.0, **kw) -> list[Message]:
    by_name = {t.name: t for t in tools}

    async def run() -> list[Message]:
        return [(await run_tool_call(c, by_name, "S", timeout_s, **kw)).message for c in calls]

    return asyncio.run(run())


def test_valid_call_with_state_and_int_to_float() -> None:
    args = {"query": "q", "limit": 3, "scale": 2, "exact": False, "tags": ["a"], "mode": "fast"}
    [out] = _run([ToolCall("call_0", "lookup", args)], [Tool.from_function(lookup)])
    assert not out.is_error and out.role == "tool"
    assert out.tool_call_id == "call_0" and out.name == "lookup"
    assert out.content == "q:3:2.0:False:['a']:fast:None:S"


@pytest.mark.parametrize("args, expected", [
    ({"query": 1, "limit": 3, "scale": 1.0, "exact": True, "tags": [], "mode": "fast"}, "'query' must be string"),
    ({"query": "q", "limit": 2.5, "scale": 1.0, "exact": True, "tags": [], "mode": "fast"}, "'limit' must be integer"),
    ({"query": "q", "limit": True, "scale": 1.0, "exact": True, "tags": [], "mode": "fast"}, "'limit' must be integer"),
    ({"query": "q", "limit": 1, "scale": "1", "exact": True, "tags": [], "mode": "fast"}, "'scale' must be number"),
    ({"query": "q", "limit": 1, "scale": 1, "exact": 1, "tags": [], "mode": "fast"}, "'exact' must be boolean"),
    ({"query": "q", "limit": 1, "scale": 1, "exact": True, "tags": [3], "mode": "fast"}, "'tags[0]' must be string"),
    ({"query": "q", "limit": 1, "scale": 1, "exact": True, "tags": [], "mode": "medium"}, "'mode' must be one of"),
    ({"query": "q", "limit": 1, "scale": 1, "exact": True, "tags": []}, "missing argument 'mode'"),
    ({"query": "q", "limit": 1, "scale": 1, "exact": True, "tags": [], "mode": "fast", "x": 1},
     "unexpected argument 'x'"),
    ({"query": "q", "limit": 1, "scale": 1, "exact": True, "tags": [], "mode": "fast", "state": 1},
     "unexpected argument 'state'"),
])
def test_wrong_arguments_are_error_observations(args: dict, expected: str) -> None:
    [out] = _run([ToolCall("call_0", "lookup", args)], [Tool.from_function(lookup)])
    assert out.is_error and out.content.startswith("Error: lookup: ") and expected in out.content


def test_unknown_tool() -> None:
    [out] = _run([ToolCall("call_0", "foo", {})], [Tool.from_function(lookup)])
    assert out.is_error and out.content == "Error: unknown tool 'foo'" and out.tool_call_id == "call_0"


def test_oversized_arguments() -> None:
    def echo(text: str) -> str:
        """Echo."""
        return text

    [ok, big] = _run([ToolCall("a", "echo", {"text": "x" * 50}), ToolCall("b", "echo", {"text": "x" * 500})],
                     [Tool.from_function(echo)], max_arg_chars=100)
    assert not ok.is_error and big.is_error and "too long" in big.content


def test_raising_tool_and_timeouts() -> None:
    def boom() -> str:
        """Fails."""
        raise KeyError("nope")

    def slow_sync() -> str:
        """Sleeps."""
        time.sleep(0.5)
        return "late"

    async def slow_async() -> str:
        """Sleeps."""
        await asyncio.sleep(5)
        return "late"

    async def quick_async(n: int) -> int:
        """Fast."""
        return n + 1

    tools = [Tool.from_function(f) for f in (boom, slow_sync, slow_async, quick_async)]
    outs = _run([ToolCall("0", "boom", {}), ToolCall("1", "slow_sync", {}), ToolCall("2", "slow_async", {}),
                 ToolCall("3", "quick_async", {"n": 1})], tools, timeout_s=0.1)
    assert [o.is_error for o in outs] == [True, True, True, False]
    assert outs[0].content == "Error: boom: KeyError: 'nope'"
    assert outs[1].content == "Error: slow_sync timed out after 0.1s"
    assert outs[2].content == "Error: slow_async timed out after 0.1s"
    assert outs[3].content == "2"


def test_unsupported_types_are_rejected_when_building() -> None:
    def bad(x: complex) -> str:
        """Bad."""
        return ""

    with pytest.raises(TypeError):
        Tool.from_function(bad)
