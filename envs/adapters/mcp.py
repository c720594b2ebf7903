"""MCP tool servers as labrl environments: the lab's tools come from an MCP server, the tasks and
the verifier from labrl.

Why: MCP servers expose tools only (`tools/list`, `tools/call`), no tasks and no rewards, yet many
labs already put their instruments and simulators behind one. A scientist writes only the science
(`McpTaskSet`: the tasks, the prompt, the `submit` checker and, for SFT demos, a reference solver);
where the server runs (`McpServer`: a URL with auth headers, or a stdio command) is deployment.

Episode (`McpEnvironment`, with `ToolEnvironment`'s rules: budget, reasons, the verifier ends it):
- `reset()` opens one MCP session for this episode only and offers the server's tools (or the
  allow-listed ones) beside the local verifier;
- a call is checked against the tool's JSON schema here first: bad arguments are an error
  observation and never reach the server; a result with `isError`, a transport failure or a call
  past `tool_timeout_s` is an error observation too, and the episode goes on;
- `close()` ends the session (a stdio server process exits).

Two ways to train on one (see README_mcp.md):
    labrl train env.name=mcp env.options.tasks=my_lab.titration:TASKS env.options.url=http://lab:8000/mcp
    labrl train env.name=my_lab.titration:make_spec            # your own factory calling mcp_spec
"""

from __future__ import annotations

import importlib
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from envs.adapters.mcp_session import McpServer, McpSession, McpSessionError, McpTool, result_text
from envs.core import Environment, Message
from envs.dataset import Task
from envs.registry import DatasetFactory, EnvSpec, ReferencePolicy
from envs.tool_env import ToolEnvironment
from envs.tools import Tool

__all__ = ["McpEnvironment", "McpServer", "McpSessionError", "McpTaskSet", "ToolError", "load_task_set",
           "make_mcp_spec", "mcp_spec"]


class ToolError(Exception):
    """An MCP tool reported a failure (`isError`); its text is the error observation."""


@dataclass(frozen=True)
class McpTaskSet:
    """The science of an MCP environment; everything else comes from the server.

    `make_dataset(num_train, num_heldout, difficulties, seed)` builds the tasks (usually
    `functools.partial(TaskDataset.generate, name, generate)`); `prompt(task)` states one;
    `submit` is the verifier tool: a function with a Google docstring and typed arguments that
    returns a `Reward` (or a number) and ends the episode. It may take a `state` parameter, which
    receives the `McpEnvironment` (`state.task`, and `await state.call_mcp(name, args)` to read the
    instrument). `tools` is an allow-list of server tools to offer (default: all).
    """

    name: str
    make_dataset: DatasetFactory
    prompt: Callable[[Task], str]
    submit: Callable[..., Any]
    reference_policy: ReferencePolicy | None = None
    difficulties: tuple[int, ...] = (1,)
    tools: tuple[str, ...] | None = None
    max_tool_calls: int = 8
    system_prompt: str | None = None
    description: str = ""


class McpEnvironment(ToolEnvironment):
    """One episode against an MCP server, with its own MCP session (opened in `reset`)."""

    def __init__(self, task: Task, task_set: McpTaskSet, server: McpServer, **kwargs: Any):
        self.task_set = task_set
        self.server = server
        self.session: McpSession | None = None
        kwargs.setdefault("max_tool_calls", task_set.max_tool_calls)
        super().__init__(task, **kwargs)
        self.local_tools = list(self.tools)

    def prompt(self) -> str:
        return self.task_set.prompt(self.task)

    def system_prompt(self) -> str | None:
        return self.task_set.system_prompt

    def make_tools(self) -> list[Tool]:
        return [Tool.from_function(self.task_set.submit, ends_episode=True)]

    async def reset(self) -> tuple[list[Message], list[Tool]]:
        """Open this episode's MCP session; raises McpSessionError if it cannot start."""
        await self.close()
        self.session = McpSession(self.server, episode_id=f"{self.task.id}#{uuid.uuid4().hex[:12]}")
        remote = await self.session.open()
        try:
            offered = self._offered(remote)
        except McpSessionError:
            await self.close()
            raise
        self.tools = [*(self._remote_tool(t) for t in offered), *self.local_tools]
        self._by_name = {t.name: t for t in self.tools}  # the tools are known only now
        return await super().reset()

    def _offered(self, remote: list[McpTool]) -> list[McpTool]:
        wanted = self.task_set.tools
        by_name = {t.name: t for t in remote}
        missing = sorted(set(wanted or ()) - set(by_name))
        if missing:
            raise McpSessionError(f"{self.server.describe()} has no tool {', '.join(missing)} "
                                  f"(it has {', '.join(sorted(by_name)) or 'none'})")
        offered = [by_name[n] for n in wanted] if wanted is not None else remote
        clash = sorted({t.name for t in offered} & {t.name for t in self.local_tools})
        if clash:
            raise McpSessionError(f"{self.server.describe()} has a tool named like the verifier: "
                                  f"{', '.join(clash)}; leave it out with tools=[...]")
        return offered

    def _remote_tool(self, spec: McpTool) -> Tool:
        """A labrl tool whose call is this session's `tools/call` (its schema checks run here)."""
        async def call(**arguments: Any) -> str:
            return await self.call_mcp(spec.name, arguments)

        parameters = spec.input_schema or {"type": "object", "properties": {}}
        return Tool(name=spec.name, description=spec.description or spec.title or "", parameters=parameters,
                    fn=call)

    async def call_mcp(self, name: str, arguments: dict[str, Any]) -> str:
        """The text of tool `name` called on this episode's session; raises ToolError when the
        server reports a failure, ConnectionError when the session is gone."""
        if self.session is None:
            raise ConnectionError("no MCP session (reset() first)")
        result = await self.session.call(name, arguments)
        text = result_text(result)
        if result.is_error:
            # The Python SDK's MCPServer opens every failure with this; the observation already
            # names the tool, and a small model's context is better spent on the cause.
            cause = text.removeprefix(f"Error executing tool {name}").removeprefix(":").strip()
            raise ToolError(cause or "the tool failed")
        return text

    async def close(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            await session.close()


async def _no_reference(env: Environment, history: list[Message]) -> Message:
    raise NotImplementedError("this MCP task set has no reference policy")


def mcp_spec(task_set: McpTaskSet, server: McpServer) -> EnvSpec:
    """The EnvSpec of `task_set` played against `server` (no network until an episode starts)."""
    return EnvSpec(name=task_set.name, make_dataset=task_set.make_dataset,
                   make_env=lambda task: McpEnvironment(task, task_set, server),
                   reference_policy=task_set.reference_policy or _no_reference,
                   difficulties=tuple(task_set.difficulties),
                   description=task_set.description or f"MCP tools of {server.describe()}")


def load_task_set(path: str) -> McpTaskSet:
    """The McpTaskSet at import path `pkg.module:NAME`; ValueError naming what is wrong."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"tasks must be an import path 'pkg.module:NAME', got {path!r}")
    try:
        task_set = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"tasks={path!r}: {type(err).__name__}: {err}") from err
    if not isinstance(task_set, McpTaskSet):
        raise ValueError(f"tasks={path!r} is a {type(task_set).__name__}, not an McpTaskSet")
    return task_set


def make_mcp_spec(tasks: str, **server: Any) -> EnvSpec:
    """The factory behind `env.name=mcp` (registered lazily by `envs.adapters`): `env.options.tasks`
    names the McpTaskSet, the other options are `McpServer` fields (url or command, headers, env,
    cwd, mode, connect_timeout_s). A bad option raises a ValueError naming it, which preflight
    reports before Ray starts."""
    settings = McpServer(**server)  # first: a misspelt option is named even when `tasks` is wrong too
    return mcp_spec(load_task_set(tasks), settings)
