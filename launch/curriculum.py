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

from envs.dataset import Task
from configs.schema import LabrlConfig
from monitor.profiling import TaskProfile, read_profiles
from rollout.pipeline import TaskStream

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


def training_stream(tasks: list[Task], cfg: LabrlConfig) -> TaskStream:
    """The training task stream the config asks for (plain seeded shuffle without a profile)."""
    if cfg.env.task_filter_profile is None:
        return TaskStream(tasks, cfg.seed)
    selected = select_tasks(tasks, read_profiles(cfg.env.task_filter_profile), cfg.env.curriculum)
    if cfg.env.curriculum == "shuffle":
        return TaskStream(selected, cfg.seed)
    return CurriculumStream(selected, cfg.seed)
