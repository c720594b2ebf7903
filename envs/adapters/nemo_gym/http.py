"""HTTP to NeMo Gym servers: one connection pool per event loop, one cookie jar per episode.

Why both: a resources server keys its per-episode state on a signed session cookie that
`/seed_session` (or `/reset`) sets, so episodes must never share cookies; but opening a TCP
connection per episode would cost more than a tool call. Each episode therefore gets its own
`aiohttp.ClientSession` (its own cookie jar) over the loop's shared connector.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from typing import Any

import aiohttp

_CONNECTORS: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.TCPConnector]" = (
    weakref.WeakKeyDictionary())


class NemoGymHTTPError(RuntimeError):
    """A NeMo Gym server answered with an error status; the message carries status and body."""

    def __init__(self, path: str, status: int, body: str):
        super().__init__(f"HTTP {status} from {path}: {body[:200]}")


def _connector(max_connections: int) -> aiohttp.TCPConnector:
    loop = asyncio.get_running_loop()
    connector = _CONNECTORS.get(loop)
    if connector is None or connector.closed:
        connector = aiohttp.TCPConnector(limit=max_connections)
        _CONNECTORS[loop] = connector
    return connector


async def close_pool() -> None:
    """Close this event loop's connection pool (a worker shutting down, a test's loop ending)."""
    connector = _CONNECTORS.pop(asyncio.get_running_loop(), None)
    if connector is not None:
        await connector.close()


class EpisodeClient:
    """The HTTP side of one episode: its cookie jar, the server URL, headers and time limit."""

    def __init__(self, url: str, headers: dict[str, str], timeout_s: float, max_connections: int):
        self.url = url.rstrip("/")
        # unsafe=True: keep cookies set by an IP-address host such as 127.0.0.1.
        self._session = aiohttp.ClientSession(
            connector=_connector(max_connections), connector_owner=False,
            cookie_jar=aiohttp.CookieJar(unsafe=True), headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s))

    async def post_text(self, path: str, body: Any) -> str:
        """POST JSON to `path`; the body text of a 2xx answer, else NemoGymHTTPError."""
        async with self._session.post(f"{self.url}{path}", json=body) as resp:
            text = await resp.text()
            if resp.status >= 400:
                raise NemoGymHTTPError(path, resp.status, text)
            return text

    async def post_json(self, path: str, body: Any) -> Any:
        return json.loads(await self.post_text(path, body))

    async def close(self) -> None:
        await self._session.close()
