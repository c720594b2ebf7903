"""Elastic rollout capacity during a run: engines and env workers added or retired between steps.

Requests come from two places and go through one path (`ElasticController._apply`):

- by hand: `labrl scale-run RUN_DIR --engines +1 --env-workers -2` writes a request file into
  `RUN_DIR/scale_requests/`; the run picks it up after its current step (a file, not an RPC: it
  works wherever the run directory is visible, e.g. `ray job submit -- labrl scale-run ...` runs
  on the head node beside a submitted run's driver, and a request sent while the run is busy waits);
- automatically: `rollout.autoscale` (`launch/autoscale.py` decides from the pipeline's timers).

Every change is appended to `RUN_DIR/scale_events.jsonl` with its source, reason and outcome,
logged at INFO, and the sizes go into every step's metrics (`elastic/*`, charted in capacity.png).
The fleet and the pool do the work (`launch/fleet.py`, `rollout/pool.py`): new engines join at a
weight sync, retired ones drain; accounting is untouched (no group is dropped or re-run by a change).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import fmean

from configs.schema import RolloutConfig
from launch.autoscale import AutoscalePolicy, StepSignals
from launch.fleet import EngineFleet
from launch.run_state import write_atomic
from monitor.plots import SCALE_EVENTS_FILE as EVENTS_FILE
from monitor.run_logger import append_jsonl, read_jsonl
from rollout.pipeline import StepReport
from rollout.pool import EnvWorkerPool

logger = logging.getLogger(__name__)

REQUESTS_DIR = "scale_requests"


@dataclass(frozen=True)
class ScaleRequest:
    """A change of capacity: deltas of engines and env workers (+n add, -n retire)."""

    engines: int = 0
    env_workers: int = 0
    reason: str = ""
    source: str = "cli"  # "cli" | "autoscale"
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __post_init__(self) -> None:
        if not (self.engines or self.env_workers):
            raise ValueError("a scale request changes nothing: give --engines and/or --env-workers (e.g. +1, -2)")


def submit_request(run_dir: Path, request: ScaleRequest) -> Path:
    """Queue `request` for the run in `run_dir` (atomically: the run never reads half a file)."""
    folder = Path(run_dir) / REQUESTS_DIR
    folder.mkdir(exist_ok=True)
    path = folder / f"{time.time_ns()}-{request.id}.json"
    write_atomic(path, json.dumps(asdict(request)))
    return path


def take_requests(run_dir: Path) -> list[ScaleRequest]:
    """The queued requests in the order they were sent; each file is removed once read. A file
    that is not a valid request is logged and moved aside (`*.rejected`), never retried."""
    folder = Path(run_dir) / REQUESTS_DIR
    requests = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            requests.append(ScaleRequest(**json.loads(path.read_text())))
            path.unlink()
        except (ValueError, TypeError) as err:
            logger.error("scale request %s is not valid (%s); moved aside", path.name, err)
            path.rename(path.with_suffix(".rejected"))
    return requests


def read_events(run_dir: Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / EVENTS_FILE)


class ElasticController:
    """A `StepObserver`: after each step, applies queued requests and the autoscale decision, and
    records the sizes in the step's metrics. Runs before the metrics logger (its numbers land in
    the same row)."""

    def __init__(self, run_dir: Path, rollout: RolloutConfig, fleet: EngineFleet, pool: EnvWorkerPool):
        self.run_dir, self.fleet, self.pool = Path(run_dir), fleet, pool
        self.policy = AutoscalePolicy(rollout.autoscale) if rollout.autoscale.enabled else None

    def on_step(self, report: StepReport) -> None:
        for request in take_requests(self.run_dir):
            self._apply(request, report.step)
        if self.policy is not None and self._settling():
            # Members still starting or draining: this step measured neither layout. The cool-down
            # restarts, so the next decision is measured on the layout they leave behind.
            self.policy.applied(report.step)
        elif self.policy is not None:
            signals = StepSignals.from_metrics(report.step, {**report.metrics, **_episode_times(report)})
            # Sizes include members still starting: a pending addition is not asked for twice.
            decision = self.policy.decide(signals, self.fleet.size, self.pool.size)
            if decision is not None:
                self._apply(ScaleRequest(decision.engines, decision.env_workers, decision.reason, "autoscale"),
                            report.step)
        report.metrics.update(self.sizes())

    def _settling(self) -> bool:
        fleet, pool = self.fleet, self.pool
        return bool(fleet.joining or fleet.retiring or pool.starting or pool.retiring)

    def sizes(self) -> dict[str, float]:
        fleet, pool = self.fleet, self.pool
        return {"elastic/engines": float(len(fleet.workers)), "elastic/engines_starting": float(len(fleet.joining)),
                "elastic/engines_draining": float(len(fleet.retiring)),
                "elastic/env_workers": float(len(pool.workers)), "elastic/env_workers_starting": float(len(pool.starting)),
                "elastic/env_workers_draining": float(len(pool.retiring))}

    def _apply(self, request: ScaleRequest, step: int) -> None:
        outcome = []
        try:
            outcome += self._engines(request.engines)
            outcome += self._env_workers(request.env_workers)
        except ValueError as err:  # e.g. engines of a colocated layout cannot change
            outcome.append(f"refused: {err}")
        event = {**asdict(request), "step": step, "time": time.time(), "outcome": "; ".join(outcome),
                 "engines_after": self.fleet.size, "env_workers_after": self.pool.size}
        append_jsonl(self.run_dir / EVENTS_FILE, [event])
        logger.info("scale (%s, after step %d): engines %+d, env workers %+d -> %s [%s]", request.source, step,
                    request.engines, request.env_workers, event["outcome"], request.reason or "no reason given")
        if self.policy is not None:
            self.policy.applied(step)

    def _engines(self, delta: int) -> list[str]:
        if delta > 0:
            self.fleet.add(delta)
            return [f"engines +{delta} starting (they join at the next weight sync)"]
        if delta < 0:
            retired = self.fleet.retire(-delta)
            if retired:  # no new request reaches them from here on; running ones finish
                self.pool.set_router(self.fleet.router())
            kept = "" if retired == -delta else " (the last engine is never retired)"
            return [f"engines -{retired} draining{kept}"]
        return []

    def _env_workers(self, delta: int) -> list[str]:
        if delta > 0:
            self.pool.add_workers(delta)
            return [f"env workers +{delta} starting"]
        if delta < 0:
            retired = self.pool.retire_workers(-delta)
            kept = "" if retired == -delta else " (the last env worker is never retired)"
            return [f"env workers -{retired} finishing their groups{kept}"]
        return []


def _episode_times(report: StepReport) -> dict[str, float]:
    """The batch's mean generation and env time per episode (the policy's env-vs-generation split)."""
    trajs = [t for g in report.drawn for t in g]
    if not trajs:
        return {}
    return {"rollout/generation_s_mean": fmean(t.generation_s for t in trajs),
            "rollout/env_s_mean": fmean(t.env_s for t in trajs)}
