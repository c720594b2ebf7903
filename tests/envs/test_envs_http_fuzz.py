"""Fuzz the environment server: thousands of malformed or hostile requests, each answered with a
4xx and a JSON message, `/health` answered after every one, and the server process still alive.

The server runs in its own process (`python -m envs.adapters.http`), so a request that killed it
(`"env": "os:abort"` did, before the server served a fixed set) shows up as a dead process. A
canary module on the server's path records any import of it: client names must never be imported.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import time
import uuid
from urllib.parse import urlsplit

import pytest

from envs.adapters.http import API_KEY_HEADER, start_server_process
from envs.registry import get_env_spec

logger = logging.getLogger(__name__)
KEY = "fuzz-key-" + uuid.uuid4().hex
MAX_BODY = 65536
MIN_REQUESTS = 2000
REQUESTS = 4000
# Not an HTTP method token: aiohttp's parser answers 400 in plain text before any handler runs.
NOT_HTTP_METHODS = ("FOO",)
HOSTILE_NAMES = ["os:abort", "sys:exit", "builtins:breakpoint", "os.system", "subprocess:run", "os:getpid",
                 "builtins:exec", "importlib:import_module", "fuzz_canary:SPEC", "fuzz_canary.SPEC",
                 "envs.suite.stoichiometry:SPEC", "../stoichiometry", "stoichiometry ", "STOICHIOMETRY", "",
                 "x" * 5000, "\u0000", "stoichiometry\n"]


class Client:
    """One keep-alive connection (reopened when the server closes it); raw bytes in, status out."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            resp = self.conn.getresponse()
            raw = resp.read()
        except (ConnectionError, http.client.HTTPException):
            self.conn.close()
            raise
        if resp.will_close:
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"not_json": raw[:200].decode(errors="replace")}
        return resp.status, data, dict(resp.getheaders())


def _task(spec) -> dict:
    return spec.make_dataset(1, 0, (1,), 0)[0].to_dict()


class Fuzzer:
    """A seeded stream of hostile requests; `live` sessions are real ones to send bad actions to."""

    def __init__(self, rng: random.Random, client: Client, task: dict):
        self.rng, self.client, self.task = rng, client, task
        self.auth = {API_KEY_HEADER: KEY}
        self.live: list[str] = []
        self.ended: list[str] = []

    def _json(self, value) -> bytes:
        return json.dumps(value).encode()

    def _new_session(self) -> str:
        status, data, _ = self.client.request("POST", "/sessions", self._json(
            {"env": "stoichiometry", "task": self.task}), self.auth)
        assert status == 200, data
        return data["session"]

    def session(self) -> str:
        if len(self.live) < 4:
            self.live.append(self._new_session())
        return self.rng.choice(self.live)

    def bad_json(self) -> tuple:
        r = self.rng
        valid = json.dumps({"env": "stoichiometry", "task": self.task})
        body = r.choice([
            valid[: r.randrange(1, len(valid))].encode(),  # truncated
            bytes(r.randrange(256) for _ in range(r.randrange(1, 200))),  # random bytes
            b"\xff\xfe" + valid.encode(), b"", b"{", b"}", b"{'env': 1}", b'{"env": NaN}', b'{"a": Infinity}',
            b"[" * 30000 + b"]" * 30000, b'{"a":' * 20000 + b"1" + b"}" * 20000,  # nested past the recursion limit
            b'{"task": ' + b"9" * 5000 + b"}",  # an integer too long to parse
            b'{"env": "stoichiometry", "env": ', valid.encode() + b"garbage"])
        path = r.choice(["/sessions", f"/sessions/{self.session()}/step"])
        return "POST", path, body, self.auth

    def wrong_types(self) -> tuple:
        r = self.rng
        value = r.choice([[], [1, 2], "str", 7, 1.5, None, True, {"env": 1}, {"env": None},
                          {"env": ["stoichiometry"]}, {"env": "stoichiometry"}, {"env": "stoichiometry", "task": 3},
                          {"env": "stoichiometry", "task": []}, {"env": "stoichiometry", "task": "t"},
                          {"env": "stoichiometry", "task": self._bad_task()}, {"action": {}},
                          {"config": {"env": "os:abort"}}, {"env": "stoichiometry", "task": self.task, "x": 1}])
        return "POST", "/sessions", self._json(value), self.auth

    def _bad_task(self) -> dict:
        r = self.rng
        task = dict(self.task)
        key = r.choice(["id", "env_name", "split", "difficulty", "seed", "data"])
        choice = r.randrange(5)
        if choice == 0:
            del task[key]  # `data` is optional, but this environment cannot run without it (422)
        elif choice == 1:
            task["extra"] = r.choice([1, "x", None])
        elif choice == 2:
            wrong = {"difficulty": ["1", 1.5, True, [], {}], "seed": ["1", 1.5, False, [], {}],
                     "data": [[], "x", 1, True]}.get(key, [1, 1.5, True, [], {}])
            task[key] = r.choice(wrong)
        elif choice == 3:
            task["split"] = r.choice(["test", "", "TRAIN", "train "])
        else:  # the right shape, data this environment cannot run: the environment raises (422)
            task["data"] = r.choice([{}, {"kind": "nope"}, {"kind": "molar_mass"}])
        return task

    def bad_action(self) -> tuple:
        r = self.rng
        call = {"id": "c1", "type": "function", "function": {"name": "mass", "arguments": {"el": "Na"}}}
        action = r.choice([
            None, [], "mass", 3, {}, {"role": "user"}, {"role": "system", "content": "x"}, {"role": 1},
            {"role": "assistant", "content": 5}, {"role": "assistant", "tool_calls": {}},
            {"role": "assistant", "tool_calls": ["mass"]}, {"role": "assistant", "tool_calls": [{"id": "x"}]},
            {"role": "assistant", "tool_calls": [{**call, "function": {"name": "mass", "arguments": "{}"}}]},
            {"role": "assistant", "tool_calls": [{**call, "function": {"name": 3}}]},
            {"role": "assistant", "tool_calls": [{**call, "function": []}]},
            {"role": "assistant", "tool_calls": [{**call, "extra": 1}]},
            {"role": "assistant", "is_error": "yes"}, {"role": "assistant", "name": []},
            {"role": "assistant", "__class__": "os.system"}])
        body = r.choice([{"action": action}, {"action": action, "more": 1}, {"actions": [action]}])
        return "POST", f"/sessions/{self.session()}/step", self._json(body), self.auth

    def huge_body(self) -> tuple:
        size = self.rng.choice([MAX_BODY + 1, MAX_BODY * 2, 1 << 20, 4 << 20])
        path = self.rng.choice(["/sessions", f"/sessions/{self.session()}/step"])
        return "POST", path, b'{"env": "' + b"a" * size + b'"}', self.auth

    def bad_env_name(self) -> tuple:
        name = self.rng.choice(HOSTILE_NAMES)
        return "POST", "/sessions", self._json({"env": name, "task": self.task}), self.auth

    def dead_session(self) -> tuple:
        r = self.rng
        if not self.ended or r.random() < 0.2:
            sid = self._new_session()
            assert self.client.request("DELETE", f"/sessions/{sid}", None, self.auth)[0] == 200
            self.ended.append(sid)
        sid = r.choice([r.choice(self.ended), uuid.uuid4().hex, "0" * 32, "x" * 3000, "%2e%2e", "..", "null"])
        step = json.dumps({"action": {"role": "assistant", "content": "hi"}}).encode()
        if sid in self.ended or r.random() < 0.5:  # (closing an ended session again is fine: 200)
            return "POST", f"/sessions/{sid}/step", step, self.auth
        return "DELETE", f"/sessions/{sid}", None, self.auth

    def bad_key(self) -> tuple:
        r = self.rng
        headers = r.choice([{}, {API_KEY_HEADER: ""}, {API_KEY_HEADER: KEY[:-1]}, {API_KEY_HEADER: KEY + "0"},
                            {API_KEY_HEADER: KEY.upper()}, {API_KEY_HEADER: "k" * 4000},
                            {"Authorization": f"Bearer {KEY}"}, {API_KEY_HEADER.lower() + "x": KEY}])
        method, path, body = r.choice([("POST", "/sessions", self._json({"env": "stoichiometry", "task": self.task})),
                                       ("POST", f"/sessions/{self.session()}/step", b"{}"),
                                       ("DELETE", f"/sessions/{self.session()}", None)])
        return method, path, body, headers

    def bad_route(self) -> tuple:
        r = self.rng
        method, path = r.choice([("GET", "/sessions"), ("PUT", "/sessions"), ("PATCH", "/sessions"),
                                 ("OPTIONS", "/sessions"), ("GET", f"/sessions/{self.session()}/step"),
                                 ("PUT", f"/sessions/{self.session()}"), ("POST", f"/sessions/{self.session()}"),
                                 ("GET", "/"), ("POST", "/health"), ("DELETE", "/health"), ("GET", "/admin"),
                                 ("POST", "/sessions/a/step/b"), ("GET", "/static/../../etc/passwd"),
                                 ("POST", "/sessions/" + "a" * 2000 + "/step/x"), ("TRACE", "/sessions"),
                                 ("FOO", "/sessions"), ("PROPFIND", "/sessions")])
        return method, path, b"{}", self.auth

    def next(self) -> tuple:
        kinds = [self.bad_json, self.wrong_types, self.bad_action, self.huge_body, self.bad_env_name,
                 self.dead_session, self.bad_key, self.bad_route]
        return self.rng.choice(kinds)()


@pytest.fixture
def server(tmp_path, monkeypatch):
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "fuzz_canary.py").write_text(
        f"from pathlib import Path\nPath({str(tmp_path / 'imported')!r}).write_text('yes')\nSPEC = None\n")
    monkeypatch.setenv("PYTHONPATH", str(canary))
    log = tmp_path / "server.log"
    proc, url = start_server_process(["stoichiometry"], api_key=KEY, log_path=log,
                                     args=["--max-body-bytes", str(MAX_BODY), "--max-sessions", "64",
                                           "--log-level", "DEBUG"])
    yield proc, url, log, tmp_path / "imported"
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_hostile_requests_get_4xx_and_the_server_stays_up(server) -> None:
    proc, url, log, canary_imported = server
    client = Client(url)
    fuzzer = Fuzzer(random.Random(18), client, _task(get_env_spec("stoichiometry")))
    statuses: dict[int, int] = {}
    start = time.monotonic()
    count = 0
    while count < REQUESTS:
        method, path, body, headers = fuzzer.next()
        status, data, _ = client.request(method, path, body, headers)
        count += 1
        what = f"request {count}: {method} {path[:60]} {(body or b'')[:80]!r}...{(body or b'')[-200:]!r}"
        assert 400 <= status < 500, f"{what} -> {status} {data}"
        if method in NOT_HTTP_METHODS:  # refused by aiohttp's HTTP parser, before the app: plain text
            assert status == 400 and "Invalid method" in data.get("not_json", ""), f"{what} -> {status} {data}"
        else:
            assert isinstance(data.get("error"), str) and data["error"], f"{what} -> {status} no message: {data}"
        statuses[status] = statuses.get(status, 0) + 1
        health = client.request("GET", "/health")
        assert health[0] == 200 and health[1]["ok"] is True, f"after {what}: /health -> {health}"
    elapsed = time.monotonic() - start
    assert proc.poll() is None, f"the server died: {log.read_text()[-2000:]}"
    # Nothing leaked: the only open sessions are the live ones the bad actions were sent to.
    assert client.request("GET", "/health")[1] == {"ok": True, "sessions": len(fuzzer.live)}
    assert count >= MIN_REQUESTS
    # Every kind of refusal came up, each many times.
    assert {400, 401, 404, 405, 413, 422}.issubset(statuses), statuses
    assert min(statuses[s] for s in (400, 401, 404, 405, 413)) >= 50, statuses
    assert not canary_imported.exists(), "a client-sent name was imported by the server"
    text = log.read_text()
    assert KEY not in text and "internal error" not in text and "envs.adapters.http_server: environment " \
        "server failed" not in text
    # The only tracebacks are aiohttp's parser logging the non-HTTP methods it refused.
    assert text.count("Traceback") == text.count("aiohttp.http_exceptions.BadHttpMethod"), text[-3000:]
    logger.info("%d hostile requests (+%d /health) in %.1fs: %s", count, count, elapsed, dict(sorted(statuses.items())))
