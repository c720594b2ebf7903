"""What each role asks of the cluster, and whether a given set of nodes can ever hold it.

Pure functions over plain dicts (`{"CPU": 8, "GPU": 4, "cpu_node": 1}` per node) so the fit rules
are unit-tested without Ray and reused by `cluster.ray_cluster.check_resources` on a live cluster.
Why check at all: Ray queues an unsatisfiable placement group or actor forever, so a run that asks
for 16 GPUs on an 8-GPU cluster looks like a silent hang. These checks only reject what can never
fit (necessary conditions), so they never refuse a layout Ray could schedule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Resources = Mapping[str, float]
EPS = 1e-6

# Ray's placement strategies used by labrl: PACK/SPREAD are best effort, STRICT_PACK needs one node.
STRATEGIES = ("PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD")


@dataclass(frozen=True)
class GroupSpec:
    """One placement group: its bundles and Ray strategy; `label` names it in error messages."""

    label: str
    bundles: tuple[dict[str, float], ...]
    strategy: str = "PACK"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"{self.label}: unknown placement strategy {self.strategy!r}")
        if not self.bundles or any(not b for b in self.bundles):
            raise ValueError(f"{self.label}: every bundle needs at least one resource")

    def total(self) -> dict[str, float]:
        return add_resources(self.bundles)


@dataclass(frozen=True)
class RoleDemand:
    """Everything one role (generation / trainer / env_workers) reserves, with the config fields
    that size it, so a failure message can say what to change."""

    role: str
    groups: tuple[GroupSpec, ...]
    fields: str = ""
    description: str = ""

    def total(self) -> dict[str, float]:
        return add_resources(g.total() for g in self.groups)


def add_resources(items) -> dict[str, float]:
    out: dict[str, float] = {}
    for res in items:
        for k, v in res.items():
            out[k] = out.get(k, 0.0) + float(v)
    return out


def fmt(res: Resources) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(res.items())) + "}"


def _fits(need: Resources, have: Resources) -> bool:
    return all(v <= have.get(k, 0.0) + EPS for k, v in need.items())


def _largest(nodes: Sequence[Resources], key: str) -> float:
    return max((n.get(key, 0.0) for n in nodes), default=0.0)


def fit_problems(demands: Sequence[RoleDemand], nodes: Sequence[Resources],
                 joint: Sequence[RoleDemand] = ()) -> list[str]:
    """Reasons the nodes can never hold `demands` (empty list: no obvious impossibility).

    Checked, in order: each role's totals against the cluster's; all roles together; then, for
    roles whose totals fit, every STRICT_PACK group against the largest node, every single bundle
    against some node and STRICT_SPREAD groups against the node count. `joint` groups (shared by
    several roles, already counted in `demands`) get only the per-group checks, and only when
    everything else fits.
    """
    cluster = add_resources(nodes)
    problems: list[str] = []
    short_roles: set[str] = set()
    for d in demands:
        total = d.total()
        short = {k: v for k, v in total.items() if v > cluster.get(k, 0.0) + EPS}
        if short:
            short_roles.add(d.role)
        for k, v in sorted(short.items()):
            hint = f" ({d.description})" if d.description else ""
            problems.append(f"{d.role}: needs {k} {v:g}{hint}, the cluster has {cluster.get(k, 0.0):g} in "
                            f"total{_resource_hint(k)}; change {d.fields or d.role} or add nodes")
    if not problems and len(demands) > 1:
        together = add_resources(d.total() for d in demands)
        for k, v in sorted(together.items()):
            if v > cluster.get(k, 0.0) + EPS:
                parts = ", ".join(f"{d.role} {d.total().get(k, 0.0):g}" for d in demands if d.total().get(k))
                problems.append(f"all roles together need {k} {v:g} ({parts}), the cluster has "
                                f"{cluster.get(k, 0.0):g}; shrink a role or add nodes")
    for d in demands:
        if d.role in short_roles:  # already reported; per-node detail would only repeat it
            continue
        for g in d.groups:
            problems.extend(_group_problems(d, g, nodes))
    if not problems:
        for d in joint:
            for g in d.groups:
                problems.extend(_group_problems(d, g, nodes))
    return problems


def _group_problems(d: RoleDemand, g: GroupSpec, nodes: Sequence[Resources]) -> list[str]:
    out: list[str] = []
    if g.strategy == "STRICT_PACK" and len(g.bundles) > 1:
        total = g.total()
        if not any(_fits(total, n) for n in nodes):
            biggest = ", ".join(f"{k} {_largest(nodes, k):g}" for k in sorted(total))
            out.append(f"{d.role}: {g.label} needs {fmt(total)} on ONE node ({len(g.bundles)} bundles, "
                       f"STRICT_PACK), the largest node has {biggest}; change {d.fields or d.role}")
            return out
    for b in {fmt(b): b for b in g.bundles}.values():
        if not any(_fits(b, n) for n in nodes):
            out.append(f"{d.role}: {g.label} has a bundle {fmt(b)} that no single node can hold "
                       f"(largest: {', '.join(f'{k} {_largest(nodes, k):g}' for k in sorted(b))})")
    if g.strategy == "STRICT_SPREAD" and len(g.bundles) > len(nodes):
        out.append(f"{d.role}: {g.label} spreads {len(g.bundles)} bundles over distinct nodes, the "
                   f"cluster has {len(nodes)} nodes")
    return out


def _resource_hint(key: str) -> str:
    if key in ("CPU", "GPU", "memory", "object_store_memory"):
        return ""
    return (f" (custom resource: start nodes with `ray start --resources '{{\"{key}\": 1}}'` or unset "
            "the config field that asks for it)")
