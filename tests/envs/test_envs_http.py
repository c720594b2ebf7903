"""HTTP environments: a remote episode matches a local one; keys are enforced and never logged;
crashes are contained; every limit answers with its own 4xx; a hung server is a named timeout."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest

from envs.adapters.http import (API_KEY_HEADER, EnvServer, RemoteEnvError, RemoteEnvironment, RemoteEnvTimeout,
                                ServerLimits, resolve_envs)
from envs.core import Environment, Message
from envs.dataset import Task
from envs.registry import EnvSpec, get_env_spec
from envs.tool_env import make_action

KEY = "secret-key-0123456789"
TASK = Task(id="t0", env_name="test", split="train", difficulty=1, seed=0)
ACTION = {"action": make_action(("anything", {})).to_dict()}


class CrashingEnv(Environment):
    async def reset(self):
        return [Message(role="user", content="hi")], []

    async def step(self, action):
        raise RuntimeError("simulator died")


class EchoEnv(CrashingEnv):
    """Never ends by itself; each step answers with the step count."""

    steps = 0

    async def step(self, action):
        self.steps += 1
        return [Message(role="user", content=str(self.steps))], 0.0, False, False


class SleepyEnv(CrashingEnv):
    async def step(self, action):
        await asyncio.sleep(30)


def _spec(name: str, make_env) -> EnvSpec:
    async def no_policy(env, history):
        raise NotImplementedError

    return EnvSpec(name=name, make_dataset=lambda *a: None, make_env=make_env, reference_policy=no_policy,
                   difficulties=(1,))


def _broken(task: Task) -> Environment:
    raise ValueError("cannot build")


TEST_ENVS = {"crash": _spec("crash", lambda task: CrashingEnv()), "broken": _spec("broken", _broken),
             "echo": _spec("echo", lambda task: EchoEnv()), "sleepy": _spec("sleepy", lambda task: SleepyEnv())}


def _serve(test, envs=TEST_ENVS, **kwargs) -> None:
    """Run `test(server, url, http)` against a started server, then stop it."""
    async def main() -> None:
        server = EnvServer(envs, api_key=KEY, **kwargs)
        url = await server.start()
        try:
            async with aiohttp.ClientSession(headers={API_KEY_HEADER: KEY}) as http:
                await test(server, url, http)
        finally:
            await server.stop()

    asyncio.run(main())


async def _call(http, method: str, url: str, body=None) -> tuple[int, dict, dict]:
    async with http.request(method, url, json=body) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


def test_remote_episode_matches_local_and_rejects_wrong_keys() -> None:
    spec = get_env_spec("stoichiometry")
    task = spec.make_dataset(1, 0, (1,), 3)[0]

    async def test(server, url, http) -> None:
        local = spec.make_env(task)
        remote = RemoteEnvironment.for_task(url, "stoichiometry", task, api_key=KEY)
        (obs_l, tools_l), (obs_r, tools_r) = await local.reset(), await remote.reset()
        assert obs_l == obs_r and [t.schema for t in tools_l] == [t.schema for t in tools_r]
        history = list(obs_l)
        while True:
            action = await spec.reference_policy(local, history)
            out_l, out_r = await local.step(action), await remote.step(action)
            assert out_l[0] == out_r[0] and out_l[2:] == out_r[2:]
            assert float(out_l[1]) == float(out_r[1]) and out_l[1].reason == out_r[1].reason
            history += [action, *out_l[0]]
            if out_r[2]:
                break
        assert out_r[1].reason == "correct" and server.sessions == {}
        await remote.close()

        wrong = RemoteEnvironment.for_task(url, "stoichiometry", task, api_key="nope")
        with pytest.raises(RemoteEnvError, match="401") as err:
            await wrong.reset()
        assert err.value.status == 401
        await wrong.close()
        body = {"env": "stoichiometry", "task": task.to_dict()}
        for headers in ({API_KEY_HEADER: ""}, {API_KEY_HEADER: KEY.upper()}, {API_KEY_HEADER: KEY + "x"}):
            async with http.post(url + "/sessions", json=body, headers=headers) as resp:
                assert resp.status == 401 and "X-API-Key" in (await resp.json())["error"]
        async with aiohttp.ClientSession() as anonymous:
            async with anonymous.post(url + "/sessions", json=body) as resp:
                assert resp.status == 401 and (await resp.json())["error"] == "missing X-API-Key header"
            async with anonymous.get(url + "/health") as resp:
                assert resp.status == 200 and await resp.json() == {"ok": True, "sessions": 0}

    _serve(test, envs=resolve_envs(["stoichiometry"]))


def test_only_served_names_are_created_and_client_input_is_clipped() -> None:
    async def test(server, url, http) -> None:
        for name in ("os:abort", "sys:exit", "builtins:breakpoint", "stoichiometry", "x" * 10_000):
            status, body, _ = await _call(http, "POST", url + "/sessions", {"env": name, "task": TASK.to_dict()})
            assert status == 400 and "not served here; served: crash, broken, echo, sleepy" in body["error"]
            assert len(body["error"]) < 300
        status, body, _ = await _call(http, "POST", url + "/sessions", {"config": {"env": "crash"}})
        assert status == 400 and "unexpected field 'config'" in body["error"]
        assert server.sessions == {}

    _serve(test)


def test_crashing_environment_is_an_error_observation_and_the_server_survives() -> None:
    async def test(server, url, http) -> None:
        env = RemoteEnvironment(url, "crash", TASK, api_key=KEY)
        await env.reset()
        [obs], reward, done, truncated = await env.step(make_action(("anything", {})))
        assert obs.is_error and "RuntimeError" in obs.content
        assert float(reward) == 0.0 and reward.reason == "env_error" and done and truncated
        await env.close()

        broken = RemoteEnvironment(url, "broken", TASK, api_key=KEY)
        with pytest.raises(RemoteEnvError, match="422.*could not start this task: ValueError: cannot build"):
            await broken.reset()
        await broken.close()

        again = RemoteEnvironment(url, "crash", TASK, api_key=KEY)
        observations, _ = await again.reset()
        assert observations[0].content == "hi"
        await again.close()
        assert server.sessions == {}

    _serve(test)


def test_each_limit_answers_with_its_own_status() -> None:
    limits = ServerLimits(max_body_bytes=4096, max_sessions=2, max_session_age_s=2.0, idle_timeout_s=60,
                          max_steps_per_s=1.0, step_burst=3)
    create = {"env": "echo", "task": TASK.to_dict()}

    async def test(server, url, http) -> None:
        status, body, _ = await _call(http, "POST", url + "/sessions", {**create, "task": {"data": "x" * 5000}})
        assert status == 413 and body["error"] == "body larger than 4096 bytes"
        created = time.monotonic()
        _, first, _ = await _call(http, "POST", url + "/sessions", create)
        _, second, _ = await _call(http, "POST", url + "/sessions", create)
        status, body, headers = await _call(http, "POST", url + "/sessions", create)
        assert status == 429 and "too many open sessions (limit 2)" in body["error"] and headers["Retry-After"]

        step = url + f"/sessions/{first['session']}/step"
        answers = [(await _call(http, "POST", step, ACTION)) for _ in range(4)]
        assert [s for s, _, _ in answers] == [200, 200, 200, 429]  # a burst of 3, then 1 step/s
        assert "step rate over 1/s" in answers[3][1]["error"] and answers[3][2]["Retry-After"] == "1"
        await asyncio.sleep(1.05)
        status, body, _ = await _call(http, "POST", step, ACTION)
        assert status == 200 and body["observations"][0]["content"] == "4"

        await asyncio.sleep(max(0.0, created + 2.1 - time.monotonic()))  # past the 2 s age limit
        status, body, _ = await _call(http, "POST", step, ACTION)
        assert status == 410 and "older than the 2s session age limit" in body["error"]
        assert first["session"] not in server.sessions
        await asyncio.sleep(limits.reap_interval_s + 0.2)  # the reaper closes the untouched second one
        assert server.sessions == {}
        status, body, _ = await _call(http, "POST", url + f"/sessions/{second['session']}/step", ACTION)
        assert status == 410 and "expired" in body["error"]

        _, third, _ = await _call(http, "POST", url + "/sessions", create)  # the slots are free again
        assert (await _call(http, "DELETE", url + f"/sessions/{third['session']}"))[0] == 200
        status, body, _ = await _call(http, "POST", url + f"/sessions/{third['session']}/step", ACTION)
        assert status == 404 and "has ended (closed by the client)" in body["error"]

    _serve(test, limits=limits)


def test_idle_sessions_are_reaped() -> None:
    async def test(server, url, http) -> None:
        for _ in range(3):
            assert (await _call(http, "POST", url + "/sessions", {"env": "echo", "task": TASK.to_dict()}))[0] == 200
        assert len(server.sessions) == 3
        await asyncio.sleep(0.6)
        assert server.sessions == {}

    _serve(test, limits=ServerLimits(idle_timeout_s=0.2))


def test_key_is_never_logged(caplog) -> None:
    caplog.set_level(logging.DEBUG)

    async def test(server, url, http) -> None:
        create = {"env": "crash", "task": TASK.to_dict()}
        for key in (KEY, KEY[:-1], KEY + "0", "wrong"):
            async with http.post(url + "/sessions", json=create, headers={API_KEY_HEADER: key}) as resp:
                assert resp.status == (200 if key == KEY else 401)
        env = RemoteEnvironment(url, "crash", TASK, api_key=KEY)
        await env.reset()
        await env.step(make_action(("anything", {})))  # logs the environment's failure
        await env.close()

    _serve(test)
    assert "simulator died" in caplog.text  # the capture works
    assert KEY not in caplog.text and KEY[:-1] not in caplog.text


def test_hung_server_is_a_timeout_naming_method_path_and_limit() -> None:
    async def test(server, url, http) -> None:
        env = RemoteEnvironment(url, "sleepy", TASK, api_key=KEY, timeout_s=0.5)
        await env.reset()
        with pytest.raises(RemoteEnvTimeout, match=rf"POST /sessions/{env.session_id}/step on {url}: "
                                                   r"no answer within 0.5s"):
            await env.step(make_action(("anything", {})))
        await env.close()

        # The server's own limit on an environment call: the hung step becomes a timeout observation.
        patient = RemoteEnvironment(url, "sleepy", TASK, api_key=KEY, timeout_s=10)
        await patient.reset()
        [obs], reward, done, truncated = await patient.step(make_action(("anything", {})))
        assert "timed out after 1s" in obs.content and reward.reason == "timeout" and done and truncated
        await patient.close()

    _serve(test, limits=ServerLimits(env_timeout_s=1.0))


def test_unreachable_server_is_an_error_naming_the_request() -> None:
    async def main() -> None:
        env = RemoteEnvironment("http://127.0.0.1:9", "crash", TASK, timeout_s=5)
        with pytest.raises(RemoteEnvError, match="POST /sessions on http://127.0.0.1:9: ClientConnectorError"):
            await env.reset()
        await env.close()

    asyncio.run(main())


def test_refuses_public_bind_without_key_and_an_empty_env_set() -> None:
    with pytest.raises(ValueError, match="without an API key"):
        EnvServer(TEST_ENVS, host="0.0.0.0")
    with pytest.raises(ValueError, match="at least one environment"):
        EnvServer({})
    assert EnvServer(TEST_ENVS).host == "127.0.0.1"
    # The operator's names are resolved at start (never `os:abort` here: the operator's import paths
    # may name a zero-argument factory, which is called).
    with pytest.raises(ValueError, match="cannot serve environment 'os:sep': .*not an EnvSpec"):
        resolve_envs(["stoichiometry", "os:sep"])
    with pytest.raises(ValueError, match="cannot serve environment 'nope'.*known: .*stoichiometry"):
        resolve_envs(["nope"])
    with pytest.raises(ValueError, match="named twice"):
        resolve_envs(["stoichiometry", "stoichiometry"])
