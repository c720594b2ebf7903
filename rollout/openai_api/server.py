"""`AgentEndpoint`: the OpenAI-compatible HTTP endpoint an env worker serves to its agent programs.

It runs inside the caller's event loop (an env-worker actor's), on 127.0.0.1 by default: the
agents are the worker's own coroutines, so nothing outside the machine needs to reach it. Each
episode gets a private base URL, `http://HOST:PORT/episodes/<key>/v1`, bound to one session; the
key is random and unguessable, so concurrent episodes can never write into each other's
trajectories, and a URL dies with its episode (`close_episode`), so a stray late request from a
finished agent is a 404, not a completion recorded into the next episode.

Every answer is OpenAI-shaped, errors included (`{"error": {message, type, param, code}}`), so the
`openai` client raises its usual typed exceptions. Nothing a request does crashes the server: an
unexpected exception is a 500 naming its type, and is logged.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Any, Protocol

from aiohttp import web

from envs.core import Message
from rollout.openai_api.protocol import (chat_completion_chunks, chat_completion_response, error_body,
                                         new_request_id, parse_request)
from rollout.openai_api.types import ChatParams, CompletionResult, EndpointError

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 64 << 20  # whole agent histories travel with every request


class CompletionSession(Protocol):
    """What an episode's URL is bound to (`session.EpisodeSession`)."""

    model_name: str

    async def complete(self, messages: list[Message], tools: list[dict] | None,
                       params: ChatParams) -> CompletionResult: ...


def _json(status: int, body: dict) -> web.Response:
    return web.json_response(body, status=status)


def _short(key: str) -> str:
    """Enough of an episode key to tell episodes apart in logs, not enough to call into one."""
    return key[:6] + "..."


def _redacted(request: web.Request) -> str:
    key = request.match_info.get("key")
    return request.path.replace(key, _short(key)) if key else request.path


class AgentEndpoint:
    """Serves `/episodes/{key}/v1/chat/completions` and `/episodes/{key}/v1/models`.

    `requests`, `refused` (answered 4xx) and `failed` (answered 5xx) count this endpoint's requests.
    """

    def __init__(self, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.requests = self.refused = self.failed = 0
        self._sessions: dict[str, CompletionSession] = {}
        self._runner: web.AppRunner | None = None
        self.app = web.Application(middlewares=[self._errors], client_max_size=max_body_bytes)
        self.app.add_routes([
            web.post("/episodes/{key}/v1/chat/completions", self._chat_completions),
            web.get("/episodes/{key}/v1/models", self._models),
            web.get("/episodes/{key}/v1/models/{model}", self._model),
        ])

    @property
    def url(self) -> str:
        if self._runner is None:
            raise RuntimeError("AgentEndpoint is not started")
        return f"http://{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on `host:port` (port 0: a free port); returns the root URL."""
        self.host, self.port = host, port
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, backlog=1024).start()
        except OSError as err:
            await runner.cleanup()
            raise OSError(err.errno, f"agent endpoint cannot listen on {host}:{port}: {err.strerror or err}") from err
        self._runner = runner
        if port == 0:
            self.port = runner.addresses[0][1]
        logger.info("OpenAI-compatible agent endpoint listening on %s", self.url)
        return self.url

    async def stop(self) -> None:
        """Stop listening; every episode URL is closed."""
        self._sessions.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def open_episode(self, session: CompletionSession) -> str:
        """A new private base URL (for `openai.AsyncOpenAI(base_url=...)`) bound to `session`."""
        key = secrets.token_urlsafe(16)
        self._sessions[key] = session
        return f"{self.url}/episodes/{key}/v1"

    def close_episode(self, base_url: str) -> None:
        """Unbind an episode's URL; later requests to it get 404. Closing twice is harmless."""
        parts = base_url.rstrip("/").split("/")
        if len(parts) >= 3 and parts[-3] == "episodes" and parts[-1] == "v1":
            self._sessions.pop(parts[-2], None)

    @property
    def open_episodes(self) -> int:
        return len(self._sessions)

    def stats(self) -> dict[str, int]:
        return {"requests": self.requests, "refused": self.refused, "failed": self.failed,
                "open_episodes": self.open_episodes}

    # -- request handling ---------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """OpenAI-style error bodies for every refusal; counts each request by outcome."""
        self.requests += 1
        try:
            response = await handler(request)
        except EndpointError as err:
            response = _json(err.status, err.body())
            logger.debug("agent endpoint refused %s (%s): %s", request.method, err.code, err.message)
        except web.HTTPException as err:  # no such route (404), wrong method (405), body too large (413)
            code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(err.status, "http_error")
            response = _json(err.status, error_body(err.status, code, f"{request.method} {request.path}: {err.reason}"))
        except Exception as err:  # a bug or a dead router must not take the endpoint down
            logger.exception("agent endpoint: %s %s failed", request.method, _redacted(request))
            response = _json(500, error_body(500, "internal_error", f"{type(err).__name__}: {err}"))
        if response.status >= 500:
            self.failed += 1
        elif response.status >= 400:
            self.refused += 1
        return response

    def _session(self, request: web.Request) -> CompletionSession:
        key = request.match_info["key"]
        session = self._sessions.get(key)
        if session is None:
            raise EndpointError(404, "episode_not_found",
                                f"no open episode at this URL (key {_short(key)}): the episode ended or never existed")
        return session

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        try:
            body = json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise EndpointError(400, "invalid_json", f"request body is not valid JSON: {err}") from err
        parsed = parse_request(body)
        result = await session.complete(parsed.messages, parsed.tools, parsed.params)
        request_id, created = new_request_id(), int(time.time())
        if not parsed.stream:
            return _json(200, chat_completion_response(result, session.model_name, request_id, created,
                                                       parsed.params.logprobs))
        chunks = chat_completion_chunks(result, session.model_name, request_id, created, parsed.params.logprobs,
                                        parsed.include_usage)
        return await self._stream(request, chunks)

    @staticmethod
    async def _stream(request: web.Request, chunks: list[dict]) -> web.StreamResponse:
        """Server-sent events, `data: {chunk}` per chunk and `data: [DONE]` last, as OpenAI streams."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        payload = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        try:
            await response.write(payload.encode("utf-8"))
            await response.write_eof()
        except ConnectionResetError:  # the agent went away; its completion is recorded all the same
            logger.debug("agent endpoint: client closed a stream early")
        return response

    def _model_card(self, session: CompletionSession) -> dict:
        return {"id": session.model_name, "object": "model", "created": 0, "owned_by": "labrl"}

    async def _models(self, request: web.Request) -> web.Response:
        return _json(200, {"object": "list", "data": [self._model_card(self._session(request))]})

    async def _model(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if request.match_info["model"] != session.model_name:
            raise EndpointError(404, "model_not_found", f"this endpoint serves only {session.model_name!r}",
                                param="model")
        return _json(200, self._model_card(session))
