"""Dynamic sampling in the real GRPOPipeline (no Ray): flat groups are dropped, counted and refilled."""

from __future__ import annotations


from configs.schema import GRPOConfig
from rollout.pipeline import GRPOPipeline, TaskStream
from rollout.shaping import filter_zero_variance_groups
from tests.monitor.synthetic import traj
from tests.rollout.pipeline_fakes import NullPublisher, RecordingTrainer, Reports, ScriptedPool, tasks

GROUP = 4


def play(job):
    """Tasks with seed % 3 == 0 are flat (every reward 0); groups carry the batch index as their
    policy version (the pipeline below runs synchronously)."""
    flat = job.task.seed % 3 == 0
    return [traj(0.0 if flat else float(i % 2), task_id=job.task.id, version=job.tags["batch_index"])
            for i in range(job.group_size)]


def run(dynamic: bool, num_tasks: int = 30, rounds: int = 4, oversample: int = 0):
    trainer, reports = RecordingTrainer(), Reports()
    grpo = GRPOConfig(num_steps=4, batch_size=4 * GROUP, group_size=GROUP, dynamic_sampling=dynamic,
                      max_refill_rounds=rounds, oversample_groups=oversample)
    pipeline = GRPOPipeline(grpo, 0, ScriptedPool(play), TaskStream(tasks(num_tasks), 0), trainer, NullPublisher(),
                            [reports])
    pipeline.run()
    return pipeline, trainer.batches, [r.metrics for r in reports.reports], reports.reports


def test_flat_groups_are_refilled_and_counted():
    pipeline, trained, logged, reports = run(dynamic=True)
    assert all(len(samples) == 4 * GROUP for samples in trained)  # every step: a full batch of signal
    assert all(any(s.advantage != 0 for s in samples[i:i + GROUP]) for samples in trained
               for i in range(0, len(samples), GROUP))
    acc = pipeline.buffer.accounting
    assert acc.dropped["zero_variance"] > 0 and acc.dropped["zero_variance"] % GROUP == 0
    assert acc.produced == acc.trained + sum(acc.dropped.values()) + pipeline.buffer.num_buffered
    assert sum(m["rollout/refill_rounds"] for m in logged) > 0
    # Observers see the batch as drawn (flat groups included), not the filtered one.
    assert any(len(r.drawn) == 4 and len(r.trained_task_ids) == 4 and
               {g[0].task_id for g in r.drawn} != set(r.trained_task_ids) for r in reports)


def test_refills_are_reproducible_and_bounded():
    first, second = run(dynamic=True)[3], run(dynamic=True)[3]
    assert [r.trained_task_ids for r in first] == [r.trained_task_ids for r in second]
    _, trained, logged, _ = run(dynamic=True, num_tasks=3, rounds=1)  # t0 flat: a refill can't always help
    assert all(m["rollout/refill_rounds"] <= 1 for m in logged)
    assert [len(s) for s in trained] == [GROUP * int(m["rollout/groups_with_signal"]) for m in logged]


def test_oversampled_groups_replace_flat_ones_without_refill_rounds_and_the_surplus_is_counted():
    pipeline, trained, logged, reports = run(dynamic=True, oversample=3)
    assert all(len(samples) == 4 * GROUP for samples in trained)
    assert all(m["rollout/refill_rounds"] == 0 for m in logged)  # 7 drawn, at most 3 flat here
    assert all(len(r.drawn) == 7 for r in reports)
    acc = pipeline.buffer.accounting
    assert acc.dropped["surplus"] == GROUP * sum(m["rollout/groups_surplus"] for m in logged) > 0
    assert acc.produced == acc.trained + sum(acc.dropped.values()) + pipeline.buffer.num_buffered
    # The batch is the first groups with signal in submission order: the same on every run.
    for r in reports:
        with_signal = [g[0].task_id for g in r.drawn if len({t.reward for t in g}) > 1]
        assert r.trained_task_ids == with_signal[:4]
    assert [r.trained_task_ids for r in run(dynamic=True, oversample=3)[3]] == [r.trained_task_ids for r in reports]
    assert pipeline.tasks.position == 4 * 7  # a resumed run starts batch k at task k x 7


def test_without_dynamic_sampling_flat_groups_are_trained():
    pipeline, trained, logged, _ = run(dynamic=False)
    assert all(len(samples) == 4 * GROUP for samples in trained)
    assert pipeline.buffer.accounting.dropped["zero_variance"] == 0
    assert "rollout/refill_rounds" not in logged[0]


def test_filter_zero_variance_groups_keeps_order():
    rewards = [("a", 1), ("b", 0), ("a", 0), ("b", 0), ("c", 1), ("c", 1), ("d", 1)]
    trajs = [traj(float(r), task_id=g) for g, r in rewards]
    kept, dropped = filter_zero_variance_groups(trajs)
    assert [t.task_id for t in kept] == ["a", "a"]
    assert [t.task_id for t in dropped] == ["b", "b", "c", "c", "d"]  # d: singleton
    kept, _ = filter_zero_variance_groups([traj(1.0, task_id="a"), traj(1.05, task_id="a")], atol=0.1)
    assert kept == []
