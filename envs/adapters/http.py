"""Environments over HTTP: `EnvServer` hosts environments, `RemoteEnvironment` drives one remotely.

Why: some environments need their own machine (a simulator, a licensed tool, a lab instrument).
The server keeps one environment per session; the client is an ordinary `Environment`, so the agent
loop does not know the difference. Tools cross the wire as schemas and are executed by the server.

Safety: the server binds 127.0.0.1 unless told otherwise and refuses a non-loopback address without
an API key; requests must carry the key in `X-API-Key` (401 otherwise). An environment that raises
in `step` ends its episode with an error observation (reason `env_error`); the server stays up.

Protocol (JSON):
    POST   /sessions               {"config": {...}} -> {"session", "observations", "tools"}
    POST   /sessions/{id}/step     {"action": msg}   -> {"observations", "reward", "reason", "done", "truncated"}
    DELETE /sessions/{id}                            -> {"ok": true}
    GET    /health                                   -> {"ok": true, "sessions": n}  (no key needed)
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import inspect
import ipaddress
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import ClientSession, ClientTimeout, web

from envs.core import Environment, Message, Reward, reward_reason
from envs.dataset import Task
from envs.tools import Tool, error_message

logger = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
API_KEY_ENV = "LABRL_ENV_API_KEY"
EnvFactory = Callable[[dict[str, Any]], "Environment | Awaitable[Environment]"]


class RemoteEnvError(RuntimeError):
    """The server refused a request or could not create the environment."""


def registry_factory(config: dict[str, Any]) -> Environment:
    """Build an environment from `{"env": registered name or import path, "task": Task dict}`."""
    from envs.registry import get_env_spec  # late: keeps this module importable on its own

    return get_env_spec(config["env"]).make_env(Task.from_dict(config["task"]))


@dataclass
class _Session:
    env: Environment
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class EnvServer:
    """Hosts environment sessions behind an aiohttp app (start/stop inside a running event loop)."""

    def __init__(self, factory: EnvFactory = registry_factory, *, api_key: str | None = None,
                 host: str = "127.0.0.1", port: int = 0, max_sessions: int = 1024,
                 session_ttl_s: float = 3600.0, max_body_bytes: int = 1 << 20):
        if api_key is None and not _is_loopback(host):
            raise ValueError(f"refusing to serve environments on {host} without an API key")
        self.factory = factory
        self.api_key = api_key
        self.host, self.port = host, port
        self.max_sessions = max_sessions
        self.session_ttl_s = session_ttl_s
        self.sessions: dict[str, _Session] = {}
        self.app = web.Application(middlewares=[self._auth], client_max_size=max_body_bytes)
        self.app.add_routes([
            web.get("/health", self._health),
            web.post("/sessions", self._create),
            web.post("/sessions/{sid}/step", self._step),
            web.delete("/sessions/{sid}", self._delete),
        ])
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> str:
        """Start serving; returns the base URL (with the real port when `port=0`)."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        if self.port == 0:  # the OS picked a free port
            self.port = self._runner.addresses[0][1]
        logger.info("environment server listening on %s", self.url)
        return self.url

    async def stop(self) -> None:
        for sid in list(self.sessions):
            await self._close(sid)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if self.api_key is not None and request.path != "/health":
            given = request.headers.get(API_KEY_HEADER, "")
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                return web.json_response({"error": "unauthorized"}, status=401)
        return await handler(request)

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "sessions": len(self.sessions)})

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text='{"error": "body must be JSON"}',
                                     content_type="application/json") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text='{"error": "body must be an object"}',
                                     content_type="application/json")
        return body

    async def _evict_idle(self) -> None:
        now = time.monotonic()
        for sid, session in list(self.sessions.items()):
            if now - session.last_used > self.session_ttl_s and not session.lock.locked():
                logger.info("closing idle environment session %s", sid)
                await self._close(sid)

    async def _create(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        await self._evict_idle()
        if len(self.sessions) >= self.max_sessions:
            return web.json_response({"error": "too many sessions"}, status=503)
        try:
            env = self.factory(body.get("config") or {})
            if inspect.isawaitable(env):
                env = await env
            observations, tools = await env.reset()
        except Exception as err:  # noqa: BLE001 - a bad environment must not take the server down
            logger.warning("environment creation failed: %s: %s", type(err).__name__, err)
            return web.json_response({"error": f"environment failed to start: {type(err).__name__}: {err}"},
                                     status=500)
        sid = uuid.uuid4().hex
        self.sessions[sid] = _Session(env)
        return web.json_response({"session": sid, "observations": [m.to_dict() for m in observations],
                                  "tools": [t.schema for t in tools]})

    async def _step(self, request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        session = self.sessions.get(sid)
        if session is None:
            return web.json_response({"error": "unknown session"}, status=404)
        body = await self._json(request)
        try:
            action = Message.from_dict(body["action"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            return web.json_response({"error": f"bad action: {type(err).__name__}"}, status=400)
        async with session.lock:
            session.last_used = time.monotonic()
            try:
                observations, reward, done, truncated = await session.env.step(action)
            except Exception as err:  # noqa: BLE001 - the crash is reported to the agent instead
                logger.warning("environment step failed in session %s: %s: %s", sid, type(err).__name__, err)
                observations = [error_message(None, f"environment failed: {type(err).__name__}")]
                reward, done, truncated = Reward(0.0, "env_error"), True, True
        if done or truncated:
            await self._close(sid)
        return web.json_response({"observations": [m.to_dict() for m in observations],
                                  "reward": float(reward), "reason": reward_reason(reward),
                                  "done": bool(done), "truncated": bool(truncated)})

    async def _delete(self, request: web.Request) -> web.Response:
        await self._close(request.match_info["sid"])
        return web.json_response({"ok": True})

    async def _close(self, sid: str) -> None:
        session = self.sessions.pop(sid, None)
        if session is not None:
            try:
                await session.env.close()
            except Exception as err:  # noqa: BLE001 - closing is best effort
                logger.debug("closing session %s failed: %s", sid, err)


class RemoteEnvironment(Environment):
    """An environment that lives on an `EnvServer`; `config` is passed to the server's factory."""

    def __init__(self, base_url: str, config: dict[str, Any], *, api_key: str | None = None,
                 timeout_s: float = 60.0, session: ClientSession | None = None):
        self.base_url = base_url.rstrip("/")
        self.config = config
        self.api_key = api_key
        self.timeout = ClientTimeout(total=timeout_s)
        self._http = session
        self._own_http = session is None
        self.session_id: str | None = None
        self.tools: list[Tool] = []

    @classmethod
    def for_task(cls, base_url: str, env_name: str, task: Task, **kwargs: Any) -> "RemoteEnvironment":
        """A remote environment built by the server's registry from `env_name` and `task`."""
        return cls(base_url, {"env": env_name, "task": task.to_dict()}, **kwargs)

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        if self._http is None:
            self._http = ClientSession(timeout=self.timeout)
        headers = {API_KEY_HEADER: self.api_key} if self.api_key else {}
        async with self._http.request(method, self.base_url + path, json=body, headers=headers,
                                      timeout=self.timeout) as resp:
            try:
                data = await resp.json(content_type=None)
            except ValueError:
                data = {"error": (await resp.text())[:200]}
            if resp.status != 200:
                raise RemoteEnvError(f"{method} {path}: HTTP {resp.status}: {data.get('error', data)}")
            return data

    async def reset(self) -> tuple[list[Message], list[Tool]]:
        data = await self._request("POST", "/sessions", {"config": self.config})
        self.session_id = data["session"]
        self.tools = [Tool.from_schema(s) for s in data["tools"]]
        return [Message.from_dict(m) for m in data["observations"]], list(self.tools)

    async def step(self, action: Message) -> tuple[list[Message], float, bool, bool]:
        if self.session_id is None:
            raise RuntimeError("step() before reset()")
        data = await self._request("POST", f"/sessions/{self.session_id}/step", {"action": action.to_dict()})
        if data["done"] or data["truncated"]:
            self.session_id = None  # the server has closed the session
        return ([Message.from_dict(m) for m in data["observations"]], Reward(data["reward"], data["reason"]),
                bool(data["done"]), bool(data["truncated"]))

    async def close(self) -> None:
        try:
            if self.session_id is not None:
                await self._request("DELETE", f"/sessions/{self.session_id}")
                self.session_id = None
        finally:
            if self._own_http and self._http is not None:
                await self._http.close()
                self._http = None


async def _serve_forever(host: str, port: int) -> None:
    server = EnvServer(api_key=os.environ.get(API_KEY_ENV) or None, host=host, port=port)
    await server.start()
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    """`python -m envs.adapters.http [--host H] [--port P]`; the key comes from $LABRL_ENV_API_KEY."""
    parser = argparse.ArgumentParser(description="Serve registered environments over HTTP.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    asyncio.run(_serve_forever(args.host, args.port))


if __name__ == "__main__":
    main()
