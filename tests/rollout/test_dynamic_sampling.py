"""Dynamic sampling in the real GRPOPipeline (no Ray): flat groups are dropped, counted and refilled."""

from __future__ import annotations

from dataclasses import dataclass, field

from envs.dataset import Task
from rollout.pipeline import GRPOPipeline, PipelineSettings, TaskStream
from tests.monitor.synthetic import traj

GROUP = 4


@dataclass
class Job:
    task: Task
    group_size: int
    tags: dict = field(default_factory=dict)


class TaskRewardPool:
    """Answers each group at once; tasks with seed % 3 == 0 are flat (every reward 0). Groups
    carry the batch index as their policy version (the pipeline below runs synchronously)."""

    def __init__(self):
        self.jobs: dict[int, Job] = {}
        self.group_ids: dict[int, str] = {}
        self.submitted = 0

    def submit(self, task, group_size, group_id, solver="policy", **tags):
        self.jobs[self.submitted] = Job(task, group_size, tags)
        self.group_ids[self.submitted] = group_id
        self.submitted += 1

    def collect(self, timeout_s, num_returns=1):
        key = next(iter(self.jobs))
        job = self.jobs.pop(key)
        flat = job.task.seed % 3 == 0
        trajs = [traj(0.0 if flat else float(i % 2), task_id=job.task.id, version=job.tags["batch_index"])
                 for i in range(job.group_size)]
        for t in trajs:
            t.group_id = self.group_ids[key]
        return [(job, trajs)]


def run(dynamic: bool, num_tasks: int = 30, rounds: int = 4):
    tasks = [Task(id=f"t{i}", env_name="stoich", split="train", difficulty=1, seed=i) for i in range(num_tasks)]
    trained, logged = [], []
    pipeline = GRPOPipeline(
        PipelineSettings(num_steps=4, batch_size=4 * GROUP, group_size=GROUP, max_staleness=0,
                         dynamic_sampling=dynamic, max_refill_rounds=rounds),
        TaskRewardPool(), TaskStream(tasks, 0),
        train_fn=lambda samples: trained.append(samples) or {"train/loss": 0.0},
        sync_fn=lambda version: {}, log_fn=lambda metrics, step: logged.append(metrics))
    pipeline.run()
    return pipeline, trained, logged


def test_flat_groups_are_refilled_and_counted():
    pipeline, trained, logged = run(dynamic=True)
    assert all(len(samples) == 4 * GROUP for samples in trained)  # every step: a full batch of signal
    assert all(any(s.advantage != 0 for s in samples[i:i + GROUP]) for samples in trained
               for i in range(0, len(samples), GROUP))
    acc = pipeline.buffer.accounting
    assert acc.dropped["zero_variance"] > 0 and acc.dropped["zero_variance"] % GROUP == 0
    assert acc.produced == acc.trained + sum(acc.dropped.values()) + pipeline.buffer.num_buffered
    assert sum(m["rollout/refill_rounds"] for m in logged) > 0
    # Rollout metrics describe the batch as drawn (flat groups included), not the filtered one.
    assert min(m["rollout/success_rate"] for m in logged) < 0.5


def test_refills_are_reproducible_and_bounded():
    first, second = run(dynamic=True)[0], run(dynamic=True)[0]
    assert first.trained_batches == second.trained_batches
    _, trained, logged = run(dynamic=True, num_tasks=3, rounds=1)  # t0 flat: a refill can't always help
    assert all(m["rollout/refill_rounds"] <= 1 for m in logged)
    assert [len(s) for s in trained] == [GROUP * int(m["rollout/groups_with_signal"]) for m in logged]


def test_without_dynamic_sampling_flat_groups_are_trained():
    pipeline, trained, logged = run(dynamic=False)
    assert all(len(samples) == 4 * GROUP for samples in trained)
    assert pipeline.buffer.accounting.dropped["zero_variance"] == 0
    assert "rollout/refill_rounds" not in logged[0]
