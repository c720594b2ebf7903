"""The training flow's wiring without Ray: GRPOPipeline -> StepMonitor (observer) -> HealthStop.

A scripted env pool answers every submitted group at once; the fake trainer returns NaN losses, so
the health monitor must stop the run after K steps, with every step and the samples on disk.
"""

from __future__ import annotations

import math

import pytest

from configs.schema import GRPOConfig, MonitorConfig
from monitor.health import HealthMonitor, HealthStop
from monitor.run_logger import RunLogger, read_jsonl
from monitor.samples import SampleRecorder
from monitor.step_monitor import StepMonitor
from rollout.pipeline import GRPOPipeline, TaskStream
from tests.monitor.synthetic import traj
from tests.rollout.pipeline_fakes import NullPublisher, RecordingTrainer, ScriptedPool, tasks


def play(job):
    return [traj(float(i % 2), task_id=job.task.id) for i in range(job.group_size)]


def test_nan_losses_stop_the_pipeline_after_k_steps(tmp_path):
    run_log = RunLogger(tmp_path, {}, "p", "disabled", "n")
    monitor = StepMonitor(run_log, HealthMonitor(MonitorConfig(nonfinite_loss_max_consecutive=2)),
                          SampleRecorder(every=1, num=2))
    pipeline = GRPOPipeline(GRPOConfig(num_steps=10, batch_size=4, group_size=2), 1, ScriptedPool(play),
                            TaskStream(tasks(5), 0), RecordingTrainer({"train/loss": math.nan, "train/entropy": 1.0}),
                            NullPublisher(), [monitor])
    with pytest.raises(HealthStop):
        pipeline.run()
    run_log.finish()
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1]
    assert "timing/idle_frac" in rows[0] and rows[1]["health/nonfinite_loss_consecutive"] == 2
    # The monitor computes the rollout metrics of the batch as drawn (half the rewards are 1).
    assert rows[0]["rollout/num_trajectories"] == 4 and rows[0]["rollout/reward_mean"] == 0.5
    assert [s["step"] for s in read_jsonl(tmp_path / "samples.jsonl")] == [0, 0, 1, 1]
    assert [a["stop"] for a in read_jsonl(tmp_path / "alarms.jsonl")] == [False, True]
