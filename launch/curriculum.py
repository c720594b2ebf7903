"""Training task selection from a reward profile: drop no-signal tasks, optionally order by difficulty.

GRPO learns only from groups whose rewards differ. A profile (`labrl profile`) tells which tasks
the policy always solves or always fails; `select_tasks` removes those (saving the rollouts they
would waste) and can order the rest easy-first or hard-first by profiled pass rate. The order only
survives into training through `CurriculumStream`, which walks the list in order instead of the
seeded shuffle `TaskStream` does. Tasks missing from the profile are kept (no evidence against
them) and placed after profiled ones.
"""

from __future__ import annotations

import logging
from typing import Literal

from pathlib import Path

from envs.dataset import Task
from configs.schema import LabrlConfig
from monitor.profiling import TaskProfile, profile_tasks, read_profiles, summarize, summary_table, write_profiles
from monitor.run_logger import RunLogger
from monitor.text_table import format_table
from rollout.pipeline import TaskStream
from rollout.play import run_tasks
from rollout.pool import EnvWorkerPool

logger = logging.getLogger(__name__)

Order = Literal["shuffle", "easy_first", "hard_first"]


def select_tasks(tasks: list[Task], profiles: list[TaskProfile], order: Order = "shuffle",
                 drop_zero_variance: bool = True) -> list[Task]:
    """Tasks kept for training, in curriculum order (input order for "shuffle")."""
    by_id = {p.task_id: p for p in profiles}
    if profiles and all(p.n < 2 for p in profiles):
        logger.warning("reward profile has one sample per task: variance is unknown, no task dropped")
    dropped = {t.id for t in tasks if drop_zero_variance and t.id in by_id and by_id[t.id].zero_variance}
    kept = [t for t in tasks if t.id not in dropped]
    unprofiled = sum(t.id not in by_id for t in tasks)
    logger.info("task profile: kept %d/%d training tasks (dropped %d zero-variance, %d not profiled)",
                len(kept), len(tasks), len(dropped), unprofiled)
    if not kept:
        raise ValueError("the reward profile leaves no training task with reward variance; profile "
                         "with more samples per task, or train without env.task_filter_profile")
    if order == "shuffle":
        return kept
    sign = -1.0 if order == "easy_first" else 1.0
    profiled = sorted((t for t in kept if t.id in by_id), key=lambda t: sign * by_id[t.id].pass_at_1)
    return profiled + [t for t in kept if t.id not in by_id]


class CurriculumStream(TaskStream):
    """A `TaskStream` that serves tasks in the given order (repeating it each epoch), no shuffle."""

    def next(self) -> Task:
        task = self.tasks[self.position % len(self.tasks)]
        self.position += 1
        return task


def training_stream(tasks: list[Task], cfg: LabrlConfig, profiles: list[TaskProfile] | None = None) -> TaskStream:
    """The training task stream the config asks for (plain seeded shuffle without a profile).
    `profiles`: the run's own profile of its start policy (env.profile_train_tasks); without it,
    env.task_filter_profile's file, if any."""
    if profiles is None and cfg.env.task_filter_profile is not None:
        profiles = read_profiles(cfg.env.task_filter_profile)
    if profiles is None:
        return TaskStream(tasks, cfg.seed)
    selected = select_tasks(tasks, profiles, cfg.env.curriculum)
    if cfg.env.curriculum == "shuffle":
        return TaskStream(selected, cfg.seed)
    return CurriculumStream(selected, cfg.seed)


def profile_start_policy(pool: EnvWorkerPool, tasks: list[Task], samples: int, path: Path,
                         run_log: RunLogger, progress: bool = True) -> list[TaskProfile]:
    """Reward profile of the policy the pool's engines serve now, on `tasks` (`samples` each):
    written to `path` (a resumed run reads it back instead of profiling a trained policy), logged
    under `profile/` and as a per-difficulty table."""
    trajs = run_tasks(pool, tasks, samples_per_task=samples, desc="profile", progress=progress)
    profiles = profile_tasks(trajs, samples)
    write_profiles(path, profiles)
    run_log.log(summarize(profiles), step=0)
    logger.info("start-policy reward profile (%d training tasks x %d samples), written to %s:\n%s",
                len(tasks), samples, path, format_table(summary_table(profiles)))
    return profiles
