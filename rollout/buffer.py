"""Rollout buffer: groups of trajectories per task, a staleness bound, and exact accounting.

Invariant, checked every step: produced = trained + dropped (by reason) + buffered. Trajectories
still being generated are counted by the pipeline as in flight. Nothing is silently lost.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from rollout.trajectory import Trajectory


@dataclass
class Accounting:
    produced: int = 0
    trained: int = 0
    dropped: Counter = field(default_factory=Counter)

    def metrics(self, buffered: int, in_flight: int) -> dict[str, float]:
        out = {"accounting/produced": float(self.produced), "accounting/trained": float(self.trained),
               "accounting/buffered": float(buffered), "accounting/in_flight": float(in_flight)}
        for reason, n in self.dropped.items():
            out[f"accounting/dropped/{reason}"] = float(n)
        return out

    def check(self, buffered: int) -> None:
        accounted = self.trained + sum(self.dropped.values()) + buffered
        if accounted != self.produced:
            raise AssertionError(f"trajectory accounting broken: produced {self.produced} != trained "
                                 f"{self.trained} + dropped {dict(self.dropped)} + buffered {buffered}")


class RolloutBuffer:
    """Holds finished groups keyed by the batch they were generated for, in submission order."""

    def __init__(self, max_staleness: int):
        self.max_staleness = max_staleness
        self.groups: dict[int, list[list[Trajectory]]] = {}
        self.accounting = Accounting()

    def add_group(self, batch_index: int, trajs: list[Trajectory]) -> None:
        self.accounting.produced += len(trajs)
        self.groups.setdefault(batch_index, []).append(trajs)

    def num_groups(self, batch_index: int) -> int:
        return len(self.groups.get(batch_index, []))

    @property
    def num_buffered(self) -> int:
        return sum(len(g) for groups in self.groups.values() for g in groups)

    def take(self, batch_index: int, current_version: int) -> list[list[Trajectory]]:
        """Remove and return the groups of `batch_index`, dropping any beyond the staleness bound."""
        fresh = []
        for group in self.groups.pop(batch_index, []):
            if any(current_version - t.policy_version > self.max_staleness for t in group):
                self.accounting.dropped["stale"] += len(group)
            else:
                fresh.append(group)
        return fresh

    def drop(self, trajs: list[Trajectory], reason: str) -> None:
        """Count trajectories taken out of a batch (e.g. zero-variance groups) as dropped."""
        self.accounting.dropped[reason] += len(trajs)

    def drop_all(self, reason: str) -> int:
        """Count every buffered trajectory as dropped for `reason` and empty the buffer; returns how many."""
        n = self.num_buffered
        if n:
            self.accounting.dropped[reason] += n
        self.groups.clear()
        return n

    def mark_trained(self, trajs: list[Trajectory]) -> None:
        self.accounting.trained += len(trajs)
