"""A trainer rank that dies mid-run: the pipeline asks its recovery for the restored version, drops
what was buffered (counted), re-issues what was in flight, and trains the same batches again."""

from __future__ import annotations

import pytest

from configs.schema import GRPOConfig
from rollout.pipeline import GRPOPipeline, TaskStream
from tests.monitor.synthetic import traj
from tests.rollout.pipeline_fakes import NullPublisher, RecordingTrainer, Reports, ScriptedPool, tasks
from trainers.group import TrainerRankLost

GROUP = 4


def play(job):
    return [traj(float(i % 2), task_id=job.task.id, version=job.tags["batch_index"]) for i in range(GROUP)]


class DiesOnce(RecordingTrainer):
    """Rank 1 dies during the `fail_on`-th train call (0-based)."""

    def __init__(self, fail_on: int):
        super().__init__()
        self.calls, self.fail_on = 0, fail_on

    def train(self, samples):
        self.calls += 1
        if self.calls - 1 == self.fail_on:
            raise TrainerRankLost(1, "train_step: actor died")
        return super().train(samples)


class Recovery:
    def __init__(self, version: int):
        self.version, self.lost = version, []

    def restore(self, lost):
        self.lost.append(lost)
        return self.version


def pipeline(trainer, recovery=None, observers=(), steps=4):
    grpo = GRPOConfig(num_steps=steps, batch_size=2 * GROUP, group_size=GROUP)
    return GRPOPipeline(grpo, 1, ScriptedPool(play), TaskStream(tasks(16), 0), trainer, NullPublisher(),
                        [*observers], recovery=recovery)


def batch_tasks(trainer):
    return [[s.token_ids for s in batch] for batch in trainer.batches]


def test_a_lost_rank_rewinds_to_the_restored_version_and_retrains_the_same_batches():
    straight, straight_reports = RecordingTrainer(), Reports()
    pipeline(straight, observers=[straight_reports]).run()

    trainer, reports, recovery = DiesOnce(fail_on=2), Reports(), Recovery(version=1)
    p = pipeline(trainer, recovery, [reports])
    p.run()

    assert [lost.rank for lost in recovery.lost] == [1]
    # Steps 0 and 1 ran, step 2 died, the run went back to version 1 and ran steps 1..3 again.
    assert [r.step for r in reports.reports] == [0, 1, 1, 2, 3]
    assert [r.trained_task_ids for r in reports.reports[2:]] == [r.trained_task_ids for r in straight_reports.reports[1:]]
    assert p.version == 4
    acc, last = p.buffer.accounting, reports.reports[-1].metrics
    # With staleness 1, batch 2 was being trained (dropped) and batch 3 was submitted, in flight (re-issued).
    assert acc.dropped == {"trainer_restart": 2 * GROUP}
    assert last["fault/trainer_restarts"] == 1 and last["fault/groups_reissued"] == 2
    assert acc.produced == acc.trained + sum(acc.dropped.values()) + p.buffer.num_buffered
    assert last["accounting/produced"] == acc.produced and last["accounting/in_flight"] == 0


def test_a_rank_lost_in_an_observer_checkpoint_is_recovered_too():
    class CheckpointDiesAtStep1:
        def __init__(self):
            self.raised = False

        def on_step(self, report):
            if report.step == 1 and not self.raised:
                self.raised = True
                raise TrainerRankLost(0, "save_checkpoint: actor died")

    reports, recovery = Reports(), Recovery(version=0)
    p = pipeline(RecordingTrainer(), recovery, [CheckpointDiesAtStep1(), reports], steps=3)
    p.run()
    assert [r.step for r in reports.reports] == [0, 0, 1, 2]  # step 1's report never reached it
    assert len(recovery.lost) == 1 and p.version == 3


def test_without_a_recovery_a_lost_rank_ends_the_run():
    with pytest.raises(TrainerRankLost, match="rank 1 died"):
        pipeline(DiesOnce(fail_on=1)).run()
