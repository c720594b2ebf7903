"""The training flow's per-step log function: metrics, sample transcripts and health alarms.

One callable (`StepMonitor(metrics, step)`) so the GRPO pipeline needs to know about none of it:
it adds derived timing and health counters, writes the step to metrics.jsonl / W&B, logs sample
trajectories every `sample_every` steps, and turns health alarms into console warnings, W&B alerts
and `alarms.jsonl` rows. An alarm configured to stop the run raises `HealthStop` *after* the step
is logged, so the metrics that tripped it are on disk for the report.
"""

from __future__ import annotations

import logging

from monitor.health import HealthMonitor, HealthStop
from monitor.rollout_metrics import step_timing_metrics
from monitor.run_logger import RunLogger, append_jsonl
from monitor.samples import SAMPLE_COLUMNS, SampleRecorder, trajectory_sample

logger = logging.getLogger(__name__)

ALARMS_FILE = "alarms.jsonl"
SAMPLES_FILE = "samples.jsonl"


class StepMonitor:
    def __init__(self, run_log: RunLogger, health: HealthMonitor | None = None,
                 recorder: SampleRecorder | None = None):
        self.run_log, self.health, self.recorder = run_log, health, recorder
        self.alarms_raised = 0

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        metrics = {**metrics, **step_timing_metrics(metrics)}
        alarms = self.health.check(metrics, step) if self.health is not None else []
        if self.health is not None:
            metrics.update(self.health.metrics())
            metrics["health/alarms"] = float(len(alarms))
        self.run_log.log(metrics, step)
        if self.recorder is not None:
            trajs = self.recorder.pop(step)
            if trajs:
                self.run_log.log_table("samples/trajectories", SAMPLE_COLUMNS,
                                       [trajectory_sample(t, step) for t in trajs], step=step,
                                       jsonl_name=SAMPLES_FILE)
        for alarm in alarms:
            self.alarms_raised += 1
            self.run_log.alert(alarm.title, f"step {alarm.step}: {alarm.message}")
            append_jsonl(self.run_log.run_dir / ALARMS_FILE, [alarm.to_dict()])
        stops = [a for a in alarms if a.stop]
        if stops:
            raise HealthStop(stops)
