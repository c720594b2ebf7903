"""Metric accumulation that stays correct across micro-batches, mini-batches and ranks.

A plain average of per-micro-batch averages over-weights small micro-batches and small ranks.
Each value is therefore recorded with how it combines: `mean` (weighted by loss tokens), `sum`
(globally normalised loss terms: their sum over micro-batches and ranks is the batch value),
`max`, `min`, or `first` (identical on every rank, e.g. grad norm and lr). Ranks ship the raw
state; the driver merges it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["mean", "sum", "max", "min", "first"]

# Loss terms returned by policy_loss that are already divided by the global normalisers.
SUM_KEYS = frozenset({"loss", "pg_loss", "kl_loss", "entropy_loss", "policy_loss"})


def kind_for(name: str) -> Kind:
    """How a policy-loss metric combines, from its name."""
    if name in SUM_KEYS or name.endswith("_loss"):
        return "sum"
    if name.endswith("_max"):
        return "max"
    if name.endswith("_min"):
        return "min"
    return "mean"


@dataclass
class MetricState:
    """Raw accumulation: per name, (kind, value, weight). Picklable, mergeable."""

    entries: dict[str, tuple[str, float, float]] = field(default_factory=dict)

    def add(self, name: str, value: float, kind: Kind = "mean", weight: float = 1.0) -> None:
        value = float(value)
        old = self.entries.get(name)
        if old is None:
            self.entries[name] = (kind, value * weight if kind == "mean" else value, weight)
            return
        if old[0] != kind:
            raise ValueError(f"metric {name!r} recorded as {old[0]} and {kind}")
        self.entries[name] = (kind, _combine(kind, old[1], old[2], value, weight), old[2] + weight)

    def merge(self, other: "MetricState") -> None:
        for name, (kind, value, weight) in other.entries.items():
            old = self.entries.get(name)
            if old is None:
                self.entries[name] = (kind, value, weight)
            else:
                # `value` of a mean entry is already a weighted sum: merge as a sum.
                merged = (old[1] + value if kind in ("mean", "sum")
                          else _combine(kind, old[1], old[2], value, 1.0))
                self.entries[name] = (kind, merged, old[2] + weight)

    def result(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, (kind, value, weight) in self.entries.items():
            out[name] = value / weight if kind == "mean" and weight > 0 else value
            if kind == "mean" and weight <= 0:
                out[name] = math.nan
        return out


def _combine(kind: str, old: float, old_weight: float, value: float, weight: float) -> float:
    if kind == "mean":
        return old + value * weight
    if kind == "sum":
        return old + value
    if kind == "max":
        return max(old, value)
    if kind == "min":
        return min(old, value)
    return old  # "first"


def merge_states(states: list[MetricState]) -> dict[str, float]:
    total = MetricState()
    for s in states:
        total.merge(s)
    return total.result()
