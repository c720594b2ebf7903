"""Groups the pipeline must not train on are dropped with a reason and counted, never lost:
stale groups (older than `rollout.max_staleness` versions) and groups with a failed episode."""

from __future__ import annotations


from configs.schema import GRPOConfig
from rollout.buffer import RolloutBuffer
from rollout.pipeline import GRPOPipeline, TaskStream
from tests.monitor.synthetic import traj
from tests.rollout.pipeline_fakes import NullPublisher, RecordingTrainer, Reports, ScriptedPool, tasks

GROUP = 4


def group(version: int, task_id: str = "t0", n: int = GROUP):
    return [traj(float(i % 2), task_id=task_id, version=version) for i in range(n)]


def test_buffer_drops_groups_beyond_the_staleness_bound():
    buffer = RolloutBuffer(max_staleness=1)
    buffer.add_group(5, group(version=4, task_id="fresh"))  # one version behind: allowed
    buffer.add_group(5, group(version=3, task_id="stale"))  # two behind: dropped
    mixed = group(version=4, task_id="mixed")
    mixed[0].policy_versions = [3, 4]  # a turn sampled by version 3: the group is as old as its oldest
    buffer.add_group(5, mixed)
    kept = buffer.take(5, current_version=5)
    assert [g[0].task_id for g in kept] == ["fresh"]
    assert buffer.accounting.dropped == {"stale": 2 * GROUP}
    buffer.mark_trained([t for g in kept for t in g])
    buffer.accounting.check(buffer.num_buffered)  # produced 12 = trained 4 + dropped 8 + buffered 0


def run_pipeline(play, max_staleness: int = 0, steps: int = 3):
    trainer, publisher, reports = RecordingTrainer(), NullPublisher(), Reports()
    grpo = GRPOConfig(num_steps=steps, batch_size=2 * GROUP, group_size=GROUP)
    pipeline = GRPOPipeline(grpo, max_staleness, ScriptedPool(play), TaskStream(tasks(12), 0), trainer, publisher,
                            [reports])
    pipeline.run()
    return pipeline, trainer, reports.reports


def second_group(job) -> bool:
    """The second group of every batch (group ids are b<batch>-g<index>-<task>)."""
    return job.group_id.split("-")[1] == "g1"


def test_pipeline_drops_stale_groups_and_keeps_the_books():
    """Batch k is played by version k, except its second group, which arrives from version k - 2."""
    def play(job):
        k = job.tags["batch_index"]
        return group(k - 2 if second_group(job) else k, task_id=job.task.id)

    pipeline, trainer, reports = run_pipeline(play, max_staleness=1)
    acc = pipeline.buffer.accounting
    assert acc.dropped == {"stale": 3 * GROUP}  # one group of each of the 3 batches
    assert acc.trained == sum(len(b) for b in trainer.batches) == 3 * GROUP
    assert acc.produced == 6 * GROUP and pipeline.buffer.num_buffered == 0
    assert [len(r.drawn) for r in reports] == [1, 1, 1]  # a stale group never reaches a step
    assert all(t.policy_version == r.trained_version for r in reports for g in r.drawn for t in g)
    assert [r.metrics["accounting/dropped/stale"] for r in reports] == [GROUP, 2 * GROUP, 3 * GROUP]


def test_a_group_with_a_failed_episode_is_dropped_whole():
    """One episode of every batch's second group ends in an infrastructure error: that group goes,
    counted as episode_error; the rest of the batch trains."""
    def play(job):
        trajs = group(job.tags["batch_index"], task_id=job.task.id)
        if second_group(job):
            trajs[1].finish_reason, trajs[1].reward_reason = "error", "env_error"
        return trajs

    pipeline, trainer, reports = run_pipeline(play)
    acc = pipeline.buffer.accounting
    assert acc.dropped == {"episode_error": 3 * GROUP}  # whole groups, not just the failed episode
    assert acc.trained == sum(len(b) for b in trainer.batches) == 3 * GROUP
    assert acc.produced == acc.trained + 3 * GROUP and pipeline.buffer.num_buffered == 0
    assert all(len(r.trained_task_ids) == 1 and len(r.drawn) == 1 for r in reports)
    assert all(t.finish_reason != "error" for r in reports for g in r.drawn for t in g)


def test_an_episode_the_verifier_masked_is_dropped_alone():
    """The verifier could not judge one episode of every batch's second group (NeMo Gym's
    `mask_sample`): that episode goes, counted as masked_by_env; its group trains on the rest."""
    def play(job):
        trajs = group(job.tags["batch_index"], task_id=job.task.id)
        if second_group(job):
            trajs[0].masked = True
        return trajs

    pipeline, trainer, reports = run_pipeline(play)
    acc = pipeline.buffer.accounting
    assert acc.dropped == {"masked_by_env": 3}
    assert [len(b) for b in trainer.batches] == [2 * GROUP - 1] * 3
    assert acc.trained == 3 * (2 * GROUP - 1) and acc.produced == acc.trained + 3
    assert not any(t.masked for r in reports for g in r.drawn for t in g)
    assert [r.metrics["accounting/dropped/masked_by_env"] for r in reports] == [1, 2, 3]
