"""MCP tool environments against the real `mcp` package: a spectrophotometry lab served by the
package's own `MCPServer`, over streamable HTTP (bearer auth, in a thread) and over stdio (this
file run as a script), driven through labrl's `McpEnvironment`.

Asserted: right answer -> 1 (`correct`), wrong -> 0 (`wrong_value`); bad arguments are error
observations that never reach the server; a tool that raises (isError), a call past the time limit
and a dead server are error observations and the episode goes on; each episode has its own MCP
session (concurrent episodes keep their own cuvette) and close() ends it; options errors name the
option.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import random
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Literal, TypeVar

import httpx2
import pytest
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError as LabError

from envs.adapters.mcp import McpEnvironment, McpServer, McpSessionError, McpTaskSet, mcp_spec
from envs.adapters.mcp_session import EPISODE_META_KEY
from envs.core import Message, Reward
from envs.dataset import Task, TaskDataset
from envs.registry import UnknownEnvironmentError, get_env_spec
from envs.tool_env import make_action
from envs.tools import Tool, ToolArgumentError, validate_arguments
from examples.mcp_lab.spectro import EPSILON, RACK, generate, prompt, reference, submit

ROOT = Path(__file__).resolve().parents[2]
FACTORY_PATH = "envs.adapters.mcp:make_mcp_spec"
T = TypeVar("T")
TOKEN = "lab-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SEEN: list[tuple[str, dict[str, Any]]] = []  # every tools/call the HTTP server received, before validation


# ---- the lab: an MCP server written with the mcp package's own API ----------------------------

def _cuvette_key(ctx: Context) -> str:
    """Handshake-era sessions carry Mcp-Session-Id; 2026-era calls carry only labrl's episode id."""
    session_id = (ctx.headers or {}).get("mcp-session-id")
    return session_id or str((ctx.request_context.meta or {}).get(EPISODE_META_KEY, "none"))


def build_lab(*, stdio: bool = False) -> MCPServer:
    cuvettes: dict[str, str] = {}

    async def record(ctx: Any, call_next: Any) -> Any:
        if ctx.method == "tools/call":
            params = dict(ctx.params or {})
            SEEN.append((params.get("name", ""), dict(params.get("arguments") or {})))
        return await call_next(ctx)

    auth: dict[str, Any] = {}
    if not stdio:
        class Verifier:
            async def verify_token(self, token: str) -> AccessToken | None:
                return AccessToken(token=token, client_id="labrl", scopes=[]) if token == TOKEN else None

        auth = {"token_verifier": Verifier(),
                "auth": AuthSettings(issuer_url="http://127.0.0.1:9", resource_server_url=None)}
    lab = MCPServer("spectro-lab", log_level="WARNING", middleware=[record], **auth)

    @lab.tool()
    def load_sample(sample_id: str, ctx: Context) -> str:
        """Put a sample from the rack into the spectrometer's cuvette."""
        if sample_id not in RACK:  # ToolError: the message is for the client
            raise LabError(f"no sample {sample_id!r} in the rack")
        cuvettes[_cuvette_key(ctx)] = sample_id
        return f"{sample_id} loaded"

    @lab.tool()
    def absorbance(wavelength_nm: int, ctx: Context) -> float:
        """Absorbance of the loaded sample at a filter wavelength (450 or 520 nm)."""
        sample = cuvettes.get(_cuvette_key(ctx))
        if sample is None:
            raise LabError("no sample loaded")
        return round(EPSILON[wavelength_nm] * RACK[sample] / 1000, 6)  # KeyError (a crash) for a missing filter

    @lab.tool()
    def convert(value: float, unit: Literal["M", "mM", "uM"]) -> float:
        """A concentration in mM."""
        return value * {"M": 1000.0, "mM": 1.0, "uM": 0.001}[unit]

    @lab.tool()
    async def stir(seconds: float) -> str:
        """Stir the cuvette."""
        await asyncio.sleep(seconds)
        return "stirred"

    @lab.tool()
    def instrument_status(ctx: Context) -> dict:
        """Which process and cuvette serve this call."""
        key = _cuvette_key(ctx)
        return {"pid": os.getpid(), "cuvette": key, "sample": cuvettes.get(key)}

    if stdio:
        @lab.tool()
        def power_off() -> str:
            """Switch the instrument off (the server process dies)."""
            os._exit(3)

    return lab


# ---- the science (tasks, prompt, checker, reference solver): examples/mcp_lab/spectro.py ----

LAB_TASKS = McpTaskSet(name="spectro", make_dataset=functools.partial(TaskDataset.generate, "spectro", generate),
                       prompt=prompt, submit=submit, reference_policy=reference, max_tool_calls=6)
TASK = Task(id="spectro/train/d1/00000", env_name="spectro", split="train", difficulty=1, seed=0,
            data=generate(random.Random(3), 1))


# ---- fixtures and helpers --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def http_url():
    """The lab over streamable HTTP on a free 127.0.0.1 port, served by uvicorn in a thread."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(build_lab().streamable_http_app(), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "MCP lab server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def http_env(url: str, max_tool_calls: int = 8, **server: Any) -> McpEnvironment:
    server.setdefault("headers", AUTH)
    return McpEnvironment(TASK, LAB_TASKS, McpServer(url=url, **server), max_tool_calls=max_tool_calls)


def stdio_server() -> McpServer:
    return McpServer(command=[sys.executable, str(Path(__file__).resolve())], env={"PYTHONPATH": str(ROOT)})


def call(name: str, **arguments: Any) -> Message:
    return make_action((name, arguments))


def run(env: McpEnvironment, body: Callable[[McpEnvironment], Awaitable[T]]) -> T:
    """`body(env)` in a fresh event loop, then close(): an episode's session lives in one loop."""
    async def main() -> T:
        try:
            return await body(env)
        finally:
            await env.close()

    return asyncio.run(main())


def steps(env: McpEnvironment, *actions: Message) -> list[tuple[list[Message], Reward, bool, bool]]:
    """reset, then each action in turn; each step's (observations, reward, done, truncated)."""
    async def body(env: McpEnvironment) -> list:
        await env.reset()
        return [await env.step(a) for a in actions]

    return run(env, body)


async def play_reference(env: McpEnvironment, *, reset: bool = True) -> tuple[list[Message], Reward]:
    """The reference solver to the episode's end (from the start, or on from where `env` is)."""
    history = list((await env.reset())[0]) if reset else []
    while True:
        action = await reference(env, history)
        obs, reward, done, _ = await env.step(action)
        history += [action, *obs]
        if done:
            return history, reward


# ---- tests ------------------------------------------------------------------------------------------

def test_schema_only_tools_are_checked_against_their_json_schema():
    tool = Tool.from_schema({"name": "t", "parameters": {
        "type": "object", "required": ["n", "unit"],
        "properties": {"n": {"type": "integer"}, "x": {"type": "number"}, "unit": {"enum": ["M", "mM"]},
                       "on": {"type": "boolean"}, "tags": {"type": "array", "items": {"type": "string"}},
                       "opt": {"anyOf": [{"type": "integer"}, {"type": "null"}]}, "meta": {"type": "object"}}}})
    ok = validate_arguments(tool, {"n": 10.0, "x": 2, "unit": "mM", "on": False, "tags": ["a"], "opt": None,
                                   "meta": {}})
    assert ok["n"] == 10 and type(ok["n"]) is int  # JSON Schema counts 10.0 as an integer
    bad = [({"unit": "M"}, "missing argument 'n'"), ({"n": 1, "unit": "M", "z": 1}, "unexpected argument 'z'"),
           ({"n": "1", "unit": "M"}, "'n' must be integer"), ({"n": True, "unit": "M"}, "'n' must be integer"),
           ({"n": 1.5, "unit": "M"}, "'n' must be integer"), ({"n": 1, "unit": "kg"}, '"M", "mM"'),
           ({"n": 1, "unit": True}, '"M", "mM"'), ({"n": 1, "unit": "M", "on": 1}, "'on' must be boolean"),
           ({"n": 1, "unit": "M", "tags": ["a", 2]}, "'tags[1]' must be string"),
           ({"n": 1, "unit": "M", "opt": "x"}, "'opt' must be integer or null"),
           ({"n": 1, "unit": "M", "meta": []}, "'meta' must be object"), ([1], "arguments must be an object")]
    for args, message in bad:
        with pytest.raises(ToolArgumentError) as err:
            validate_arguments(tool, args)
        assert message in str(err.value), (args, str(err.value))
    open_tool = Tool.from_schema({"name": "o", "parameters": {"type": "object", "additionalProperties": True}})
    assert validate_arguments(open_tool, {"anything": 1}) == {"anything": 1}


def test_reference_solver_scores_1_and_a_wrong_answer_0(http_url):
    observations, tools = run(http_env(http_url), lambda env: env.reset())
    assert observations[-1].content == prompt(TASK)
    by_name = {t.name: t for t in tools}
    assert set(by_name) == {"load_sample", "absorbance", "convert", "stir", "instrument_status", "submit"}
    assert by_name["absorbance"].parameters["properties"]["wavelength_nm"]["type"] == "integer"  # the server's
    assert by_name["submit"].ends_episode and not by_name["absorbance"].ends_episode

    history, reward = run(http_env(http_url), play_reference)
    assert (float(reward), reward.reason) == (1.0, "correct")
    assert [m.content for m in history if m.role == "tool"][0] == f"{TASK.data['sample']} loaded"

    [(_, reward, done, truncated)] = steps(http_env(http_url), call("submit", concentration_mM=123.0))
    assert (float(reward), reward.reason, done, truncated) == (0.0, "wrong_value", True, False)


def test_bad_arguments_are_error_observations_that_never_reach_the_server(http_url):
    bad = [call("absorbance", wavelength_nm="blue"), call("absorbance"), call("convert", value=1.0, unit="kg"),
           call("load_sample", sample_id="S1", rack=2), call("absorbance", wavelength_nm=True)]
    before = len(SEEN)
    results = steps(http_env(http_url, max_tool_calls=10), *bad, call("convert", value=2.0, unit="M"))
    for obs, reward, done, _ in results[:-1]:
        assert obs[0].is_error and obs[0].content.startswith("Error: ") and reward.reason == "tool_error"
        assert not done
    assert "'wavelength_nm' must be integer" in results[0][0][0].content
    assert "missing argument 'wavelength_nm'" in results[1][0][0].content
    assert 'one of "M", "mM", "uM"' in results[2][0][0].content
    assert "unexpected argument 'rack'" in results[3][0][0].content
    assert SEEN[before:] == [("convert", {"value": 2.0, "unit": "M"})]  # only the valid call went out
    assert results[-1][0][0].content == "2000.0" and not results[-1][0][0].is_error


def test_tool_failures_and_timeouts_are_error_observations_and_the_episode_goes_on(http_url):
    env = http_env(http_url)
    env.tool_timeout_s = 0.5
    started = time.monotonic()
    no_sample, unknown, slow, loaded, crash, reading = steps(
        env, call("absorbance", wavelength_nm=450), call("load_sample", sample_id="S9"), call("stir", seconds=5.0),
        call("load_sample", sample_id="S3"), call("absorbance", wavelength_nm=500), call("absorbance", wavelength_nm=450))
    assert time.monotonic() - started < 4.5  # the stir was cut at 0.5 s, not waited for
    assert no_sample[0][0].is_error and no_sample[0][0].content == "Error: absorbance: ToolError: no sample loaded"
    assert no_sample[1].reason == "tool_error" and not no_sample[2]
    assert unknown[0][0].is_error and "no sample 'S9' in the rack" in unknown[0][0].content
    assert slow[0][0].is_error and slow[0][0].content == "Error: stir timed out after 0.5s"
    assert slow[1].reason == "timeout" and not slow[2]
    assert loaded[0][0].content == "S3 loaded"  # the session survived the cut call
    assert crash[0][0].content == "Error: absorbance: ToolError: the tool failed"  # the server hides a crash
    assert float(reading[0][0].content) == pytest.approx(EPSILON[450] * RACK["S3"] / 1000)
    assert reading[1].reason == "in_progress"


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_concurrent_episodes_have_their_own_sessions(http_url, mode):
    a, b = http_env(http_url, mode=mode), http_env(http_url, mode=mode)

    async def both(_: McpEnvironment) -> list:
        try:
            await asyncio.gather(a.reset(), b.reset())
            await asyncio.gather(a.step(call("load_sample", sample_id="S1")),
                                 b.step(call("load_sample", sample_id="S2")))
            return await asyncio.gather(*(e.step(call("instrument_status")) for e in (a, b)))
        finally:
            await b.close()

    (obs_a, *_), (obs_b, *_) = run(a, both)
    status_a, status_b = (json.loads(o[0].content) for o in (obs_a, obs_b))
    assert (status_a["sample"], status_b["sample"]) == ("S1", "S2")
    assert status_a["cuvette"] != status_b["cuvette"]
    if mode == "legacy":  # a handshake-era server session (Mcp-Session-Id) per episode
        assert len(status_a["cuvette"]) == 32 and "#" not in status_a["cuvette"]
    else:  # 2026-era servers are stateless: the episode id labrl sends in _meta keeps them apart
        assert status_a["cuvette"].startswith(TASK.id + "#")


def test_close_ends_the_http_session_and_the_auth_header_is_required(http_url, monkeypatch):
    monkeypatch.setenv("LAB_TOKEN", TOKEN)
    env = http_env(http_url, mode="legacy", headers={"Authorization": "Bearer ${LAB_TOKEN}"})
    [(obs, *_)] = steps(env, call("instrument_status"))
    session_id = json.loads(obs[0].content)["cuvette"]
    assert env.session is None
    request = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    accept = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
    closed = httpx2.post(http_url, json=request, headers={**AUTH, **accept, "Mcp-Session-Id": session_id})
    assert closed.status_code == 404  # the server forgot the session: close() terminated it
    assert httpx2.post(http_url, json=request, headers=accept).status_code == 401
    with pytest.raises(McpSessionError, match=r"with http://127\.0\.0\.1.*HTTP 401 Unauthorized"):
        run(http_env(http_url, headers={}), lambda env: env.reset())


def test_an_episode_cut_by_the_agent_loop_still_closes_its_session(http_url):
    """The agent loop plays under asyncio.wait_for and closes outside it: another task."""
    env = http_env(http_url, mode="legacy")
    env.tool_timeout_s = 30.0

    async def play(statuses: list[str]) -> None:
        await env.reset()
        [status, *_] = await env.step(call("instrument_status"))
        statuses.append(json.loads(status[0].content)["cuvette"])
        await env.step(call("stir", seconds=10.0))

    async def cut(_: McpEnvironment) -> str:
        statuses: list[str] = []
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(play(statuses), timeout=1.0)  # reset() ran in that task, close() in this
        return statuses[0]

    session_id = run(env, cut)
    request = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {**AUTH, "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25",
               "Mcp-Session-Id": session_id}
    assert httpx2.post(http_url, json=request, headers=headers).status_code == 404


def test_unreachable_servers_are_named_errors_at_reset():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    with pytest.raises(McpSessionError, match=f"with {url}: ConnectError"):
        run(McpEnvironment(TASK, LAB_TASKS, McpServer(url=url)), lambda env: env.reset())
    missing = McpServer(command="/nonexistent/lab-server --port 0")  # one string is split like a shell
    assert missing.command == ["/nonexistent/lab-server", "--port", "0"]
    with pytest.raises(McpSessionError, match="stdio: /nonexistent/lab-server --port 0: .*No such file"):
        run(McpEnvironment(TASK, LAB_TASKS, missing), lambda env: env.reset())


def test_stdio_server_a_process_per_episode_and_a_dead_server():
    async def episode(env: McpEnvironment) -> tuple[Reward, str]:
        await env.reset()
        [status, *_] = await env.step(call("instrument_status"))
        _, reward = await play_reference(env, reset=False)
        return reward, status[0].content

    reward, status = run(McpEnvironment(TASK, LAB_TASKS, stdio_server()), episode)
    assert (float(reward), reward.reason) == (1.0, "correct")
    pid = json.loads(status)["pid"]
    assert pid != os.getpid()
    with pytest.raises(ProcessLookupError):  # close() ended the session: its server process has exited
        os.kill(pid, 0)

    env = McpEnvironment(TASK, LAB_TASKS, stdio_server())
    env.tool_timeout_s = 30.0
    started = time.monotonic()
    off, after = steps(env, call("power_off"), call("load_sample", sample_id="S1"))
    for obs, reward, done, _ in (off, after):
        assert obs[0].is_error and "Connection closed" in obs[0].content
        assert reward.reason == "tool_error" and not done
    assert time.monotonic() - started < 20  # a dead server is noticed, not waited out for 30 s a call


def test_config_route_options_and_errors(http_url, monkeypatch):
    monkeypatch.setitem(sys.modules, "spectro_lab_tasks", sys.modules[__name__])
    options = {"tasks": "spectro_lab_tasks:LAB_TASKS", "url": http_url, "headers": AUTH}
    for name in ("mcp", FACTORY_PATH):  # the registered name (envs/adapters/__init__.py) and the import path
        spec = get_env_spec(name, options)
        assert spec.name == "spectro" and spec.reference_policy is reference
        tasks = spec.make_dataset(4, 2, (1,), 0)
        assert len(tasks.tasks("train")) == 4 and len(tasks.tasks("heldout")) == 2
        assert isinstance(spec.make_env(tasks[0]), McpEnvironment)
    errors = [({"urll": "x"}, "urll"), ({"command": ["lab"]}, "exactly one of url"),
              ({"headers": {"Authorization": "Bearer ${NO_SUCH_VAR_X}"}}, "NO_SUCH_VAR_X"),
              ({"tasks": "spectro_lab_tasks:NOPE"}, "NOPE"), ({"tasks": "spectro_lab_tasks:RACK"}, "not an McpTaskSet"),
              ({"mode": "modern"}, "mode")]
    for change, needle in errors:
        with pytest.raises(UnknownEnvironmentError, match=needle):
            get_env_spec(FACTORY_PATH, {**options, **change})
    with pytest.raises(UnknownEnvironmentError, match="tasks"):
        get_env_spec(FACTORY_PATH, {"url": http_url})


def test_an_async_checker_may_read_the_instrument(http_url):
    async def submit_sample(sample_id: str, state: McpEnvironment) -> Reward:
        """Submit which sample is in the cuvette; ends the episode.

        Args:
            sample_id: The sample you loaded.
        """
        status = json.loads(await state.call_mcp("instrument_status", {}))
        ok = status["sample"] == sample_id == state.task.data["sample"]
        return Reward(float(ok), "correct" if ok else "wrong_value")

    checked = dataclasses.replace(LAB_TASKS, submit=submit_sample)
    sample = TASK.data["sample"]
    loaded_first = steps(McpEnvironment(TASK, checked, McpServer(url=http_url, headers=AUTH)),
                         call("load_sample", sample_id=sample), call("submit_sample", sample_id=sample))
    assert loaded_first[-1][1].reason == "correct" and loaded_first[-1][2]
    [(_, claimed, done, _)] = steps(McpEnvironment(TASK, checked, McpServer(url=http_url, headers=AUTH)),
                                   call("submit_sample", sample_id=sample))
    assert (float(claimed), claimed.reason, done) == (0.0, "wrong_value", True)  # nothing was loaded


def test_tool_allow_list_and_a_name_clash(http_url):
    only = dataclasses.replace(LAB_TASKS, tools=("load_sample", "absorbance"))
    _, tools = run(McpEnvironment(TASK, only, McpServer(url=http_url, headers=AUTH)), lambda env: env.reset())
    assert [t.name for t in tools] == ["load_sample", "absorbance", "submit"]

    def convert(value: float) -> Reward:
        """A local verifier named like a server tool."""
        return Reward(0.0, "wrong_value")

    for task_set, needle in [(dataclasses.replace(LAB_TASKS, tools=("centrifuge",)), "no tool centrifuge"),
                             (dataclasses.replace(LAB_TASKS, submit=convert), "named like the verifier")]:
        env = McpEnvironment(TASK, task_set, McpServer(url=http_url, headers=AUTH))
        with pytest.raises(McpSessionError, match=needle):
            run(env, lambda env: env.reset())
        assert env.session is None
    assert mcp_spec(LAB_TASKS, McpServer(url=http_url)).description.endswith(http_url)


if __name__ == "__main__":  # the stdio lab server (started by the stdio test)
    build_lab(stdio=True).run("stdio")
