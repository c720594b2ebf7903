"""Reward profiling: how each task's reward is distributed under the current policy.

Run the policy n times per task and keep, per task, the reward mean / std / min / max, pass@1 and
pass@k. A task whose n rewards are all equal gives GRPO zero advantage for every trajectory, i.e.
no gradient at all: profiling finds those tasks before training pays for them (filter them, or
order tasks into a curriculum by pass rate). Pure functions over trajectories and rows; the CLI
that produces the trajectories is `launch/profile.py`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import fmean, pstdev
from typing import Any, Iterable, Sequence

from rollout.trajectory import Trajectory


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which avoids huge binomials.
    """
    if not 0 <= c <= n or k <= 0:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and k > 0 (n={n}, c={c}, k={k})")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


@dataclass
class TaskProfile:
    """Reward statistics of one task over `n` samples (std is the population std)."""

    task_id: str
    env_name: str
    difficulty: int
    n: int
    num_correct: int
    mean: float
    std: float
    min: float
    max: float
    pass_at_1: float
    pass_at_k: float
    k: int
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def zero_variance(self) -> bool:
        """No GRPO signal: every sample got the same reward (only meaningful for n >= 2)."""
        return self.n >= 2 and self.max - self.min <= 1e-12

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pass@1"], d[f"pass@{self.k}"] = d.pop("pass_at_1"), d.pop("pass_at_k")
        d["zero_variance"] = self.zero_variance
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TaskProfile":
        k = int(d["k"])
        return cls(task_id=d["task_id"], env_name=d["env_name"], difficulty=int(d["difficulty"]), n=int(d["n"]),
                   num_correct=int(d["num_correct"]), mean=float(d["mean"]), std=float(d["std"]),
                   min=float(d["min"]), max=float(d["max"]), pass_at_1=float(d["pass@1"]),
                   pass_at_k=float(d[f"pass@{k}"]), k=k, reasons=dict(d.get("reasons", {})))


def profile_task(trajs: Sequence[Trajectory], k: int | None = None) -> TaskProfile:
    """Statistics of one task's samples; `k` defaults to the number of samples."""
    if not trajs:
        raise ValueError("profile_task needs at least one trajectory")
    n = len(trajs)
    k = n if k is None else min(k, n)  # fewer samples than k when some were masked
    rewards = [float(t.reward) for t in trajs]
    c = sum(t.success for t in trajs)
    first = trajs[0]
    return TaskProfile(task_id=first.task_id, env_name=first.env_name, difficulty=first.difficulty, n=n,
                       num_correct=c, mean=fmean(rewards), std=pstdev(rewards), min=min(rewards),
                       max=max(rewards), pass_at_1=c / n, pass_at_k=pass_at_k(n, c, k), k=k,
                       reasons=dict(Counter(t.reward_reason for t in trajs)))


def group_by_task(trajs: Iterable[Trajectory]) -> dict[str, list[Trajectory]]:
    """Trajectories per task id, in first-seen order."""
    groups: dict[str, list[Trajectory]] = {}
    for t in trajs:
        groups.setdefault(t.task_id, []).append(t)
    return groups


def profile_tasks(trajs: Iterable[Trajectory], k: int | None = None) -> list[TaskProfile]:
    """One profile per task over its judged samples: episodes the verifier masked (it could not
    judge them) say nothing about the policy and are left out; a task with none judged has no row."""
    return [profile_task(group, k) for group in group_by_task(t for t in trajs if not t.masked).values()]


def summarize(profiles: Sequence[TaskProfile], prefix: str = "profile") -> dict[str, float]:
    """Run-level numbers: averages over tasks, and how many tasks give GRPO no signal."""
    if not profiles:
        return {f"{prefix}/num_tasks": 0.0}
    k = profiles[0].k
    return {
        f"{prefix}/num_tasks": float(len(profiles)),
        f"{prefix}/samples_per_task": float(profiles[0].n),
        f"{prefix}/reward_mean": fmean(p.mean for p in profiles),
        f"{prefix}/reward_std_mean": fmean(p.std for p in profiles),
        f"{prefix}/pass@1": fmean(p.pass_at_1 for p in profiles),
        f"{prefix}/pass@{k}": fmean(p.pass_at_k for p in profiles),
        f"{prefix}/zero_variance_frac": fmean(p.zero_variance for p in profiles),
        f"{prefix}/all_correct_frac": fmean(p.num_correct == p.n for p in profiles),
        f"{prefix}/all_wrong_frac": fmean(p.num_correct == 0 for p in profiles),
    }


def summary_table(profiles: Sequence[TaskProfile]) -> list[dict[str, Any]]:
    """Per (environment, difficulty) rows: the table a person reads first."""
    keys = sorted({(p.env_name, p.difficulty) for p in profiles})
    rows = []
    for env, level in keys:
        group = [p for p in profiles if (p.env_name, p.difficulty) == (env, level)]
        s = summarize(group, prefix="x")
        rows.append({"env": env, "difficulty": level, "tasks": len(group),
                     "reward_mean": s["x/reward_mean"], "reward_std_mean": s["x/reward_std_mean"],
                     "pass@1": s["x/pass@1"], f"pass@{group[0].k}": s[f"x/pass@{group[0].k}"],
                     "zero_variance_frac": s["x/zero_variance_frac"]})
    return rows


def write_profiles(path: Path, profiles: Sequence[TaskProfile]) -> None:
    Path(path).write_text("".join(json.dumps(p.to_dict()) + "\n" for p in profiles))


def read_profiles(path: str | Path) -> list[TaskProfile]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reward profile not found: {path} (make one with `labrl profile`)")
    return [TaskProfile.from_dict(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
