"""The training flow's wiring without Ray: GRPOPipeline -> TappedPool -> StepMonitor -> HealthStop.

A fake env pool answers every submitted group at once; the fake trainer returns NaN losses, so
the health monitor must stop the run after K steps, with every step and the samples on disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from envs.dataset import Task
from configs.schema import MonitorConfig
from monitor.health import HealthMonitor, HealthStop
from monitor.run_logger import RunLogger, read_jsonl
from monitor.samples import SampleRecorder, TappedPool
from monitor.step_monitor import StepMonitor
from rollout.pipeline import GRPOPipeline, PipelineSettings, TaskStream
from tests.monitor.synthetic import traj


@dataclass
class Job:
    task: Task
    group_size: int
    tags: dict = field(default_factory=dict)


class InstantPool:
    def __init__(self):
        self.jobs: dict[int, Job] = {}

    def submit(self, task, group_size, group_id, solver="policy", **tags):
        self.jobs[len(self.jobs) + 1000 * tags.get("batch_index", 0)] = Job(task, group_size, tags)

    def collect(self, timeout_s, num_returns=1):
        key = next(iter(self.jobs))
        job = self.jobs.pop(key)
        rewards = [float(i % 2) for i in range(job.group_size)]
        return [(job, [traj(r, task_id=job.task.id) for r in rewards])]


def test_nan_losses_stop_the_pipeline_after_k_steps(tmp_path):
    tasks = [Task(id=f"t{i}", env_name="stoich", split="train", difficulty=1, seed=i) for i in range(5)]
    run_log = RunLogger(tmp_path, {}, "p", "disabled", "n")
    recorder = SampleRecorder(every=1, num=2)
    monitor = StepMonitor(run_log, HealthMonitor(MonitorConfig(nonfinite_loss_max_consecutive=2)), recorder)
    pipeline = GRPOPipeline(PipelineSettings(num_steps=10, batch_size=4, group_size=2, max_staleness=1),
                            TappedPool(InstantPool(), recorder), TaskStream(tasks, 0),
                            train_fn=lambda samples: {"train/loss": math.nan, "train/entropy": 1.0},
                            sync_fn=lambda version: {"sync/time_s": 0.0}, log_fn=monitor)
    with pytest.raises(HealthStop):
        pipeline.run()
    run_log.finish()
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1]
    assert "timing/idle_frac" in rows[0] and rows[1]["health/nonfinite_loss_consecutive"] == 2
    assert [s["step"] for s in read_jsonl(tmp_path / "samples.jsonl")] == [0, 0, 1, 1]
    assert [a["stop"] for a in read_jsonl(tmp_path / "alarms.jsonl")] == [False, True]
