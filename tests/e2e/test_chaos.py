"""Chaos: one small run during which a seeded schedule kills an env worker, a generation worker and
a trainer rank at random moments. The run must finish, account for every trajectory exactly, and
after every step serve the policy version it just trained."""

from __future__ import annotations

import logging
import random
import threading
import time

import pytest
import ray

from cluster.ray_cluster import connect
from configs.loading import load_config
from launch import components as C
from launch.run import TrainingRun
from tests.e2e.test_fault_tolerance import TINY

SEED = 18
CHAOS = TINY + ["generation.num_workers=2", "grpo.num_steps=8", "checkpoint.every_steps=2",
                "logging.wandb_mode=disabled"]


class ChaosMonkey:
    """Kills one actor of each kind during GRPO: after the n-th step report (n seeded, 1-6, one
    kind per n), a seeded 0.5-4 s later, whatever the run is doing then (generating, training,
    syncing weights, saving a checkpoint, restoring the trainer)."""

    def __init__(self, run: TrainingRun, seed: int):
        rng = random.Random(seed)
        self.run = run
        self.schedule = {n: (kind, rng.uniform(0.5, 4.0), rng.random())
                         for n, kind in zip(rng.sample(range(1, 7), 3), ["env", "gen", "trainer"])}
        self.reports = 0
        self.kills: list[tuple[str, int, int]] = []  # (kind, index, policy version then)
        self.timers: list[threading.Timer] = []

    def on_step(self, report) -> None:
        self.reports += 1
        if self.reports in self.schedule:
            kind, delay, pick = self.schedule[self.reports]
            self.timers.append(threading.Timer(delay, self._kill, (kind, pick)))
            self.timers[-1].start()

    def _kill(self, kind: str, pick: float) -> None:
        run = self.run
        victims = {"env": run.pool.workers, "gen": run.fleet.workers, "trainer": run.trainer.ranks}[kind]
        index = int(pick * len(victims))
        ray.kill(victims[index], no_restart=True)
        self.kills.append((kind, index, run.version))


class ServedVersions:
    """After every step, what each live generation worker serves (a dead one, killed a moment ago,
    is replaced at the next sync: it is recorded as None)."""

    def __init__(self, run: TrainingRun):
        self.run = run
        self.rows: list[tuple[int, list[int | None]]] = []
        self.metrics: list[dict] = []

    def on_step(self, report) -> None:
        served = []
        for worker in self.run.fleet.workers:
            try:
                served.append(ray.get(worker.policy_version.remote(), timeout=60))
            except ray.exceptions.RayActorError:
                served.append(None)
        self.rows.append((report.trained_version + 1, served))
        self.metrics.append(dict(report.metrics))
        self.env_workers_replaced = self.run.pool.replaced_workers


@pytest.fixture(scope="module")
def cluster():
    cfg = load_config(None, CHAOS)
    connect(None, C.cpus_requested(cfg) + 1)
    yield
    ray.shutdown()


def test_a_run_survives_killed_env_generation_and_trainer_actors(cluster, tmp_path):
    t0 = time.monotonic()
    run = TrainingRun(load_config(None, CHAOS + [f"logging.runs_root={tmp_path}", "run_name=chaos"]))
    monkey, served = ChaosMonkey(run, SEED), ServedVersions(run)
    run.observers += [monkey, served]
    summary = run.execute()
    assert "eval_grpo/pass@1" in summary
    assert sorted(kind for kind, _, _ in monkey.kills) == ["env", "gen", "trainer"], monkey.kills

    last = served.metrics[-1]
    # The trainer was restored from a checkpoint at least once, and the run still ended at the
    # last step with every trajectory trained on or dropped with a reason, none in flight.
    assert last["fault/trainer_restarts"] >= 1
    assert last["policy_version"] == 8
    dropped = sum(v for k, v in last.items() if k.startswith("accounting/dropped/"))
    assert last["accounting/produced"] == last["accounting/trained"] + dropped + last["accounting/buffered"]
    assert last["accounting/in_flight"] == 0
    assert sum(m["fault/generation_workers_replaced"] for m in served.metrics) >= 1
    assert served.env_workers_replaced >= 1
    # Every live engine serves exactly the version the step just trained.
    assert all(v == want for want, row in served.rows for v in row if v is not None), served.rows
    assert sum(v is not None for _, row in served.rows for v in row) >= 2 * len(served.rows) - 2
    logging.getLogger(__name__).info("chaos run: %.0f s, kills %s", time.monotonic() - t0, monkey.kills)
