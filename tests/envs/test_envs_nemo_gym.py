"""labrl's NeMo Gym adapter against NeMo Gym's own servers, run from the real `nemo-gym` wheel in
its own Python (`make nemo-gym`): two of its bundled example servers (resources and Gymnasium
shapes, with their bundled task rows) and a lab server written with NeMo Gym's API
(examples/nemo_gym_lab)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from configs.loading import ConfigError, load_config
from envs.adapters.nemo_gym.http import close_pool
from envs.adapters.nemo_gym.process import bundled_resources_dir, nemo_gym_server
from envs.core import Message
from envs.registry import EnvSpec, UnknownEnvironmentError, get_env_spec
from envs.tool_env import make_action
from examples.nemo_gym_lab.tasks import reference_policy, write_rows
from launch.preflight import preflight

COUNTER = "resources_servers.example_session_state_mgmt.app:StatefulCounterResourcesServer"
MULTI_TURN = "resources_servers.example_multi_turn_gymnasium.app:ExampleMultiTurnEnv"
LAB = "examples.nemo_gym_lab.app:MolarMassLab"


@pytest.fixture(scope="module")
def servers():
    """The three servers, started together (each takes seconds to import NeMo Gym)."""
    started = {name: nemo_gym_server(target).start() for name, target in
               (("counter", COUNTER), ("multi_turn", MULTI_TURN), ("lab", LAB))}
    try:
        yield {name: server.wait_ready() for name, server in started.items()}
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def bundled() -> Path:
    return bundled_resources_dir()


@pytest.fixture(scope="module")
def lab_tasks(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lab") / "tasks.jsonl"
    write_rows(path, rows=40, seed=3, fault_fraction=0.25)
    return path


def run(coro):
    """Run `coro` in a fresh event loop, closing that loop's connection pool after it."""
    async def main():
        try:
            return await coro
        finally:
            await close_pool()
    return asyncio.run(main())


def spec_for(url: str, tasks: Path, **extra) -> EnvSpec:
    return get_env_spec("nemo_gym", {"url": url, "tasks": str(tasks), **extra})


def test_resources_server_rewards_right_and_wrong_answers_and_checks_arguments(servers, bundled):
    """example_session_state_mgmt: the counter starts at the row's initial_count; the verifier pays
    1 when the session's counter equals expected_count. Arguments that break the row's schema are
    refused by labrl before the server sees them (the counter does not move)."""
    spec = spec_for(servers["counter"].url, bundled / "example_session_state_mgmt/data/example.jsonl")

    async def episode(task, extra: int):
        env = spec.make_env(task)
        observations, tools = await env.reset()
        assert sorted(t.name for t in tools) == ["get_counter_value", "increment_counter"]
        for n in map(int, re.findall(r"add (\d+)", observations[0].content)):
            [obs], reward, done, _ = await env.step(make_action(("increment_counter", {"count": n + extra})))
            assert obs.content == '{"success":true}' and not obs.is_error and not done
        bad = [await env.step(make_action(("increment_counter", args))) for args in
               ({}, {"count": "three"}, {"count": 1, "by": 2})]
        assert all(obs.is_error and reward.reason == "tool_error" and not done for [obs], reward, done, _ in bad)
        assert [obs.content for [obs], *_ in bad] == [  # labrl's own refusals: no HTTP 422 from the server
            "Error: increment_counter: missing argument 'count'", "Error: increment_counter: 'count' must be integer",
            "Error: increment_counter: unexpected argument 'by'"]
        [obs], _, _, _ = await env.step(make_action(("get_counter_value", {})))
        count = json.loads(obs.content)["count"]
        _, reward, done, truncated = await env.step(Message(role="assistant", content=f"count is {count}"))
        await env.close()
        return count, reward, done, truncated

    task = spec.make_dataset(10, 1, [1], 0).tasks("train")[0]
    row = task.data["row"]
    count, reward, done, truncated = run(episode(task, extra=0))
    assert count == row["expected_count"]  # the refused calls never reached the server
    assert (float(reward), reward.reason, reward.masked, done, truncated) == (1.0, "correct", False, True, False)
    count, reward, done, _ = run(episode(task, extra=1))
    assert count != row["expected_count"] and (float(reward), reward.reason, done) == (0.0, "wrong_value", True)


def test_concurrent_episodes_keep_their_own_sessions(servers, bundled):
    """16 episodes at once over one connection pool: each cookie jar keeps its own counter."""
    spec = spec_for(servers["counter"].url, bundled / "example_session_state_mgmt/data/example.jsonl")
    task = spec.make_dataset(10, 1, [1], 0).tasks("train")[0]

    async def episode(i: int) -> int:
        env = spec.make_env(task)
        await env.reset()
        await env.step(make_action(("increment_counter", {"count": i})))
        await asyncio.sleep(0.01 * (i % 3))
        [obs], _, _, _ = await env.step(make_action(("get_counter_value", {})))
        await env.close()
        return json.loads(obs.content)["count"]

    async def main():
        return await asyncio.gather(*(episode(i) for i in range(16)))

    assert run(main()) == [task.data["row"]["initial_count"] + i for i in range(16)]


def test_gymnasium_shaped_server_plays_follow_ups_and_scores_the_last_turn(servers, bundled):
    """example_multi_turn_gymnasium: /step answers each turn with the row's next follow-up question,
    then scores the final answer."""
    spec = spec_for(servers["multi_turn"].url, bundled / "example_multi_turn_gymnasium/data/example.jsonl",
                    shape="gymnasium", heldout_fraction=0.01)
    tasks = {t.data["row"]["expected_answer"]: t for t in spec.make_dataset(10, 1, [1], 0).tasks("train")}

    async def episode(task, final: str):
        env = spec.make_env(task)
        observations, _ = await env.reset()
        follow_ups = []
        for _ in task.data["row"]["follow_ups"]:
            obs, reward, done, _ = await env.step(Message(role="assistant", content="thinking"))
            follow_ups += [m.content for m in obs if m.role == "user"]
            assert not done and reward.reason == "in_progress"
        obs, reward, done, truncated = await env.step(Message(role="assistant", content=final))
        await env.close()
        return follow_ups, reward, done

    task = tasks["20"]
    follow_ups, reward, done = run(episode(task, "It is 20."))
    assert follow_ups == task.data["row"]["follow_ups"]
    assert (float(reward), reward.reason, done) == (1.0, "correct", True)
    _, reward, done = run(episode(task, "It is 21."))
    assert (float(reward), reward.reason, done) == (0.0, "wrong_value", True)


def test_lab_server_reference_solver_scores_and_faulty_rows_are_masked(servers, lab_tasks):
    """The lab written with NeMo Gym's API: its reference solver (mass, calc, answer) earns 1 on
    every judged row; an instrument-fault row comes back masked with the server's failure kind;
    a bad element is an error observation the episode survives."""
    spec = spec_for(servers["lab"].url, lab_tasks, reference="examples.nemo_gym_lab.tasks:reference_policy")
    assert spec.has_reference and spec.difficulties == (1, 2)
    tasks = spec.make_dataset(100, 100, [1, 2], 0).tasks("train")

    async def solve(task):
        env = spec.make_env(task)
        history, _ = await env.reset()
        [obs], reward, _, _ = await env.step(make_action(("mass", {"el": "Xx"})))
        assert obs.is_error and "unknown element" in obs.content and reward.reason == "tool_error"
        for _ in range(8):
            action = await reference_policy(env, history)
            obs, reward, done, _ = await env.step(action)
            history += [action, *obs]
            if done:
                break
        await env.close()
        return reward

    rewards = run(_gather(solve, tasks))
    faulty = [t.data["row"]["instrument_fault"] for t in tasks]
    assert any(faulty) and not all(faulty)
    for fault, reward in zip(faulty, rewards):
        if fault:
            assert reward.masked and reward.reason == "instrument_fault"
        else:
            assert (float(reward), reward.reason, reward.masked) == (1.0, "correct", False)


def _gather(fn, items):
    async def main():
        return await asyncio.gather(*(fn(x) for x in items))
    return main()


def test_split_is_deterministic_by_seed_and_filters_difficulty(lab_tasks):
    spec = spec_for("http://127.0.0.1:9", lab_tasks)
    ids = lambda ds, split: [t.id for t in ds.tasks(split)]  # noqa: E731
    a, b, c = (spec.make_dataset(100, 100, [1, 2], seed) for seed in (0, 0, 1))
    assert ids(a, "train") == ids(b, "train") and ids(a, "heldout") == ids(b, "heldout")
    assert ids(a, "heldout") != ids(c, "heldout")
    assert len(a.tasks("heldout")) == 8 and len(a.tasks("train")) == 32  # 20% of 40 rows held out
    assert not set(ids(a, "train")) & set(ids(a, "heldout"))
    only_easy = spec.make_dataset(100, 100, [1], 0)
    assert {t.difficulty for t in only_easy} == {1}


def test_bad_options_fail_before_ray_naming_the_problem(lab_tasks, tmp_path):
    cases = [({"url": "127.0.0.1:8000", "tasks": str(lab_tasks)}, "url must start with http"),
             ({"url": "http://x", "tasks": str(tmp_path / "none.jsonl")}, "does not exist"),
             ({"url": "http://x", "tasks": str(lab_tasks), "shap": "gymnasium"}, "shap"),
             ({"url": "http://x", "tasks": str(lab_tasks), "reference": "examples.nope:f"}, "cannot be imported")]
    for options, message in cases:
        with pytest.raises(UnknownEnvironmentError, match=message):
            get_env_spec("nemo_gym", options)
    (tmp_path / "bad.jsonl").write_text('{"responses_create_params": {}}\n{"prompt": 1}\n')
    with pytest.raises(UnknownEnvironmentError, match="bad.jsonl:2: a task row needs"):
        get_env_spec("nemo_gym", {"url": "http://x", "tasks": str(tmp_path / "bad.jsonl")})
    no_reference = load_config(None, ["env.name=nemo_gym", "env.options.url=http://x",
                                      f"env.options.tasks={lab_tasks}"])
    with pytest.raises(ConfigError, match="has no reference solver"):
        preflight(no_reference)
