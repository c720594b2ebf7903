"""The elastic controller's bookkeeping without Ray: request files from `labrl scale-run`, the
autoscale decision, the events log and the sizes in each step's metrics. (Real engines and env
workers joining and leaving a run: tests/cluster/test_elastic_cluster.py.)"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from configs.schema import AutoscaleConfig, RolloutConfig
from launch.elastic import REQUESTS_DIR, ElasticController, ScaleRequest, read_events, submit_request, take_requests
from launch.run_state import CONFIG_FILE
from launch.scale_run import main as scale_run
from rollout.pipeline import StepReport
from tests.monitor.synthetic import traj


class Members:
    """What the controller uses of EngineFleet / EnvWorkerPool: sizes, add, retire."""

    def __init__(self, n: int) -> None:
        self.workers, self.joining, self.retiring, self.starting = list(range(n)), [], [], {}

    @property
    def size(self) -> int:
        return len(self.workers) + len(self.joining) + len(self.starting)

    def add(self, n: int) -> None:
        self.joining += [object()] * n

    def add_workers(self, n: int) -> None:
        self.starting.update({object(): None for _ in range(n)})

    def retire(self, n: int) -> int:
        n = min(n, len(self.workers) - 1)
        self.retiring += self.workers[len(self.workers) - n:]
        del self.workers[len(self.workers) - n:]
        return n

    retire_workers = retire

    def router(self) -> str:
        return "router"

    def set_router(self, router) -> None:
        self.router_set = router


def _report(step: int, wait_s: float, env_s: float, gen_s: float) -> StepReport:
    episode = dataclasses.replace(traj(), env_s=env_s, generation_s=gen_s)
    return StepReport(step, step, [[episode]], ["t0"], {"timing/step_s": 10.0, "timing/wait_rollout_s": wait_s,
                                                     "accounting/in_flight": 4.0})


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    (tmp_path / CONFIG_FILE).write_text("{}")
    return tmp_path


def test_requests_from_scale_run_are_applied_in_order_and_logged(run_dir: Path) -> None:
    fleet, pool = Members(1), Members(1)
    controller = ElasticController(run_dir, RolloutConfig(), fleet, pool)
    assert scale_run([str(run_dir), "--engines", "+2", "--env-workers", "+3", "--reason", "more"]) == 0
    assert scale_run([str(run_dir), "--engines", "-5"]) == 0
    report = _report(3, 1.0, 1.0, 1.0)
    controller.on_step(report)
    events = read_events(run_dir)
    assert [(e["step"], e["engines"], e["env_workers"], e["source"], e["reason"]) for e in events] == [
        (3, 2, 3, "cli", "more"), (3, -5, 0, "cli", "requested with labrl scale-run")]
    # -5 of 1 serving + 2 starting: only serving engines are retired, and never the last one.
    assert events[1]["outcome"] == "engines -0 draining (the last engine is never retired)"
    assert report.metrics["elastic/engines"] == 1 and report.metrics["elastic/engines_starting"] == 2
    assert report.metrics["elastic/env_workers_starting"] == 3
    assert list((run_dir / REQUESTS_DIR).glob("*.json")) == []  # consumed


def test_autoscale_adds_env_workers_when_tools_dominate_and_says_why(run_dir: Path) -> None:
    rollout = RolloutConfig(autoscale=AutoscaleConfig(enabled=True, window_steps=1, max_env_workers=3))
    fleet, pool = Members(1), Members(1)
    controller = ElasticController(run_dir, rollout, fleet, pool)
    controller.on_step(_report(0, wait_s=6.0, env_s=8.0, gen_s=2.0))
    [event] = read_events(run_dir)
    assert (event["source"], event["engines"], event["env_workers"]) == ("autoscale", 0, 1)
    assert "trainer waited 60% of the step" in event["reason"] and "env time is 80%" in event["reason"]
    assert pool.size == 2 and fleet.size == 1
    # While the new worker starts, steps measure no layout: no decision, and the cool-down (2
    # steps) counts from the last such step.
    controller.on_step(_report(1, wait_s=6.0, env_s=8.0, gen_s=2.0))
    pool.workers.append(pool.starting.popitem()[0])  # joined
    for step in (2, 3, 4):
        controller.on_step(_report(step, wait_s=6.0, env_s=8.0, gen_s=2.0))
    assert [e["step"] for e in read_events(run_dir)] == [0, 4]


def test_bad_requests_are_refused_with_the_reason(run_dir: Path, tmp_path_factory, caplog) -> None:
    assert scale_run([str(run_dir)]) == 2 and "changes nothing" in caplog.text
    assert scale_run([str(tmp_path_factory.mktemp("empty")), "--engines", "1"]) == 2
    assert "is not a run directory" in caplog.text
    (run_dir / "summary.json").write_text("{}")
    assert scale_run([str(run_dir), "--engines", "1"]) == 2 and "has finished" in caplog.text


def test_a_malformed_request_file_is_moved_aside_not_retried(run_dir: Path) -> None:
    submit_request(run_dir, ScaleRequest(engines=1))
    (run_dir / REQUESTS_DIR / "0-broken.json").write_text(json.dumps({"engines": "many", "color": 3}))
    [request] = take_requests(run_dir)
    assert request.engines == 1
    assert [p.name for p in (run_dir / REQUESTS_DIR).iterdir()] == ["0-broken.rejected"]
    assert take_requests(run_dir) == []


def test_scale_run_wait_reports_a_run_that_does_not_answer(run_dir: Path, caplog) -> None:
    assert scale_run([str(run_dir), "--env-workers", "+1", "--wait", "1.5"]) == 1
    assert "did not apply the request within 2 s" in caplog.text
