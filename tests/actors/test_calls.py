"""Waits on Ray actors end, and say who hung or failed: `wait_all` (engine start-up, trainer
collectives, weight-sync phases, env-worker pings all go through it), `alive`, and the env pool's
`set_router`."""

from __future__ import annotations

import asyncio
import time

import pytest
import ray

from actors.calls import alive, wait_all
from rollout.pool import EnvWorkerPool


@ray.remote(num_cpus=0)
class Napper:
    """Answers after `seconds`, raises, or never answers (one call at a time: a long nap wedges it)."""

    def nap(self, seconds: float) -> str:
        time.sleep(seconds)
        return "awake"

    def fail(self) -> None:
        raise ValueError("boom")

    def ping(self) -> bool:
        return True


@ray.remote(num_cpus=0)
class WedgedEnvWorker:
    """An env worker whose event loop never gets round to `set_router`."""

    async def set_router(self, router) -> None:
        await asyncio.sleep(3600)


class CustomHang(Exception):
    pass


class CustomFailure(Exception):
    pass


@pytest.fixture
def nappers(ray_local):
    actors = [Napper.remote() for _ in range(3)]
    ray.get([a.ping.remote() for a in actors], timeout=120)
    yield actors
    for a in actors:
        ray.kill(a)


def test_a_hang_ends_at_the_deadline_naming_only_the_calls_still_pending(nappers):
    fast, slow, slower = nappers
    refs = {"engine 0": fast.nap.remote(0), "engine 1": slow.nap.remote(3600), "engine 2": slower.nap.remote(3600)}
    start = time.monotonic()
    with pytest.raises(TimeoutError) as caught:
        wait_all(refs, 2.0, "engine start-up")
    took = time.monotonic() - start
    message = str(caught.value)
    assert "failed on 2 of 3" in message
    assert "engine 1: no answer within 2.0 s during engine start-up" in message
    assert "engine 2: no answer within 2.0 s during engine start-up" in message
    assert "engine 0" not in message
    assert 1.9 <= took < 10, took


def test_a_hang_raises_the_callers_hang_error(nappers):
    with pytest.raises(CustomHang, match="rank 0: no answer within 1.0 s during train_step"):
        wait_all({"rank 0": nappers[0].nap.remote(3600)}, 1.0, "train_step", error=CustomFailure,
                 hang_error=CustomHang)


def test_fail_fast_raises_at_the_first_failure_without_waiting_for_the_rest(nappers):
    bad, stuck, _ = nappers
    start = time.monotonic()
    with pytest.raises(CustomFailure) as caught:
        wait_all({"rank 0": bad.fail.remote(), "rank 1": stuck.nap.remote(3600)}, 300.0, "all-reduce",
                 error=CustomFailure, fail_fast=True)
    assert time.monotonic() - start < 30  # nowhere near the 300 s deadline
    message = str(caught.value)
    assert "rank 0: all-reduce failed: ValueError: boom" in message
    assert "rank 1" not in message  # its peer is stuck with it, not at fault


def test_without_fail_fast_a_failure_and_a_hang_are_both_named(nappers):
    bad, stuck, _ = nappers
    with pytest.raises(CustomFailure) as caught:  # not only a hang: the failure type
        wait_all({"rank 0": bad.fail.remote(), "rank 1": stuck.nap.remote(3600)}, 2.0, "all-reduce",
                 error=CustomFailure, hang_error=CustomHang)
    message = str(caught.value)
    assert "rank 0: all-reduce failed: ValueError: boom" in message
    assert "rank 1: no answer within 2.0 s during all-reduce" in message


def test_a_dead_actor_is_named_as_dead(nappers):
    victim = nappers[2]
    ref = victim.nap.remote(3600)
    ray.kill(victim)
    with pytest.raises(RuntimeError, match="receiver 2: actor died during weight sync"):
        wait_all({"receiver 2": ref}, 60.0, "weight sync")


def test_alive_is_false_within_its_timeout_for_a_wedged_actor(nappers):
    wedged = nappers[1]
    wedged.nap.remote(3600)  # its only thread is busy: a ping queues behind the nap
    start = time.monotonic()
    assert alive(nappers[0], timeout_s=30) is True
    assert alive(wedged, timeout_s=1.0) is False
    assert time.monotonic() - start < 15


class _PoolOf(EnvWorkerPool):
    """The pool's bookkeeping around given worker handles (no EnvWorker actors are built)."""

    def __init__(self, workers: list) -> None:
        self.workers, self.jobs, self.router, self.replaced_workers, self.rerun_groups = workers, {}, None, 0, 0
        self.retiring, self.starting = [], {}


def test_pool_set_router_names_the_env_worker_that_does_not_answer(ray_local):
    wedged = WedgedEnvWorker.remote()
    try:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=r"env worker 0 did not answer set_router within 2 s"):
            _PoolOf([wedged]).set_router(router=None, timeout_s=2.0)
        assert time.monotonic() - start < 15
    finally:
        ray.kill(wedged)
