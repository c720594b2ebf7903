"""`EnvServer`: hosts sessions of a fixed set of environments behind aiohttp, within limits.

Why a fixed set: the server runs code on the client's behalf, so the code must be the operator's
choice. The environments are `EnvSpec`s resolved when the server is built (the CLI resolves its
`--envs` names once, at start); a client only picks one of those names, and nothing a client sends
is imported or called. Why limits: a client (or many) must not be able to exhaust the server: body
size, open sessions, session age and idle time, the step rate of each session and the wall time of
an environment call are all bounded, and each refusal is a 4xx with a JSON `{"error": ...}` message.
Status codes are listed in `envs.adapters.http`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import math
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping

from aiohttp import web

from envs.core import Environment, Reward, reward_reason
from envs.adapters.http_wire import (API_KEY_HEADER, CREATE_KEYS, STEP_KEYS, WireError, check_keys, clip,
                                     parse_action, parse_json_object, parse_task)
from envs.registry import EnvSpec
from envs.tools import error_message

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerLimits:
    """What one server allows. `max_steps_per_s` <= 0 turns the step-rate limit off."""

    max_body_bytes: int = 1 << 20
    max_sessions: int = 1024
    max_session_age_s: float = 3600.0  # since creation: a session older than this is closed
    idle_timeout_s: float = 600.0  # since the session's last request
    max_steps_per_s: float = 10.0  # per session, a token bucket refilled at this rate ...
    step_burst: int = 20  # ... holding at most this many steps
    env_timeout_s: float = 60.0  # wall limit of one make_env + reset, and of one step

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_sessions", "step_burst"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServerLimits.{name} must be >= 1, not {getattr(self, name)}")
        for name in ("max_session_age_s", "idle_timeout_s", "env_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ServerLimits.{name} must be > 0, not {getattr(self, name)}")

    @property
    def reap_interval_s(self) -> float:
        """How often expired sessions are closed when nobody touches them."""
        return min(5.0, max(0.05, min(self.max_session_age_s, self.idle_timeout_s) / 4))


@dataclass
class _Session:
    env: Environment
    env_name: str
    burst: float
    created: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tokens: float = 0.0
    refilled: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst


class _Refusal(Exception):
    """Ends a request with `status` and `{"error": message}` (plus `headers`)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _digest(key: str) -> bytes:
    # Hashing first gives compare_digest equal-length inputs: the time taken says nothing about the key.
    return hashlib.sha256(key.encode("utf-8", "replace")).digest()


def _describe(err: BaseException, limit: int = 200) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= limit else text[:limit] + "..."


class EnvServer:
    """Serves `envs` (served name -> spec) over HTTP; start/stop inside a running event loop."""

    def __init__(self, envs: Mapping[str, EnvSpec], *, api_key: str | None = None, host: str = "127.0.0.1",
                 port: int = 0, limits: ServerLimits = ServerLimits()):
        if not envs:
            raise ValueError("EnvServer needs at least one environment to serve")
        if api_key is None and not _is_loopback(host):
            raise ValueError(f"refusing to serve environments on {host} without an API key")
        self.envs: dict[str, EnvSpec] = dict(envs)
        self._key_digest = _digest(api_key) if api_key else None
        self.host, self.port, self.limits = host, port, limits
        self.sessions: dict[str, _Session] = {}
        # Why ended sessions are remembered: a step on one is answered "expired" or "closed", not just
        # "unknown". Bounded, oldest forgotten first.
        self._ended: OrderedDict[str, str] = OrderedDict()
        self._max_ended = min(100_000, max(4096, 2 * limits.max_sessions))
        self._starting = 0  # sessions being created: they hold a slot of max_sessions
        self._reaper: asyncio.Task | None = None
        self._closing: set[asyncio.Task] = set()
        self.app = web.Application(middlewares=[self._errors, self._auth], client_max_size=limits.max_body_bytes)
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
        """Start serving; returns the base URL (with the real port when `port=0`). Raises OSError
        naming the address when it cannot listen (port in use, address not on this machine)."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        try:
            # A deep accept queue: thousands of clients connecting at once must not wait on SYN retries.
            await web.TCPSite(self._runner, self.host, self.port, backlog=1024).start()
        except OSError as err:
            await self._runner.cleanup()
            self._runner = None
            raise OSError(err.errno, f"environment server cannot listen on {self.host}:{self.port}: "
                                     f"{err.strerror or err}") from err
        if self.port == 0:  # the OS picked a free port
            self.port = self._runner.addresses[0][1]
        self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())
        if self._key_digest is None:
            logger.warning("environment server has no API key: any local process may use it")
        logger.info("environment server started on %s", self.url)
        return self.url

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for sid in list(self.sessions):
            await self._close(sid, "server stopped")
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- middlewares ------------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler):
        """Every answer is JSON `{"error": ...}`; nothing a request does escapes as a crash."""
        try:
            return await handler(request)
        except _Refusal as err:
            return _error(err.status, err.message, err.headers)
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"body larger than {self.limits.max_body_bytes} bytes")
        except web.HTTPMethodNotAllowed as err:
            return _error(405, f"method {clip(request.method, 16)} not allowed on {clip(request.path)}; "
                               f"allowed: {', '.join(sorted(err.allowed_methods))}")
        except web.HTTPNotFound:
            return _error(404, f"no such endpoint {clip(request.path)}; endpoints: GET /health, POST /sessions, "
                               "POST /sessions/{id}/step, DELETE /sessions/{id}")
        except web.HTTPException as err:
            return _error(err.status, clip(err.reason, 200))
        except Exception:  # noqa: BLE001 - a bug here must cost one request, not the server
            logger.exception("environment server failed on %s %s", request.method, clip(request.path))
            return _error(500, "internal error (logged by the server)")

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if self._key_digest is not None and request.path != "/health":
            given = request.headers.get(API_KEY_HEADER)
            if given is None:
                raise _Refusal(401, f"missing {API_KEY_HEADER} header")
            if not hmac.compare_digest(_digest(given), self._key_digest):
                raise _Refusal(401, f"wrong {API_KEY_HEADER}")
        return await handler(request)

    # -- handlers ---------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "sessions": len(self.sessions)})

    async def _body(self, request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
        if request.content_length is not None and request.content_length > self.limits.max_body_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=self.limits.max_body_bytes,
                                                actual_size=request.content_length)
        try:
            body = parse_json_object(await request.read())
            check_keys(body, allowed, "body")
        except WireError as err:
            raise _Refusal(400, str(err)) from None
        return body

    async def _create(self, request: web.Request) -> web.Response:
        body = await self._body(request, CREATE_KEYS)
        name = body.get("env")
        if not isinstance(name, str):
            raise _Refusal(400, f"body: field 'env' must be the name of a served environment "
                                f"({', '.join(self.envs)}), not {type(name).__name__}")
        spec = self.envs.get(name)
        if spec is None:
            raise _Refusal(400, f"environment {clip(name)} is not served here; served: {', '.join(self.envs)}")
        try:
            task = parse_task(body.get("task"))
        except WireError as err:
            raise _Refusal(400, str(err)) from None
        if len(self.sessions) + self._starting >= self.limits.max_sessions:
            self._reap_expired()  # only when full: a scan per request would cost O(sessions)
        if len(self.sessions) + self._starting >= self.limits.max_sessions:
            raise _Refusal(429, f"too many open sessions (limit {self.limits.max_sessions}); close some "
                                "or retry later", {"Retry-After": "1"})
        self._starting += 1
        try:
            observations, tools, env = await asyncio.wait_for(self._start_env(spec, task),
                                                              self.limits.env_timeout_s)
        except asyncio.TimeoutError:
            raise _Refusal(504, f"environment {name!r} did not start within "
                                f"{self.limits.env_timeout_s:g}s") from None
        except Exception as err:  # noqa: BLE001 - a task this environment cannot run is the client's error
            logger.info("environment %s failed to start task %s: %s", name, clip(task.id), _describe(err))
            raise _Refusal(422, f"environment {name!r} could not start this task: {_describe(err)}") from None
        finally:
            self._starting -= 1
        sid = uuid.uuid4().hex
        self.sessions[sid] = _Session(env, name, burst=float(self.limits.step_burst))
        return web.json_response({"session": sid, "observations": [m.to_dict() for m in observations],
                                  "tools": [t.schema for t in tools]})

    async def _start_env(self, spec: EnvSpec, task: Any) -> tuple[list, list, Environment]:
        env = spec.make_env(task)
        try:
            observations, tools = await env.reset()
        except BaseException:
            await self._close_env(env, "failed reset")
            raise
        return observations, tools, env

    def _session(self, sid: str) -> _Session:
        """The live session `sid`, or the refusal that says why there is none (404, or 410 expired)."""
        session = self.sessions.get(sid)
        if session is None:
            raise self._ended_refusal(sid)
        reason = self._expiry(session, time.monotonic())
        if reason is None:
            return session
        if not session.lock.locked():  # a session in a step is closed by the reaper after it
            self._expire(sid, session, reason)
        raise _Refusal(410, f"session {clip(sid)} {reason}")

    def _ended_refusal(self, sid: str) -> _Refusal:
        ended = self._ended.get(sid)
        if ended is None:
            return _Refusal(404, f"unknown session {clip(sid)}")
        if ended.startswith("expired"):
            return _Refusal(410, f"session {clip(sid)} {ended}")
        return _Refusal(404, f"session {clip(sid)} has ended ({ended})")

    def _take_step_token(self, session: _Session) -> None:
        rate = self.limits.max_steps_per_s
        if rate <= 0:
            return
        now = time.monotonic()
        session.tokens = min(session.burst, session.tokens + (now - session.refilled) * rate)
        session.refilled = now
        if session.tokens < 1.0:
            wait_s = (1.0 - session.tokens) / rate
            raise _Refusal(429, f"step rate over {rate:g}/s for this session; retry in {wait_s:.2f}s",
                           {"Retry-After": str(max(1, math.ceil(wait_s)))})
        session.tokens -= 1.0

    async def _step(self, request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        session = self._session(sid)
        body = await self._body(request, STEP_KEYS)
        try:
            action = parse_action(body.get("action"))
        except WireError as err:
            raise _Refusal(400, str(err)) from None
        self._take_step_token(session)
        async with session.lock:
            if self.sessions.get(sid) is not session:  # ended while this request waited for the lock
                raise self._ended_refusal(sid)
            session.last_used = time.monotonic()
            try:
                observations, reward, done, truncated = await asyncio.wait_for(
                    session.env.step(action), self.limits.env_timeout_s)
            except asyncio.TimeoutError:
                logger.warning("environment %s step timed out in session %s", session.env_name, sid)
                observations = [error_message(None, f"environment step timed out after "
                                                    f"{self.limits.env_timeout_s:g}s")]
                reward, done, truncated = Reward(0.0, "timeout"), True, True
            except Exception as err:  # noqa: BLE001 - the crash is reported to the agent instead
                logger.warning("environment %s step failed in session %s: %s", session.env_name, sid,
                               _describe(err))
                observations = [error_message(None, f"environment failed: {type(err).__name__}")]
                reward, done, truncated = Reward(0.0, "env_error"), True, True
            session.last_used = time.monotonic()
        if done or truncated:
            await self._close(sid, "finished")
        return web.json_response({"observations": [m.to_dict() for m in observations],
                                  "reward": float(reward), "reason": reward_reason(reward),
                                  "done": bool(done), "truncated": bool(truncated)})

    async def _delete(self, request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        if sid not in self.sessions:
            ended = self._ended.get(sid)
            if ended is None:
                raise _Refusal(404, f"unknown session {clip(sid)}")
            return web.json_response({"ok": True, "ended": ended})  # closing twice is not an error
        await self._close(sid, "closed by the client")
        return web.json_response({"ok": True})

    # -- session ends -----------------------------------------------------------------------------

    def _expiry(self, session: _Session, now: float) -> str | None:
        if now - session.created > self.limits.max_session_age_s:
            return f"expired: older than the {self.limits.max_session_age_s:g}s session age limit"
        if now - session.last_used > self.limits.idle_timeout_s and not session.lock.locked():
            return f"expired: idle for more than {self.limits.idle_timeout_s:g}s"
        return None

    def _expire(self, sid: str, session: _Session, reason: str) -> None:
        """End `sid` now (later requests get 410) and close its environment in the background."""
        logger.info("closing environment session %s (%s)", sid, reason)
        self.sessions.pop(sid, None)
        self._remember(sid, reason)
        task = asyncio.get_running_loop().create_task(self._close_env(session.env, f"session {sid}"))
        self._closing.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._closing.discard)

    def _reap_expired(self) -> None:
        now = time.monotonic()
        for sid, session in list(self.sessions.items()):
            # A session busy in a step is closed after that step (its lock is then free).
            reason = None if session.lock.locked() else self._expiry(session, now)
            if reason is not None:
                self._expire(sid, session, reason)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.limits.reap_interval_s)
            self._reap_expired()

    def _remember(self, sid: str, reason: str) -> None:
        self._ended[sid] = reason
        self._ended.move_to_end(sid)
        while len(self._ended) > self._max_ended:
            self._ended.popitem(last=False)

    async def _close(self, sid: str, reason: str) -> None:
        session = self.sessions.pop(sid, None)
        if session is None:
            return
        self._remember(sid, reason)
        await self._close_env(session.env, f"session {sid}")

    async def _close_env(self, env: Environment, what: str) -> None:
        try:
            await asyncio.wait_for(env.close(), self.limits.env_timeout_s)
        except Exception as err:  # noqa: BLE001 - closing is best effort
            logger.debug("closing %s failed: %s", what, _describe(err))
