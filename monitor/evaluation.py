"""Held-out evaluation of the served policy: pass@1 with a task-level 95% interval, pass@k, maj@k
and the rollout metrics. The one path behind the training run's evaluations after SFT and after
GRPO and behind `labrl eval`."""

from __future__ import annotations

import logging

from envs.dataset import Task
from monitor.eval_stats import TaskEval, heldout_metrics
from monitor.rollout_metrics import mean_interval, rollout_metrics
from rollout.play import run_tasks
from rollout.pipeline import StepReport
from rollout.pool import EnvWorkerPool
from rollout.trajectory import Trajectory

logger = logging.getLogger(__name__)


def evaluate(pool: EnvWorkerPool, tasks: list[Task], prefix: str, samples_per_task: int = 1,
             progress: bool = True) -> tuple[dict[str, float], list[TaskEval]]:
    """Metrics under `<prefix>/` and the per-task results in task order (for paired comparisons
    of the same tasks before and after training)."""
    trajs = run_tasks(pool, tasks, samples_per_task, desc=prefix, progress=progress)
    return summarize(trajs, prefix, samples_per_task)


class NothingMeasured(RuntimeError):
    """Every episode of an evaluation failed before the policy could be judged."""


def summarize(trajs: list[Trajectory], prefix: str, samples_per_task: int) -> tuple[dict[str, float], list[TaskEval]]:
    """The metrics of `evaluate` from episodes already played (in task order).

    Raises `NothingMeasured` when every episode failed (finish_reason "error": a dead engine, an
    environment that cannot start): a pass rate of 0 would read as a measurement of the policy."""
    if trajs and all(t.finish_reason == "error" for t in trajs):
        raise NothingMeasured(f"held-out {prefix}: all {len(trajs)} episodes failed before the policy could be "
                              "judged (finish_reason=error; the env workers' 'episode ... failed' warnings name "
                              "the cause, e.g. a generation engine that died): nothing was measured")
    metrics, per_task = heldout_metrics(trajs, samples_per_task, prefix=prefix)
    metrics.update(rollout_metrics(trajs, prefix=prefix))
    metrics.update(difficulty_breakdown(per_task, prefix))
    # A masked episode (the verifier could not judge it) scores 0 here; the same rows are masked in
    # every evaluation of a run, so paired before/after comparisons stay fair. Its count is logged.
    metrics[f"{prefix}/masked"] = float(sum(t.masked for t in trajs))
    logger.info("held-out %s: pass@1 %.3f +- %.3f, pass@%d %.3f, maj@%d %.3f (%d tasks x %d samples)", prefix,
                metrics[f"{prefix}/pass@1"], metrics[f"{prefix}/ci95"], samples_per_task,
                metrics[f"{prefix}/pass@{samples_per_task}"], samples_per_task,
                metrics[f"{prefix}/maj@{samples_per_task}"], len(per_task), samples_per_task)
    return metrics, per_task


def difficulty_breakdown(per_task: list[TaskEval], prefix: str) -> dict[str, float]:
    """pass@1 and its task-level 95% interval per difficulty (`<prefix>/difficulty/<d>/...`):
    a curriculum's hard tasks can move while the average hides it."""
    out: dict[str, float] = {}
    for difficulty in sorted({t.difficulty for t in per_task}):
        rates = [t.pass_at_1 for t in per_task if t.difficulty == difficulty]
        mean, half = mean_interval(rates)
        out.update({f"{prefix}/difficulty/{difficulty}/pass@1": mean, f"{prefix}/difficulty/{difficulty}/ci95": half,
                    f"{prefix}/difficulty/{difficulty}/num_tasks": float(len(rates))})
    return out


CURVE_PREFIX = "eval"


class HeldoutCurve:
    """A `StepObserver`: held-out success during GRPO, on the same `tasks` every time, every
    `every_steps` steps, logged under `eval/` at the step just trained with `eval/updates` (the
    optimizer steps behind it: the x axis of the curve). Its first and last points come from the
    run's own evaluations after SFT and after GRPO (`log_point` on their episodes of these tasks,
    a subset of theirs): the same policy is not sampled twice.

    It runs between steps while the next batch's groups are in flight (the pool collects only its
    own episodes), so the engines serve the version the step just published."""

    def __init__(self, pool: EnvWorkerPool, tasks: list[Task], every_steps: int, num_steps: int,
                 samples_per_task: int, run_log, progress: bool = False):
        self.pool, self.tasks, self.every, self.num_steps = pool, tasks, every_steps, num_steps
        self.samples, self.run_log, self.progress = samples_per_task, run_log, progress
        self.task_ids = {t.id for t in tasks}

    def point(self, step: int, updates: int) -> dict[str, float]:
        """Play the curve's tasks on the served policy and log the point."""
        trajs = run_tasks(self.pool, self.tasks, self.samples, desc=CURVE_PREFIX, progress=self.progress)
        return self.log_point(trajs, step, updates)

    def log_point(self, trajs: list[Trajectory], step: int, updates: int) -> dict[str, float]:
        """Log the point of `updates` from episodes played on it (those of other tasks are ignored)."""
        metrics, _ = summarize([t for t in trajs if t.task_id in self.task_ids], CURVE_PREFIX, self.samples)
        metrics[f"{CURVE_PREFIX}/updates"] = float(updates)
        self.run_log.log(metrics, step)
        return metrics

    def on_step(self, report: StepReport) -> None:
        done = report.step + 1
        if done % self.every == 0 and done < self.num_steps:  # the last point is the final evaluation's
            self.point(report.step, report.trained_version + 1)
