"""Load on one environment server: thousands of concurrent episodes, latency, leaks and memory.

    python -m benchmarks.env_server_load                       # 2,000, 8,000 and 16,000 episodes
    python -m benchmarks.env_server_load --levels 500 --connections 256

One server process (`python -m envs.adapters.http --envs stoichiometry`, loopback only, an API key,
`--max-sessions` raised to the largest level) and one client process. At each level all episodes
start at once: `RemoteEnvironment.reset()` (POST /sessions; every episode waits until all sessions
are open, so the level's count of sessions is open at once), a `mass` tool call, then `submit` of the
right answer (ends the episode; the server closes the session); every 4th episode is abandoned
after the tool call instead and closed by the client (DELETE). The client is aiohttp with one
bounded connector (`--connections`, default 1024 connections); a request's latency includes its wait
for a connection, as a caller's would. Anchor: NeMo Gym's client hung for 40 minutes at 16,000
concurrent requests until it moved to aiohttp.

Reported per level: episodes, requests, p50/p99 latency per request, errors (exceptions and episodes
not rewarded `correct`), sessions open at once (those open when the last reset returned; the JSON
also has the most the server's /health showed, polled every 0.2 s), sessions left open after the
level (must be 0, from /health), the server's peak RSS during the level (VmHWM, reset before each
level through /proc/<pid>/clear_refs), wall time, requests/s and the server's CPU use during the
level and the client's (100% = one core busy: that process, one Python event loop, is the bottleneck). Exit status 1 when a level measured nothing,
leaked sessions, had errors or ran past `--level-timeout-s`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import emit, git_commit, setup_logging
from envs.adapters.http import RemoteEnvironment, start_server_process
from envs.registry import get_env_spec
from envs.suite.stoichiometry import parse_formula
from envs.tool_env import make_action
from monitor.text_table import format_table

logger = logging.getLogger("benchmarks.env_server_load")

ENV = "stoichiometry"
ABANDON_EVERY = 4
COLUMNS = [("concurrency", "concurrency", ","), ("episodes", "episodes", ","), ("requests", "requests", ","),
           ("p50 ms", "p50_ms", ".1f"), ("p99 ms", "p99_ms", ".1f"), ("errors", "errors", ","),
           ("open at once", "open_at_once", ","), ("leaked", "leaked", ","), ("server RSS MB", "server_peak_rss_mb", ".0f"),
           ("wall s", "wall_s", ".1f"), ("req/s", "requests_per_s", ",.0f"),
           ("server CPU %", "server_cpu_pct", ".0f"), ("client CPU %", "client_cpu_pct", ".0f")]


def raise_fd_limit(needed: int) -> int:
    """Raise the soft open-files limit towards the hard one (the server process inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        raise SystemExit(f"open-files limit {target} is below the {needed} this run needs; lower --connections")
    return target


def _proc_status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _reset_peak_rss(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # 5: reset VmHWM to the current RSS
        return True
    except OSError:
        return False


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class Level:
    """One level: `episodes` episodes at once against the server at `url`."""

    def __init__(self, url: str, key: str, http: aiohttp.ClientSession, tasks: list, episodes: int,
                 timeout_s: float):
        self.url, self.key, self.http, self.tasks, self.timeout_s = url, key, http, tasks, timeout_s
        self.episodes = episodes
        self.latencies: list[float] = []
        self.errors: list[str] = []
        # Every episode opens its session before any steps: `episodes` sessions are open at once.
        self._waiting = episodes
        self._all_open = asyncio.Event()
        self.opened = 0
        self.open_at_once = 0  # sessions open when the last reset returned and no episode had stepped

    def _opened(self, ok: bool) -> None:
        self._waiting -= 1
        self.opened += ok
        if self._waiting == 0:
            self.open_at_once = self.opened
            self._all_open.set()

    async def _timed(self, coro):
        start = time.perf_counter()
        try:
            return await coro
        finally:
            self.latencies.append(time.perf_counter() - start)

    async def episode(self, i: int) -> None:
        task = self.tasks[i % len(self.tasks)]
        env = RemoteEnvironment.for_task(self.url, ENV, task, api_key=self.key, timeout_s=self.timeout_s,
                                         session=self.http)
        try:
            ok = False
            try:
                await self._timed(env.reset())
                ok = True
            finally:
                self._opened(ok)
            await self._all_open.wait()
            element = parse_formula(task.data["formula"])[0][0]
            await self._timed(env.step(make_action(("mass", {"el": element}))))
            if i % ABANDON_EVERY == ABANDON_EVERY - 1:
                await self._timed(env.close())  # DELETE /sessions/{id}
                return
            _, reward, done, _ = await self._timed(env.step(make_action(("submit", {"answer": task.data["answer"]}))))
            if not done or reward.reason != "correct":
                self.errors.append(f"episode {i}: done={done} reason={reward.reason}")
        except Exception as err:  # noqa: BLE001 - counted and reported, the level goes on
            self.errors.append(f"episode {i}: {type(err).__name__}: {err}")
        finally:
            await env.close()  # no request: the episode ended, or was closed above


async def _open_sessions(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url + "/health", timeout=aiohttp.ClientTimeout(total=30)) as resp:
        return int((await resp.json())["sessions"])


async def run_level(url: str, key: str, pid: int, episodes: int, connections: int, tasks: list,
                    level_timeout_s: float) -> dict[str, Any]:
    rss_reset = _reset_peak_rss(pid)
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    async with aiohttp.ClientSession(connector=connector) as http, aiohttp.ClientSession() as monitor:
        level = Level(url, key, http, tasks, episodes, timeout_s=level_timeout_s)
        peak_open = 0
        done = asyncio.Event()

        async def poll() -> None:  # its own connection: never queued behind the load
            nonlocal peak_open
            while not done.is_set():
                peak_open = max(peak_open, await _open_sessions(monitor, url))
                await asyncio.sleep(0.2)

        poller = asyncio.get_running_loop().create_task(poll())
        cpu_start, client_cpu_start, start = _cpu_s(pid), time.process_time(), time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(level.episode(i) for i in range(episodes))), level_timeout_s)
            timed_out = False
        except asyncio.TimeoutError:
            timed_out = True
        wall_s = time.perf_counter() - start
        server_cpu_s, client_cpu_s = _cpu_s(pid) - cpu_start, time.process_time() - client_cpu_start
        done.set()
        await poller
        leaked = await _open_sessions(monitor, url)
    latencies = sorted(level.latencies)
    for error in level.errors[:5]:
        logger.warning("%s", error)
    return {"concurrency": episodes, "episodes": episodes, "requests": len(latencies),
            "p50_ms": _quantile(latencies, 0.50) * 1000, "p99_ms": _quantile(latencies, 0.99) * 1000,
            "errors": len(level.errors), "open_at_once": level.open_at_once, "peak_open_polled": peak_open,
            "leaked": leaked,
            "server_peak_rss_mb": _proc_status_kb(pid, "VmHWM") / 1024, "peak_rss_reset": rss_reset,
            "wall_s": wall_s, "server_cpu_pct": 100 * server_cpu_s / wall_s if wall_s else 0.0,
            "client_cpu_pct": 100 * client_cpu_s / wall_s if wall_s else 0.0, "requests_per_s": len(latencies) / wall_s if wall_s else 0.0,
            "timed_out": timed_out, "connections": connections}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", default="2000,8000,16000", help="comma-separated episode counts, all at once")
    p.add_argument("--connections", type=int, default=1024, help="the client connector's connection limit")
    p.add_argument("--level-timeout-s", type=float, default=600.0, help="a level running longer fails the run")
    p.add_argument("--tasks", type=int, default=256, help="distinct tasks the episodes cycle through")
    args = p.parse_args(argv)
    levels = [int(n) for n in args.levels.split(",") if n.strip()]
    if not levels or min(levels) < 1:
        p.error("--levels needs positive episode counts")
    setup_logging()
    fd_limit = raise_fd_limit(2 * args.connections + 256)
    tasks = [t for t in get_env_spec(ENV).make_dataset(args.tasks, 0, (1, 2), 0)]
    key = secrets.token_hex(16)
    commit = git_commit()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="labrl_env_server_") as tmp:
        proc, url = start_server_process([ENV], api_key=key, log_path=Path(tmp) / "server.log",
                                         args=["--max-sessions", str(max(levels)), "--log-level", "WARNING"])
        try:
            for episodes in levels:
                logger.info("level %d: %d episodes at once, %d connections", episodes, episodes, args.connections)
                row = asyncio.run(run_level(url, key, proc.pid, episodes, args.connections, tasks,
                                            args.level_timeout_s))
                logger.info("level %d: %s", episodes, row)
                rows.append(row)
                if proc.poll() is not None:
                    raise SystemExit(f"the server died: {(Path(tmp) / 'server.log').read_text()[-2000:]}")
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    table = format_table(rows, COLUMNS)
    table += (f"\n(one server process, loopback, {ENV}; client: aiohttp, {args.connections} connections; "
              f"open-files limit {fd_limit}; commit {commit})")
    emit("env_server_load", {"config": vars(args), "commit": commit, "levels": rows}, table)
    failures = [f"level {r['episodes']}: " + ", ".join(what for what, bad in (
        ("measured nothing", r["requests"] == 0), (f"{r['leaked']} sessions leaked", r["leaked"] != 0),
        (f"{r['errors']} errors", r["errors"] != 0),
        (f"ran past {args.level_timeout_s:g}s", r["timed_out"])) if bad) for r in rows
        if r["requests"] == 0 or r["leaked"] or r["errors"] or r["timed_out"]]
    for failure in failures:
        logger.error("%s", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
