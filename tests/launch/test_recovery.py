"""Trainer restarts are bounded: past `trainer.max_restarts` the run stops with the rank and cause."""

from types import SimpleNamespace

import pytest

from configs.loading import load_config
from launch.recovery import CheckpointRecovery, TrainerRestartsExhausted
from trainers.group import TrainerRankLost


def test_past_max_restarts_the_run_stops_naming_the_rank_and_the_cause(tmp_path):
    run = SimpleNamespace(cfg=load_config(None, ["trainer.max_restarts=0"]), run_dir=tmp_path)
    recovery = CheckpointRecovery(run)
    lost = TrainerRankLost(1, "train_step: ActorDiedError: the actor died unexpectedly")
    with pytest.raises(TrainerRestartsExhausted) as err:
        recovery.restore(lost)
    assert "trainer rank 1 died" in str(err.value) and "trainer.max_restarts=0" in str(err.value)
    assert "ActorDiedError" in str(err.value)
    assert err.value.__cause__ is lost
