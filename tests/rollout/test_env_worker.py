"""The env worker and its pool: the typed spec built once from the run config, the tool time limit
reaching every environment, and the pool's accounting when a worker dies."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
import ray

from actors.types import SamplingSpec
from configs.schema import EnvConfig, GenerationConfig, LabrlConfig, RolloutConfig
from envs.core import Reward
from envs.dataset import Task
from envs.registry import EnvSpec, get_env_spec, register_env
from envs.tool_env import ToolEnvironment, make_action
from envs.tools import Tool
from models.loading import TINY_MARKER
from models.tiny import build_tokenizer
from rollout.env_worker import EnvWorker, EnvWorkerSpec
from rollout.pool import EnvWorkerPool
from tests.actors.fakes import dies_within

REPO_ROOT = str(Path(__file__).resolve().parents[2])
SLOW_ENV = "test_slow_tool"


class SlowToolEnv(ToolEnvironment):
    """`lookup` takes a second (a blocking, synchronous tool); `submit(7)` is correct."""

    def prompt(self) -> str:
        return "Look the answer up, then submit it."

    def make_tools(self) -> list[Tool]:
        return [Tool.from_function(self.lookup, "lookup"),
                Tool.from_function(self.submit, "submit", ends_episode=True)]

    def lookup(self) -> str:
        """Look the answer up."""
        time.sleep(1.0)
        return "7"

    def submit(self, answer: int) -> Reward:
        """Submit the answer.

        Args:
            answer: The answer.
        """
        return Reward(1.0, "correct") if answer == 7 else Reward(0.0, "wrong_value")


async def _lookup_then_submit(env, history):
    if not any(m.role == "tool" for m in history):
        return make_action(("lookup", {}))
    return make_action(("submit", {"answer": 7}))


register_env(EnvSpec(name=SLOW_ENV, make_dataset=lambda *a: None, make_env=SlowToolEnv,
                     reference_policy=_lookup_then_submit, difficulties=(1,)), overwrite=True)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tok")
    build_tokenizer().save_pretrained(path)
    (path / TINY_MARKER).write_text("{}")
    return str(path)


def _spec(tokenizer_dir: str, **env) -> EnvWorkerSpec:
    return EnvWorkerSpec(env=EnvConfig(**env), generation=GenerationConfig(max_new_tokens=128, max_model_len=2048),
                         tokenizer_path=tokenizer_dir, sampling=SamplingSpec(max_tokens=128))


def test_spec_from_config_holds_the_sections_themselves(tokenizer_dir):
    cfg = LabrlConfig(env=EnvConfig(tool_timeout_s=0.5), rollout=RolloutConfig(max_concurrent_episodes=7),
                      generation=GenerationConfig(temperature=0.7))
    spec = EnvWorkerSpec.from_config(cfg, tokenizer_dir)
    tok = build_tokenizer()
    assert spec.env is cfg.env and spec.generation is cfg.generation
    assert spec.tokenizer_path == tokenizer_dir and spec.max_concurrent_episodes == 7
    assert spec.sampling.stop_token_ids == [tok.convert_tokens_to_ids(tok.eos_token)]
    assert spec.sampling.temperature == 0.7


def test_a_tool_past_the_time_limit_is_an_error_observation_and_the_episode_goes_on(tokenizer_dir):
    """env.tool_timeout_s reaches the environment; the slow call does not hold up the event loop."""
    worker = EnvWorker(_spec(tokenizer_dir, name=SLOW_ENV, tool_timeout_s=0.1))

    async def play():
        t0 = time.monotonic()
        trajs = await worker.run_group(Task("t0", SLOW_ENV, "train", 1, 0, {}), 2, "g0", solver="reference")
        return trajs, time.monotonic() - t0

    trajs, wall_s = asyncio.run(play())
    assert wall_s < 0.9, "the two episodes' blocking tool calls were not cut at the limit"
    for traj in trajs:
        errors = [m for m in traj.messages if m["role"] == "tool" and m["content"].startswith("Error")]
        assert [m["content"] for m in errors] == ["Error: lookup timed out after 0.1s"]
        assert errors[0]["name"] == "lookup"
        assert traj.num_invalid_tool_calls == 1 and traj.num_turns == 2
        assert traj.finish_reason == "env_done" and traj.reward == 1.0


def test_without_a_router_only_scripted_solvers_play(tokenizer_dir):
    worker = EnvWorker(_spec(tokenizer_dir, name=SLOW_ENV))
    with pytest.raises(RuntimeError, match="no generation router"):
        asyncio.run(worker.run_group(Task("t0", SLOW_ENV, "train", 1, 0, {}), 1, "g0"))


@pytest.fixture(scope="module")
def ray_local():
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
                 runtime_env={"env_vars": {"PYTHONPATH": REPO_ROOT}})
    yield
    if started:
        ray.shutdown()


def _collect_all(pool: EnvWorkerPool, timeout_s: float = 120.0) -> list:
    deadline, done = time.monotonic() + timeout_s, []
    while pool.num_in_flight:
        assert time.monotonic() < deadline, f"{pool.num_in_flight} groups still running"
        done += pool.collect(timeout_s=1.0)
    return done


def test_pool_replaces_a_dead_worker_and_reruns_its_group(ray_local, tokenizer_dir):
    task = get_env_spec("stoichiometry").make_dataset(2, 1, [1], 0).tasks("train")[0]
    pool = EnvWorkerPool(_spec(tokenizer_dir, name="stoichiometry", max_turns=12),
                         RolloutConfig(num_env_workers=1, cpus_per_env_worker=0.5))
    try:
        pool.wait_ready(timeout_s=120)
        pool.submit(task, 2, "first", solver="reference")
        [(job, trajs)] = _collect_all(pool)
        assert job.group_id == "first" and len(trajs) == 2 and all(t.success for t in trajs)
        ray.kill(pool.workers[0])
        pool.submit(task, 2, "second", solver="reference")
        [(job, trajs)] = _collect_all(pool)
        assert job.group_id == "second" and job.attempts == 2 and len(trajs) == 2
        assert pool.replaced_workers == 1 and pool.rerun_groups == 1
    finally:
        pool.shutdown()


def test_wait_ready_names_the_workers_that_never_started(ray_local, tokenizer_dir):
    pool = EnvWorkerPool(_spec(tokenizer_dir, name="stoichiometry"),
                         RolloutConfig(num_env_workers=1, env_worker_resource="no_such_node"))
    try:
        with pytest.raises(TimeoutError, match="env worker 0.*no answer within"):
            pool.wait_ready(timeout_s=2)
    finally:
        pool.shutdown()


def test_pool_grows_and_shrinks_while_groups_run_and_every_group_returns_once(ray_local, tokenizer_dir):
    """Elastic capacity: 2 workers join a running pool and take groups; 2 retire while their groups
    run, finish them, and are stopped once those are collected. Nothing is lost or re-run."""
    task = get_env_spec("stoichiometry").make_dataset(2, 1, [1], 0).tasks("train")[0]
    pool = EnvWorkerPool(_spec(tokenizer_dir, name="stoichiometry", max_turns=12),
                         RolloutConfig(num_env_workers=1, cpus_per_env_worker=0.1))
    try:
        pool.wait_ready(timeout_s=120)
        pool.add_workers(2)
        assert pool.size == 3 and pool.wait_started(timeout_s=120) == 3
        for i in range(6):
            pool.submit(task, 2, f"g{i}", solver="reference")
        assert len({job.worker_id for job in pool.jobs.values()}) == 3  # the newcomers took groups
        assert pool.retire_workers(2) == 2 and len(pool.workers) == 1 and len(pool.retiring) == 2
        retired, kept = list(pool.retiring), pool.workers[0]
        for i in range(6, 8):
            pool.submit(task, 2, f"g{i}", solver="reference")
        assert {job.worker_id for job in pool.jobs.values() if job.group_id in ("g6", "g7")} == {
            kept._actor_id.hex()}
        done = _collect_all(pool)
        assert sorted(job.group_id for job, _ in done) == [f"g{i}" for i in range(8)]
        assert all(len(trajs) == 2 and all(t.success for t in trajs) for _, trajs in done)
        assert pool.retiring == [] and pool.rerun_groups == 0 and pool.replaced_workers == 0
        for worker in retired:  # killed once their groups were collected
            assert dies_within(worker.ping.remote, timeout_s=30)
        assert pool.retire_workers(5) == 0  # the last worker is never retired
    finally:
        pool.shutdown()


def test_a_new_worker_whose_resources_never_appear_is_given_up(ray_local, tokenizer_dir, caplog):
    pool = EnvWorkerPool(_spec(tokenizer_dir, name="stoichiometry"),
                         RolloutConfig(num_env_workers=1, env_worker_resource="no_such_node", capacity_timeout_s=1.0))
    try:
        pool.add_workers(1)
        with caplog.at_level(logging.WARNING, logger="rollout.pool"):
            pool.wait_started(timeout_s=30)
        assert pool.starting == {} and pool.size == 1
        assert "no resources within rollout.capacity_timeout_s=1 s" in caplog.text
    finally:
        pool.shutdown()
