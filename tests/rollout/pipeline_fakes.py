"""Fakes for driving the real GRPOPipeline without Ray: a pool that answers each submitted group at
once from a scripted function, a trainer that records its batches, a publisher, an observer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from envs.dataset import Task
from rollout.pipeline import StepReport
from rollout.trajectory import Trajectory


@dataclass
class Job:
    task: Task
    group_size: int
    group_id: str
    tags: dict = field(default_factory=dict)


class ScriptedPool:
    """`play(job) -> trajectories` answers every group as soon as it is collected, in submission
    order; each trajectory gets the job's group id."""

    def __init__(self, play: Callable[[Job], list[Trajectory]]):
        self.play = play
        self.jobs: dict[int, Job] = {}
        self.submitted = 0

    def submit(self, task, group_size, group_id, solver="policy", **tags):
        self.jobs[self.submitted] = Job(task, group_size, group_id, tags)
        self.submitted += 1

    def cancel_all(self):
        cancelled = len(self.jobs)
        self.jobs.clear()
        return cancelled

    def collect(self, timeout_s, num_returns=1, where=None):
        key = next(k for k, j in self.jobs.items() if where is None or where(j))
        job = self.jobs.pop(key)
        trajs = self.play(job)
        for t in trajs:
            t.group_id = job.group_id
        return [(job, trajs)]


class RecordingTrainer:
    def __init__(self, metrics: dict[str, float] | None = None):
        self.batches: list = []
        self.metrics = metrics if metrics is not None else {"train/loss": 0.0}

    def train(self, samples):
        self.batches.append(samples)
        return dict(self.metrics)


class NullPublisher:
    def __init__(self):
        self.versions: list[int] = []

    def publish(self, version):
        self.versions.append(version)
        return {}


class Reports:
    def __init__(self):
        self.reports: list[StepReport] = []

    def on_step(self, report: StepReport) -> None:
        self.reports.append(report)


def tasks(n: int) -> list[Task]:
    return [Task(id=f"t{i}", env_name="stoich", split="train", difficulty=1, seed=i) for i in range(n)]
