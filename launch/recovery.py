"""Trainer restarts: a run that loses a trainer rank restores the trainer and goes on.

DeepSpeed ranks are one process group: when one dies the others cannot continue, so the whole group
is rebuilt from the last committed checkpoint (or, before the first one, from the initial policy at
version 0). The engines are then synced with the restored weights at the restored version (older
than what they serve, so they are told to accept it), per-step log rows after it are removed, and
the pipeline rewinds to that version (rollout/pipeline.py). After `trainer.max_restarts` restores
the next loss stops the run with the rank and the cause.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from launch import components as C
from launch.run_state import CHECKPOINT_DIR, committed_run_state, rewind_run_files
from trainers.group import TrainerRankLost

if TYPE_CHECKING:
    from launch.run import TrainingRun

logger = logging.getLogger(__name__)


class TrainerRestartsExhausted(RuntimeError):
    """A trainer rank died once more than `trainer.max_restarts` allows."""


class CheckpointRecovery:
    """The pipeline's `TrainerRecovery` for a `TrainingRun`."""

    def __init__(self, run: TrainingRun):
        self.run = run
        self.restarts = 0

    def restore(self, lost: TrainerRankLost) -> int:
        run, limit = self.run, self.run.cfg.trainer.max_restarts
        if self.restarts >= limit:
            raise TrainerRestartsExhausted(
                f"trainer rank {lost.rank} died and the trainer was already restored {self.restarts} time(s) "
                f"(trainer.max_restarts={limit}); cause: {lost.cause}") from lost
        self.restarts += 1
        state = committed_run_state(run.run_dir)
        version = state.policy_version if state else 0
        logger.warning("trainer rank %d died (%s); restoring the trainer at policy v%d from %s (restart %d of %d)",
                       lost.rank, lost.cause.splitlines()[0], version,
                       f"checkpoint {state.trainer_tag}" if state else "the initial policy", self.restarts, limit)
        run.trainer.shutdown()
        run.trainer = C.make_trainer(run.cfg, run.policy_dir, placement=run.placement)
        if state is not None:
            run.trainer.load_checkpoint(str(run.run_dir / CHECKPOINT_DIR), state.trainer_tag)
        run.trainer_step.trainer = run.publisher.trainer = run.trainer
        run.publisher.sync(version, restored=True)
        rewind_run_files(run.run_dir, version)
        run.version = version
        return version
