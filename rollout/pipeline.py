"""The asynchronous GRPO pipeline: generation runs ahead of training by at most `max_staleness` steps.

Batch k (its groups of G episodes each) is submitted to the env workers once the policy version is
at least k - max_staleness, so while the trainer works on batch k the workers already play batch
k+1 .. k+s with the weights they have. Each step: collect batch k -> drop stale groups -> group
advantages -> one optimizer step -> publish the weights to every generation worker (version += 1)
-> a `StepReport` to every observer. With max_staleness = 0 this is the synchronous, on-policy loop.

The pipeline's collaborators are small protocols: a `StepTrainer`, a `WeightPublisher`,
`StepObserver`s and an optional `TrainerRecovery` (launch/ wires the real ones; tests pass fakes).

A trainer rank that dies (`TrainerRankLost`, from a step, a sync or an observer's checkpoint) is
not the end: the recovery restores the trainer from the last checkpoint and re-syncs the engines at
that version, and the pipeline rewinds to it: buffered groups are dropped (counted,
`trainer_restart`), groups in flight are cancelled, and batches from the restored version on are
submitted again, in the same task order.

Dynamic sampling (DAPO): groups whose rewards are all equal teach nothing (every advantage is 0);
they are dropped (counted) and the batch is refilled with fresh groups played by the current
policy, up to `max_refill_rounds` times, so each step trains on a full batch of signal. A refill
round runs inside the step: the trainer waits for its episodes, tool latency included, which is
what asynchrony was meant to hide. `grpo.oversample_groups` draws that many extra groups with every
batch instead: they are played with it (ahead of the step when asynchronous), the first
groups with signal in submission order make the batch, and any beyond it are dropped, counted as
`surplus`; refill rounds remain for a batch still short.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from configs.schema import GRPOConfig
from envs.dataset import Task
from rollout.pool import EnvWorkerPool
from rollout.buffer import RolloutBuffer
from rollout.play import collect_until
from rollout.shaping import filter_zero_variance_groups
from rollout.trajectory import Trajectory
from trainers.batching import TrainSample
from trainers.group import TrainerRankLost
from trainers.grpo.advantages import compute_advantages

logger = logging.getLogger(__name__)


class TaskStream:
    """Deterministic, resumable order of training tasks: a seeded shuffle per epoch."""

    def __init__(self, tasks: list[Task], seed: int):
        if not tasks:
            raise ValueError("no training tasks")
        self.tasks, self.seed, self.position = tasks, seed, 0

    def next(self) -> Task:
        epoch, offset = divmod(self.position, len(self.tasks))
        order = list(range(len(self.tasks)))
        random.Random(self.seed + epoch).shuffle(order)
        self.position += 1
        return self.tasks[order[offset]]

    def refill(self, batch_index: int, round_index: int, n: int) -> list[Task]:
        """`n` tasks for a dynamic-sampling refill: a pure function of (seed, batch, round), so a
        resumed run refills exactly as the uninterrupted one did, whatever was submitted ahead."""
        rng = random.Random(f"{self.seed}/refill/{batch_index}/{round_index}")
        return [self.tasks[i] for i in rng.sample(range(len(self.tasks)), min(n, len(self.tasks)))]


class StepTrainer(Protocol):
    """What the pipeline needs from a trainer: one optimizer step on a batch, its metrics."""

    def train(self, samples: list[TrainSample]) -> dict[str, float]: ...


class WeightPublisher(Protocol):
    """What the pipeline needs after a step: every generation worker serving `version`."""

    def publish(self, version: int) -> dict[str, float]: ...


@dataclass
class StepReport:
    """One finished step, for observers (metrics, health, samples, progress, checkpoints)."""

    step: int
    trained_version: int  # the policy version the batch was trained from; it serves +1 now
    drawn: list[list[Trajectory]]  # the batch's groups as drawn, before dynamic-sampling filtering
    trained_task_ids: list[str]  # the groups trained on, in order (audits across resumes)
    metrics: dict[str, float]


class StepObserver(Protocol):
    """Called after every step, in order; raising stops the run (e.g. a health alarm)."""

    def on_step(self, report: StepReport) -> None: ...


class TrainerRecovery(Protocol):
    """Rebuilds a trainer that lost a rank; returns the policy version it was restored to (the
    engines already serve it)."""

    def restore(self, lost: TrainerRankLost) -> int: ...


def to_train_samples(groups: list[list[Trajectory]], estimator: str) -> list[TrainSample]:
    """Group-relative advantages (one scalar per trajectory) turned into trainer samples."""
    trajs = [t for g in groups for t in g]
    rewards = torch.tensor([t.reward for t in trajs], dtype=torch.float32)
    index = torch.tensor([i for i, g in enumerate(groups) for _ in g], dtype=torch.long)
    advantages = compute_advantages(estimator, rewards, index)
    # An agent program's episode that forked trains each of its segments with the episode's advantage.
    return [TrainSample(token_ids=s.token_ids, loss_mask=s.loss_mask, sampler_logprobs=s.sampler_logprobs,
                        advantage=float(a)) for t, a in zip(trajs, advantages) for s in t.segments]


class GRPOPipeline:
    """Drives env workers, the rollout buffer, the trainer and weight sync, from `start_version`
    (a resumed run's `RunState.policy_version`) to `grpo.num_steps`.

    The trainer and the publisher block; the env workers keep playing meanwhile.
    """

    def __init__(self, grpo: GRPOConfig, max_staleness: int, pool: EnvWorkerPool, tasks: TaskStream,
                 trainer: StepTrainer, publisher: WeightPublisher,
                 observers: Sequence[StepObserver] = (), start_version: int = 0,
                 recovery: TrainerRecovery | None = None):
        self.grpo, self.max_staleness = grpo, max_staleness
        self.pool, self.tasks = pool, tasks
        self.trainer, self.publisher, self.observers = trainer, publisher, list(observers)
        self.recovery = recovery
        self.buffer = RolloutBuffer(max_staleness)
        self.restarts = self.reissued_groups = 0
        self._rewind_to(start_version)

    def _rewind_to(self, version: int) -> None:
        """Step k trains from policy version k. At version k the task stream starts exactly where
        batch k begins, so a resumed or restored run trains on the same tasks in the same order."""
        self.version = self.submitted_batches = version
        self.tasks.position = version * self.groups_drawn_per_batch
        self._batch_tasks: dict[int, list[str]] = {}  # batch -> task ids in submission order

    @property
    def groups_per_batch(self) -> int:
        return self.grpo.batch_size // self.grpo.group_size

    @property
    def groups_drawn_per_batch(self) -> int:
        """Groups submitted per batch: the batch, plus the over-sampled ones under dynamic sampling."""
        return self.groups_per_batch + (self.grpo.oversample_groups if self.grpo.dynamic_sampling else 0)

    def _submit_ahead(self) -> None:
        while (self.submitted_batches < self.grpo.num_steps
               and self.submitted_batches <= self.version + self.max_staleness):
            k = self.submitted_batches
            self._batch_tasks[k] = []
            for g in range(self.groups_drawn_per_batch):
                task = self.tasks.next()
                self._batch_tasks[k].append(task.id)
                self.pool.submit(task, self.grpo.group_size, f"b{k}-g{g}-{task.id}", batch_index=k)
            self.submitted_batches += 1

    def _collect(self, batch_index: int, num_groups: int) -> None:
        collect_until(self.pool, lambda: num_groups - self.buffer.num_groups(batch_index),
                      lambda job, trajs: self.buffer.add_group(job.tags["batch_index"], trajs),
                      self.grpo.collect_timeout_s,
                      lambda: f"batch {batch_index}: only {self.buffer.num_groups(batch_index)}/{num_groups} groups")

    def step(self, step: int) -> StepReport:
        t0 = time.monotonic()
        self._submit_ahead()
        self._collect(step, self.groups_drawn_per_batch)
        drawn = self._take_ordered(step, self._batch_tasks.pop(step))
        metrics: dict[str, float] = {}
        groups = self._refill_flat_groups(step, drawn, metrics) if self.grpo.dynamic_sampling else drawn
        t_collected = time.monotonic()
        if groups:
            batch = [t for g in groups for t in g]
            try:
                metrics.update(self.trainer.train(to_train_samples(groups, self.grpo.advantage_estimator)))
            except TrainerRankLost:  # the update is lost with the rank: its batch counts as dropped
                self.buffer.drop(batch, "trainer_restart")
                raise
            self.buffer.mark_trained(batch)
        t_trained = time.monotonic()
        metrics.update(self.publisher.publish(self.version + 1))
        self.version += 1
        self.buffer.accounting.check(self.buffer.num_buffered)
        metrics.update(self.buffer.accounting.metrics(self.buffer.num_buffered, self._in_flight()))
        metrics.update({"fault/trainer_restarts": float(self.restarts),
                        "fault/groups_reissued": float(self.reissued_groups)})
        metrics.update({"timing/wait_rollout_s": t_collected - t0, "timing/train_s": t_trained - t_collected,
                        "timing/sync_s": time.monotonic() - t_trained, "timing/step_s": time.monotonic() - t0,
                        "policy_version": float(self.version)})
        return StepReport(step, self.version - 1, drawn, [g[0].task_id for g in groups], metrics)

    def _take_ordered(self, batch_index: int, submitted: list[str]) -> list[list[Trajectory]]:
        """The batch's usable groups in submission order, not completion order: the batch (and so
        the update) is the same whichever env worker finishes first, so resumed runs repeat."""
        return sorted(self._without_failed_episodes(self.buffer.take(batch_index, self.version)),
                      key=lambda g: submitted.index(g[0].task_id))

    def _refill_flat_groups(self, step: int, groups: list[list[Trajectory]],
                            metrics: dict[str, float]) -> list[list[Trajectory]]:
        """Drop zero-variance groups and play replacements, at most `max_refill_rounds` times."""
        kept = self._drop_flat(groups)
        surplus = kept[self.groups_per_batch:]  # over-sampled groups with signal beyond the batch
        self.buffer.drop([t for g in surplus for t in g], "surplus")
        kept = kept[: self.groups_per_batch]
        rounds = 0
        while len(kept) < self.groups_per_batch and rounds < self.grpo.max_refill_rounds:
            tasks = self.tasks.refill(step, rounds, self.groups_per_batch - len(kept))
            for j, task in enumerate(tasks):
                self.pool.submit(task, self.grpo.group_size, f"b{step}-refill{rounds}-g{j}-{task.id}",
                                 batch_index=step)
            self._collect(step, len(tasks))
            kept += self._drop_flat(self._take_ordered(step, [t.id for t in tasks]))
            rounds += 1
        metrics.update({"rollout/refill_rounds": float(rounds),
                        "rollout/groups_with_signal": float(len(kept)),
                        "rollout/groups_short": float(self.groups_per_batch - len(kept)),
                        "rollout/groups_surplus": float(len(surplus))})
        return kept

    def _drop_flat(self, groups: list[list[Trajectory]]) -> list[list[Trajectory]]:
        kept, flat = filter_zero_variance_groups([t for g in groups for t in g])
        self.buffer.drop(flat, "zero_variance")
        kept_ids = {t.group_id for t in kept}
        return [g for g in groups if g[0].group_id in kept_ids]

    def _without_failed_episodes(self, groups: list[list[Trajectory]]) -> list[list[Trajectory]]:
        """Groups with an infrastructure failure (engine died, env raised) are dropped, counted.

        Their zero rewards say nothing about the policy; training on them would punish it for a
        crash. The whole group goes, since its baseline would be biased by the missing members.
        Episodes the verifier masked (it could not judge them) go alone: the rest of the group
        was judged, and its baseline is taken over those (a group left with one is flat).
        """
        kept = []
        for group in groups:
            if any(t.finish_reason == "error" for t in group):
                self.buffer.drop(group, "episode_error")
                continue
            masked = [t for t in group if t.masked]
            if masked:
                self.buffer.drop(masked, "masked_by_env")
            if len(masked) < len(group):
                kept.append([t for t in group if not t.masked])
        return kept

    def _in_flight(self) -> int:
        return sum(job.group_size for job in self.pool.jobs.values())

    def run(self) -> None:
        while self.version < self.grpo.num_steps:
            try:
                report = self.step(self.version)
                for observer in self.observers:
                    observer.on_step(report)
            except TrainerRankLost as lost:
                if self.recovery is None:
                    raise
                self._restart(self.recovery.restore(lost))

    def _restart(self, version: int) -> None:
        """Continue from `version` (the restored trainer's): nothing generated for later policies
        is trained on; in-flight groups are re-issued by the submissions from `version` on."""
        dropped = self.buffer.drop_all("trainer_restart")
        cancelled = self.pool.cancel_all()
        self.restarts += 1
        self.reissued_groups += cancelled
        logger.warning("trainer restored at policy v%d (was v%d): %d buffered trajectories dropped, "
                       "%d groups in flight re-issued", version, self.version, dropped, cancelled)
        self._rewind_to(version)
