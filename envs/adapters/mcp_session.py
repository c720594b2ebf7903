"""One MCP client session per episode, over streamable HTTP or a stdio subprocess (the `mcp` package).

Why a task of its own: the `mcp` client is built on anyio task groups, which must be entered and
left by the same task, while labrl calls `reset()`, `step()` and `close()` from different tasks
(the agent loop plays an episode under `asyncio.wait_for` and closes the environment outside it).
So one owner task opens the session, lists the tools and holds the session open until `close()`;
calls from any task go through it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
from contextlib import AsyncExitStack
from string import Template
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

try:
    import httpx2
    from mcp import Client, StdioServerParameters
    from mcp.client.streamable_http import streamable_http_client
    from mcp.types import CallToolResult
    from mcp.types import Tool as McpTool
except ImportError as err:  # pragma: no cover - exercised only without mcp
    raise ImportError("envs.adapters.mcp needs the mcp package: pip install 'mcp>=2.3,<3'") from err

logger = logging.getLogger(__name__)

# Sent in every tools/call `_meta`: 2026-era MCP servers are stateless (no session id), so this is
# how a lab server keeps the state of concurrent episodes apart.
EPISODE_META_KEY = "labrl/episode_id"
# How long an open streamable-HTTP response stream may stay silent (the mcp package's default);
# a tool call's own limit is the environment's tool timeout.
SSE_READ_TIMEOUT_S = 300.0
CLOSE_TIMEOUT_S = 10.0
MAX_TOOL_PAGES = 100


class McpServer(BaseModel):
    """Where the MCP server is: `url` (streamable HTTP) or `command` (a stdio subprocess per episode).

    Values in `headers` and `env` may name environment variables as `${VAR}` ("Bearer ${LAB_TOKEN}"),
    read where the session opens, so that secrets stay out of the run's saved config; `$$` is a
    literal `$`. A stdio server starts with only a safe default environment (PATH, HOME, ...)
    plus `env`. `mode`: "auto" speaks both MCP eras (2026 stateless and the handshake era);
    "legacy" forces the handshake era (one server-side session, `Mcp-Session-Id`, per episode).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)  # headers may be secrets

    url: str | None = Field(None, description="streamable HTTP endpoint, e.g. http://lab:8000/mcp")
    command: list[str] | None = Field(None, description="stdio server command line, e.g. [python, -m, lab]")
    headers: dict[str, str] = Field(default_factory=dict, description="HTTP headers, e.g. Authorization")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment of a stdio server")
    cwd: str | None = Field(None, description="working directory of a stdio server")
    mode: Literal["auto", "legacy"] = "auto"
    connect_timeout_s: float = Field(30.0, gt=0, description="to open the session and list the tools")

    @field_validator("command", mode="before")
    @classmethod
    def _split_command(cls, value: Any) -> Any:
        """A command line given as one string (`env.options.command="python -m lab"`) is split."""
        return shlex.split(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_transport(self) -> "McpServer":
        if (self.url is None) == (self.command is None):
            raise ValueError("give exactly one of url (streamable HTTP) and command (stdio)")
        if self.command is not None and not self.command:
            raise ValueError("command is empty")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        if self.url is None and self.headers:
            raise ValueError("headers are for url servers; a stdio server takes env")
        if self.url is not None and (self.env or self.cwd):
            raise ValueError("env and cwd are for command (stdio) servers")
        for field in ("headers", "env"):
            for key, value in getattr(self, field).items():
                _expand(value, f"{field}.{key}")  # a missing variable is a config error, found early
        return self

    def describe(self) -> str:
        """The server in error messages (never a header value: those may be secrets)."""
        if self.url is not None:
            parts = urlsplit(self.url)
            return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        return "stdio: " + " ".join(self.command or [])


def _expand(value: str, where: str) -> str:
    try:
        return Template(value).substitute(os.environ)
    except KeyError as err:
        raise ValueError(f"{where} refers to ${{{err.args[0]}}}, which is not set") from None
    except ValueError as err:
        raise ValueError(f"{where}: {err} (write $$ for a literal $)") from None


class McpSessionError(RuntimeError):
    """The episode cannot start: the server did not answer, refused us, or lacks a tool."""


def describe_error(err: BaseException | None) -> str:
    """The innermost cause of a failure, one line (anyio wraps transport errors in groups)."""
    while err is not None and getattr(err, "exceptions", None):
        err = err.exceptions[0]  # type: ignore[attr-defined]
    if err is None:
        return "unknown error"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def result_text(result: CallToolResult) -> str:
    """The observation text of a tool result: its text blocks, else its structured content."""
    parts = []
    for block in result.content:
        text = getattr(block, "text", None)
        if text is None:  # an embedded resource carries its text one level down
            text = getattr(getattr(block, "resource", None), "text", None)
        parts.append(text if text is not None else f"[{block.type} content]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content))
    return "\n".join(parts)


class McpSession:
    """One MCP client session: `open()` connects and lists the tools, `call()`, `close()`."""

    def __init__(self, server: McpServer, episode_id: str):
        self.server = server
        self.episode_id = episode_id
        self.tools: list[McpTool] = []
        self._client: Client | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._owner: asyncio.Task[None] | None = None
        self._http_refusal: str | None = None

    async def open(self) -> list[McpTool]:
        """Connect and list the server's tools within `server.connect_timeout_s`.

        Raises McpSessionError naming the server and the cause; the session is then closed.
        """
        self._owner = asyncio.create_task(self._own(), name=f"mcp session {self.episode_id}")
        ready = asyncio.ensure_future(self._ready.wait())
        try:
            await asyncio.wait({self._owner, ready}, timeout=self.server.connect_timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if self._ready.is_set():
            return list(self.tools)
        owner = self._owner
        cause = (describe_error(owner.exception()) if owner.done() and not owner.cancelled()
                 else f"no answer within {self.server.connect_timeout_s:g}s")
        if self._http_refusal:
            cause += f" ({self._http_refusal})"
        await self.close()
        raise McpSessionError(f"cannot open an MCP session with {self.server.describe()}: {cause}")

    async def _own(self) -> None:
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(Client(await self._transport(stack), mode=self.server.mode))
            self.tools = await _list_tools(client)
            self._client = client
            self._ready.set()
            await self._stop.wait()

    async def _transport(self, stack: AsyncExitStack) -> Any:
        server = self.server
        if server.command is not None:
            return StdioServerParameters(command=server.command[0], args=server.command[1:], cwd=server.cwd,
                                         env={k: _expand(v, f"env.{k}") for k, v in server.env.items()})
        headers = {k: _expand(v, f"headers.{k}") for k, v in server.headers.items()}
        http = await stack.enter_async_context(httpx2.AsyncClient(
            headers=headers, timeout=httpx2.Timeout(server.connect_timeout_s, read=SSE_READ_TIMEOUT_S),
            event_hooks={"response": [self._note_refusal]}))
        return streamable_http_client(server.url or "", http_client=http)

    async def _note_refusal(self, response: httpx2.Response) -> None:
        """Remember an HTTP refusal: the mcp transport reports a 401 or 404 only as "Server
        returned an error response", and a wrong token or path is the usual setup mistake."""
        if response.status_code >= 400:
            self._http_refusal = f"HTTP {response.status_code} {response.reason_phrase}"

    async def call(self, name: str, arguments: dict[str, Any]) -> CallToolResult:
        """`tools/call` on this session. Raises ConnectionError when the session is gone, or
        whatever the transport raises; the caller's time limit bounds the wait."""
        owner, client = self._owner, self._client
        if owner is None or client is None or owner.done():
            raise ConnectionError("the MCP session is closed")
        call = asyncio.ensure_future(client.call_tool(name, arguments, meta={EPISODE_META_KEY: self.episode_id}))
        try:
            # A transport that dies ends the owner task; the call must not wait for its time limit.
            await asyncio.wait({call, owner}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not call.done():
                call.cancel()
        if call.cancelled():
            raise ConnectionError(f"the MCP session ended: {describe_error(_task_error(owner))}")
        return call.result()

    async def close(self) -> None:
        """End the session (stdio: the server process exits; HTTP: the session is terminated).
        Idempotent; never raises for the session's own failures."""
        self._stop.set()
        owner, self._owner, self._client = self._owner, None, None
        if owner is None:
            return
        # A session still connecting has no graceful way out: cancel it (stdio: the process is
        # then stopped by the mcp package's own shutdown sequence).
        done, _ = await asyncio.wait({owner}, timeout=CLOSE_TIMEOUT_S if self._ready.is_set() else 0)
        if not done:
            owner.cancel()
            await asyncio.wait({owner})
        error = _task_error(owner)
        if error is not None:
            logger.debug("MCP session %s ended with %s", self.episode_id, describe_error(error))


def _task_error(task: asyncio.Task[None]) -> BaseException | None:
    return None if not task.done() or task.cancelled() else task.exception()


async def _list_tools(client: Client) -> list[McpTool]:
    """Every page of `tools/list` (bounded: a server that pages forever cannot hang the episode)."""
    tools: list[McpTool] = []
    cursor: str | None = None
    for _ in range(MAX_TOOL_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools += page.tools
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools
