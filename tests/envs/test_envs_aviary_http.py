"""`aviary_http`: episodes through Aviary's real `TaskDatasetServer` (a child process, with an API
key) and Aviary's own client, serving the dilution lab task of examples/aviary_lab/env.py."""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, Awaitable, Callable, Iterator

import pytest

pytest.importorskip("aviary.core", reason="fhaviary not installed")

import httpx  # noqa: E402  (a dependency of fhaviary)
from aviary.core import Message as AviaryMessage  # noqa: E402
from aviary.core import ToolResponseMessage  # noqa: E402

from envs.adapters.aviary import (AviaryServerError, aviary_call_error, close_http_pool,  # noqa: E402
                                  http_pool, split_indices)
from envs.core import Environment  # noqa: E402
from envs.dataset import Task  # noqa: E402
from envs.parsing import parse_assistant  # noqa: E402
from envs.registry import EnvSpec, UnknownEnvironmentError, get_env_spec  # noqa: E402
from envs.testing import play_episode  # noqa: E402
from envs.tool_env import make_action  # noqa: E402
from examples.aviary_lab.env import dilution, lab_server, reference_policy  # noqa: E402

KEY_ENV = "LABRL_TEST_AVIARY_KEY"  # where the labrl side reads the key from (env.options.api_key_env)
SIZE = 12
ENV = "aviary_http"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, str]]:
    """(url, api key) of a TaskDatasetServer serving SIZE dilution tasks."""
    key = secrets.token_hex(8)
    with lab_server(SIZE, key) as served:
        yield served.url, key


@pytest.fixture
def spec(server: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> EnvSpec:
    url, key = server
    monkeypatch.setenv(KEY_ENV, key)
    return get_env_spec(ENV, {"url": url, "api_key_env": KEY_ENV,
                                        "reference_policy": "examples.aviary_lab.env:reference_policy"})


def run(body: Callable[[], Awaitable[Any]]) -> Any:
    """Run `body` in a fresh event loop, closing that loop's connection pool after it."""
    async def main() -> Any:
        try:
            return await body()
        finally:
            await close_http_pool()
    return asyncio.run(main())


def _env(spec: EnvSpec, index: int) -> Environment:
    return spec.make_env(Task(f"aviary_http/train/{index:05d}", "aviary_http", "train", 1, 0, {"index": index}))


def play(spec: EnvSpec, index: int, body: Callable[[Environment], Awaitable[None]]) -> None:
    """Reset the environment of task `index`, run `body` on it and close it, in a fresh loop."""
    async def episode() -> None:
        env = _env(spec, index)
        await env.reset()
        await body(env)
        await env.close()
    run(episode)


def _running(server: tuple[str, str]) -> list[str]:
    url, key = server
    return httpx.get(f"{url}/info", headers={"X-API-Key": key}).json()["running_env_ids"]


def test_reference_solver_scores_one_and_every_request_shares_the_pool(spec: EnvSpec, server) -> None:
    sent: list[str] = []

    async def body() -> None:
        async def count(request: httpx.Request) -> None:
            sent.append(request.url.path)
        http_pool().event_hooks["request"].append(count)
        records = await asyncio.gather(*(play_episode(_env(spec, i), spec.reference_policy) for i in range(4)))
        for record in records:
            assert (record.reward, record.reason, record.turns) == (1.0, "correct", 2)
            assert not any(m.is_error for m in record.messages)

    run(body)
    # per episode: start + reset, two steps, close -- all on the one pool of the loop
    assert sorted(sent) == sorted(["/start", "/reset", "/step", "/step", "/close"] * 4)
    assert _running(server) == []


def test_wrong_answer_scores_zero(spec: EnvSpec) -> None:
    async def body() -> None:
        env = _env(spec, 3)
        [prompt], tools = await env.reset()
        assert prompt.content == dilution(3).prompt() and {t.name for t in tools} == {"dilution_volume", "submit"}
        [obs], reward, done, truncated = await env.step(make_action(("submit", {"volume_ml": 1e6})))
        assert (obs.content, obs.is_error) == ("incorrect", False)
        assert (float(reward), reward.reason, done, truncated) == (0.0, "wrong_value", True, False)
        await env.close()

    run(body)


def test_bad_arguments_and_unknown_tools_are_error_observations(spec: EnvSpec) -> None:
    async def body(env: Environment) -> None:
        bad = [("dilution_volume", {"stock": 2.0}),          # unknown argument name
               ("dilution_volume", {"id": 1}),               # would collide with Aviary's ToolCall.from_name
               ("dilution_volume", {"stock_m": "two", "target_m": 0.1, "final_ml": 50.0}),
               ("centrifuge", {"rpm": 3000})]
        for call in bad:
            [obs], reward, done, _ = await env.step(make_action(call))
            assert obs.is_error and obs.name == call[0] and obs.tool_call_id == "call_0", obs
            assert (reward.reason, done) == ("tool_error", False)
        assert obs.content == "Invalid tool call: centrifuge"
        task = dilution(0)
        [obs], reward, done, _ = await env.step(make_action(("submit", {"volume_ml": task.stock_ml})))
        assert (float(reward), reward.reason, done) == (1.0, "correct", True)  # the episode went on

    play(spec, 0, body)


def test_raising_tool_is_an_error_and_the_episode_goes_on(spec: EnvSpec) -> None:
    async def body(env: Environment) -> None:
        impossible = {"stock_m": 0.5, "target_m": 2.0, "final_ml": 100.0}
        task = dilution(1)
        right = {"stock_m": task.stock_m, "target_m": task.target_m, "final_ml": task.final_ml}
        [failed, result], reward, done, _ = await env.step(
            make_action(("dilution_volume", impossible), ("dilution_volume", right)))
        assert failed.is_error and "ValueError('cannot reach 2.0 M" in failed.content
        assert not result.is_error and float(result.content) == pytest.approx(task.stock_ml, rel=1e-3)
        assert (reward.reason, done) == ("tool_error", False)
        _, reward, done, _ = await env.step(make_action(("submit", {"volume_ml": float(result.content)})))
        assert (float(reward), done) == (1.0, True)

    play(spec, 1, body)


def test_text_only_action_is_an_error_observation_and_never_reaches_aviary(spec: EnvSpec) -> None:
    async def body(env: Environment) -> None:
        steps: list[Any] = []
        aviary_step = env.env.step

        async def counting_step(action):
            steps.append(action)
            return await aviary_step(action)
        env.env.step = counting_step
        contents = []
        for text in ("The answer is 5 mL.", '<tool_call>{"name": "submit"</tool_call>'):
            [obs], reward, done, truncated = await env.step(parse_assistant(text))
            assert obs.is_error and obs.role == "tool" and (reward.reason, done, truncated) == (
                "invalid_format", False, False)
            contents.append(obs.content)
        assert contents[0] == "Error: no tool call" and contents[1].startswith("Error: invalid tool call: ")
        assert steps == []
        _, reward, done, _ = await env.step(make_action(("submit", {"volume_ml": dilution(2).stock_ml})))
        assert (float(reward), done, len(steps)) == (1.0, True, 1)

    play(spec, 2, body)


def test_normal_results_are_never_labelled_errors() -> None:
    def tool(content: str, name: str = "f") -> ToolResponseMessage:
        return ToolResponseMessage(content=content, name=name, tool_call_id="c")

    assert aviary_call_error(tool("12.5")) is None
    assert aviary_call_error(tool("Invalid tool call: g")) is None          # not this tool's name
    assert aviary_call_error(tool("Error: the sample is invalid")) is None  # the tool's own words
    assert aviary_call_error(AviaryMessage(content="Encountered exception during tool call: X()")) is None
    assert aviary_call_error(tool("Invalid tool call: f")) == "tool_error"
    assert aviary_call_error(tool("Encountered exception during tool call: KeyError('a')")) == "tool_error"
    assert aviary_call_error(tool("Encountered exception during tool call: TimeoutError()")) == "timeout"


def test_wrong_or_missing_api_key_fails_clearly(server, monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = server
    monkeypatch.setenv(KEY_ENV, "not-the-key")
    wrong = get_env_spec(ENV, {"url": url, "api_key_env": KEY_ENV})
    for bad in (wrong, get_env_spec(ENV, {"url": url})):
        with pytest.raises(AviaryServerError, match=r"refused GET /info \(check the API key.*HTTP 403: "
                                                    r"Invalid or missing API key"):
            bad.make_dataset(4, 2, (1,), 0)
    with pytest.raises(httpx.HTTPStatusError, match="HTTP 403 from .*/start: Invalid or missing API key"):
        run(lambda: _env(wrong, 0).reset())
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(UnknownEnvironmentError, match=f"environment variable {KEY_ENV} is not set"):
        get_env_spec(ENV, {"url": url, "api_key_env": KEY_ENV})
    with pytest.raises(AviaryServerError, match="cannot reach the Aviary server at http://127.0.0.1:9"):
        get_env_spec(ENV, {"url": "http://127.0.0.1:9"}).make_dataset(4, 2, (1,), 0)


def test_server_failure_ends_the_episode_with_its_reason(spec: EnvSpec, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        env = _env(spec, 0)
        await env.reset()
        await env.close()  # the server forgets the environment: the next step is a 404
        with caplog.at_level(logging.WARNING, logger="envs.adapters.aviary"):
            [obs], reward, done, truncated = await env.step(make_action(("submit", {"volume_ml": 1.0})))
        assert obs.is_error and (reward.reason, done, truncated) == ("env_error", True, True)
        assert "HTTP 404" in caplog.text and "not found" in caplog.text

    run(body)


def test_split_is_seeded_disjoint_and_keeps_heldout_fixed(spec: EnvSpec) -> None:
    dataset = spec.make_dataset(100, 4, (1,), 7)  # more training tasks than the server has: the rest
    train = [t.data["index"] for t in dataset.tasks("train")]
    heldout = [t.data["index"] for t in dataset.tasks("heldout")]
    assert len(heldout) == 4 and sorted(train + heldout) == list(range(SIZE))
    assert dataset.tasks("heldout")[0].id == f"aviary_http/heldout/{heldout[0]:05d}"
    assert split_indices(SIZE, 100, 4, 7) == (train, heldout)
    assert split_indices(SIZE, 3, 4, 7) == (train[:3], heldout)      # held-out does not move
    assert split_indices(SIZE, 100, 4, 8)[1] != heldout                # another seed, another split
    with pytest.raises(ValueError, match="12 tasks: 12 held-out tasks leave none"):
        split_indices(SIZE, 1, SIZE, 0)


def test_options_are_checked_by_name(server) -> None:
    url, _ = server
    cases = {"url must start with http": {"url": "127.0.0.1:8041"},
             "colour\n  Extra inputs are not permitted": {"url": url, "colour": "blue"},
             "request_timeout_s\n  Input should be greater than 0": {"url": url, "request_timeout_s": 0},
             "reference_policy\n  Invalid python path": {"url": url, "reference_policy": "no.such:solver"}}
    for message, options in cases.items():
        with pytest.raises(UnknownEnvironmentError, match=message):
            get_env_spec(ENV, options)
    bare = get_env_spec(ENV, {"url": url + "/", "request_timeout_s": "2.5"})
    assert not bare.has_reference and bare.description == f"Aviary TaskDatasetServer at {url}"
    solved = get_env_spec(ENV, {"url": url, "reference_policy": "examples.aviary_lab.env:reference_policy"})
    assert solved.has_reference and solved.reference_policy is reference_policy
