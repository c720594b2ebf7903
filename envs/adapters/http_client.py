"""`RemoteEnvironment`: an ordinary `Environment` whose episode runs on an `EnvServer`.

Every request has a deadline (`timeout_s`, the whole request): a server that hangs costs the
caller at most that long, and the error names the method, the URL path and the limit. The default
is above the server's own default limit on one environment call (60 s), so a slow environment is
normally answered by the server (an error observation) before the client gives up.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout

from envs.core import Environment, Message, Reward
from envs.dataset import Task
from envs.adapters.http_wire import API_KEY_HEADER
from envs.tools import Tool

logger = logging.getLogger(__name__)

DEFAULT_CLIENT_TIMEOUT_S = 90.0


class RemoteEnvError(RuntimeError):
    """The server refused a request (`status` is its HTTP status) or could not be reached (`status` None)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class RemoteEnvTimeout(RemoteEnvError):
    """The server did not answer within the client's `timeout_s`."""


class RemoteEnvironment(Environment):
    """Plays `task` in the environment the server serves as `env_name`."""

    def __init__(self, base_url: str, env_name: str, task: Task, *, api_key: str | None = None,
                 timeout_s: float = DEFAULT_CLIENT_TIMEOUT_S, session: ClientSession | None = None):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, not {timeout_s}")
        self.base_url = base_url.rstrip("/")
        self.env_name = env_name
        self.task = task
        self.api_key = api_key
        self.timeout_s = timeout_s
        self._timeout = ClientTimeout(total=timeout_s)
        self._http = session
        self._own_http = session is None
        self.session_id: str | None = None
        self.tools: list[Tool] = []

    @classmethod
    def for_task(cls, base_url: str, env_name: str, task: Task, **kwargs: Any) -> "RemoteEnvironment":
        """The episode of `task` in the server's environment `env_name` (one of its `--envs`)."""
        return cls(base_url, env_name, task, **kwargs)

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        if self._http is None:
            self._http = ClientSession(timeout=self._timeout)
        headers = {API_KEY_HEADER: self.api_key} if self.api_key else {}
        where = f"{method} {path} on {self.base_url}"
        try:
            async with self._http.request(method, self.base_url + path, json=body, headers=headers,
                                          timeout=self._timeout) as resp:
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    data = {"error": (await resp.text())[:200]}
                if resp.status != 200:
                    error = data.get("error", data) if isinstance(data, dict) else data
                    raise RemoteEnvError(f"{where}: HTTP {resp.status}: {error}", resp.status)
                return data
        except asyncio.TimeoutError:
            raise RemoteEnvTimeout(f"{where}: no answer within {self.timeout_s:g}s "
                                   "(RemoteEnvironment timeout_s)") from None
        except ClientError as err:
            raise RemoteEnvError(f"{where}: {type(err).__name__}: {err}") from err

    async def reset(self) -> tuple[list[Message], list[Tool]]:
        data = await self._request("POST", "/sessions", {"env": self.env_name, "task": self.task.to_dict()})
        self.session_id = data["session"]
        self.tools = [Tool.from_schema(s) for s in data["tools"]]
        return [Message.from_dict(m) for m in data["observations"]], list(self.tools)

    async def step(self, action: Message) -> tuple[list[Message], float, bool, bool]:
        if self.session_id is None:
            raise RuntimeError("step() before reset() or after the episode ended")
        data = await self._request("POST", f"/sessions/{self.session_id}/step", {"action": action.to_dict()})
        if data["done"] or data["truncated"]:
            self.session_id = None  # the server has closed the session
        return ([Message.from_dict(m) for m in data["observations"]], Reward(data["reward"], data["reason"]),
                bool(data["done"]), bool(data["truncated"]))

    async def close(self) -> None:
        try:
            if self.session_id is not None:
                try:
                    await self._request("DELETE", f"/sessions/{self.session_id}")
                except RemoteEnvError as err:
                    if err.status not in (404, 410):  # already gone (expired, server restarted): nothing to close
                        raise
                    logger.debug("session already closed on the server: %s", err)
                self.session_id = None
        finally:
            if self._own_http and self._http is not None:
                await self._http.close()
                self._http = None
