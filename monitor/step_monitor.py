"""The training flow's per-step observer: metrics, sample transcripts and health alarms.

A `rollout.pipeline.StepObserver`, so the GRPO pipeline needs to know about none of it: it computes
the rollout metrics of the batch as drawn, adds derived timing and health counters, writes the step to metrics.jsonl / W&B, logs sample
trajectories every `sample_every` steps, and turns health alarms into console warnings, W&B alerts
and `alarms.jsonl` rows. An alarm configured to stop the run raises `HealthStop` *after* the step
is logged, so the metrics that tripped it are on disk for the report.
"""

from __future__ import annotations

import logging

from monitor.health import HealthMonitor, HealthStop
from monitor.rollout_metrics import rollout_metrics, step_timing_metrics
from monitor.run_logger import RunLogger, append_jsonl
from monitor.samples import SAMPLE_COLUMNS, SampleRecorder, trajectory_sample
from rollout.pipeline import StepReport

logger = logging.getLogger(__name__)

ALARMS_FILE = "alarms.jsonl"
SAMPLES_FILE = "samples.jsonl"


class StepMonitor:
    def __init__(self, run_log: RunLogger, health: HealthMonitor | None = None,
                 recorder: SampleRecorder | None = None):
        self.run_log, self.health, self.recorder = run_log, health, recorder
        self.alarms_raised = 0

    def on_step(self, report: StepReport) -> None:
        step = report.step
        drawn = [t for g in report.drawn for t in g]
        # Rollout metrics describe the policy on the tasks as drawn, before any filtering.
        metrics = {**rollout_metrics(drawn, current_version=report.trained_version), **report.metrics}
        metrics.update(step_timing_metrics(metrics))
        alarms = self.health.check(metrics, step) if self.health is not None else []
        if self.health is not None:
            metrics.update(self.health.metrics())
            metrics["health/alarms"] = float(len(alarms))
        self.run_log.log(metrics, step)
        samples = self.recorder.pick(step, report.drawn) if self.recorder is not None else []
        if samples:
            self.run_log.log_table("samples/trajectories", SAMPLE_COLUMNS,
                                   [trajectory_sample(t, step) for t in samples], step=step,
                                   jsonl_name=SAMPLES_FILE)
        for alarm in alarms:
            self.alarms_raised += 1
            self.run_log.alert(alarm.title, f"step {alarm.step}: {alarm.message}")
            append_jsonl(self.run_log.run_dir / ALARMS_FILE, [alarm.to_dict()])
        stops = [a for a in alarms if a.stop]
        if stops:
            raise HealthStop(stops)
