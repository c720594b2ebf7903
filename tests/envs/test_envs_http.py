"""HTTP environments: a remote episode matches a local one; keys are enforced; crashes are contained."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from envs.adapters.http import API_KEY_HEADER, EnvServer, RemoteEnvError, RemoteEnvironment
from envs.core import Environment, Message
from envs.registry import get_env_spec
from envs.tool_env import make_action

KEY = "secret-key"


class CrashingEnv(Environment):
    async def reset(self):
        return [Message(role="user", content="hi")], []

    async def step(self, action):
        raise RuntimeError("simulator died")


def _factory(config: dict):
    if config.get("env") == "crash":
        return CrashingEnv()
    if config.get("env") == "broken":
        raise ValueError("cannot build")
    from envs.adapters.http import registry_factory
    return registry_factory(config)


def test_remote_episode_matches_local_and_rejects_wrong_keys() -> None:
    spec = get_env_spec("stoichiometry")
    task = spec.make_dataset(1, 0, (1,), 3)[0]

    async def main() -> None:
        server = EnvServer(_factory, api_key=KEY)
        url = await server.start()
        try:
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
            with pytest.raises(RemoteEnvError, match="401"):
                await wrong.reset()
            await wrong.close()
            async with aiohttp.ClientSession() as http:
                async with http.post(url + "/sessions", json={"config": {}}) as resp:
                    assert resp.status == 401
                async with http.post(url + "/sessions", json={"config": {}},
                                     headers={API_KEY_HEADER: KEY.upper()}) as resp:
                    assert resp.status == 401
                async with http.get(url + "/health") as resp:
                    assert resp.status == 200
                async with http.post(url + "/sessions/none/step", json={"action": {}},
                                     headers={API_KEY_HEADER: KEY}) as resp:
                    assert resp.status == 404
        finally:
            await server.stop()

    asyncio.run(main())


def test_crashing_environment_is_an_error_observation_and_the_server_survives() -> None:
    async def main() -> None:
        server = EnvServer(_factory, api_key=KEY)
        url = await server.start()
        try:
            env = RemoteEnvironment(url, {"env": "crash"}, api_key=KEY)
            await env.reset()
            [obs], reward, done, truncated = await env.step(make_action(("anything", {})))
            assert obs.is_error and "RuntimeError" in obs.content
            assert float(reward) == 0.0 and reward.reason == "env_error" and done and truncated
            await env.close()

            broken = RemoteEnvironment(url, {"env": "broken"}, api_key=KEY)
            with pytest.raises(RemoteEnvError, match="500"):
                await broken.reset()
            await broken.close()

            again = RemoteEnvironment(url, {"env": "crash"}, api_key=KEY)
            observations, _ = await again.reset()
            assert observations[0].content == "hi"
            await again.close()
            assert server.sessions == {}
        finally:
            await server.stop()

    asyncio.run(main())


def test_refuses_public_bind_without_key() -> None:
    with pytest.raises(ValueError):
        EnvServer(_factory, host="0.0.0.0")
    assert EnvServer(_factory).host == "127.0.0.1"
