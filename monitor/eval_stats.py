"""Held-out evaluation statistics from k samples per task: pass@1, pass@k and majority vote.

pass@1 is averaged per task first (c/n), so every task weighs the same however many samples it
has. Majority vote (maj@k) asks whether the most common *submitted answer* is correct: sampling
k times and voting is what a user deploying the agent would do, and it can beat pass@1 when the
policy is right more often than it is wrong in any one particular way. The submitted answer is the
last `submit` tool call's arguments in the trajectory's messages; episodes that never submit do not
vote. A tie counts as the average correctness of the tied answers (a fair coin among them).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from statistics import fmean
from typing import Any, Sequence

from monitor.profiling import group_by_task, pass_at_k
from monitor.rollout_metrics import mean_interval
from monitor.samples import submitted_answer
from rollout.trajectory import Trajectory


@dataclass
class TaskEval:
    task_id: str
    env_name: str
    difficulty: int
    n: int
    num_correct: int
    pass_at_1: float
    pass_at_k: float
    majority: float
    majority_answer: str | None
    num_submitted: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def majority_vote(trajs: Sequence[Trajectory]) -> tuple[float, str | None]:
    """(correctness of the majority submitted answer in [0, 1], that answer); (0, None) if none."""
    answers: dict[str, list[bool]] = {}
    for t in trajs:
        answer = submitted_answer(t.messages)
        if answer is not None:
            answers.setdefault(answer, []).append(t.success)
    if not answers:
        return 0.0, None
    counts = Counter({a: len(v) for a, v in answers.items()})
    top = counts.most_common(1)[0][1]
    tied = [a for a, c in counts.items() if c == top]
    # Identical answers should score identically; if a verifier disagrees with itself, majority wins.
    correct = [fmean(answers[a]) >= 0.5 for a in tied]
    return fmean(correct), tied[0]


def evaluate_task(trajs: Sequence[Trajectory], k: int | None = None) -> TaskEval:
    n = len(trajs)
    k = n if k is None else k
    c = sum(t.success for t in trajs)
    majority, answer = majority_vote(trajs)
    first = trajs[0]
    return TaskEval(task_id=first.task_id, env_name=first.env_name, difficulty=first.difficulty, n=n,
                    num_correct=c, pass_at_1=c / n, pass_at_k=pass_at_k(n, c, k), majority=majority,
                    majority_answer=answer,
                    num_submitted=sum(submitted_answer(t.messages) is not None for t in trajs))


def heldout_metrics(trajs: Sequence[Trajectory], k: int, prefix: str = "eval") -> tuple[dict[str, float], list[TaskEval]]:
    """Run-level metrics (`<prefix>/pass@1`, `pass@k`, `maj@k`, `ci95`, ...) and per-task rows."""
    tasks = [evaluate_task(group, k) for group in group_by_task(trajs).values()]
    if not tasks:
        return {f"{prefix}/num_tasks": 0.0}, []
    _, ci = mean_interval([t.pass_at_1 for t in tasks])  # tasks, not samples, are independent
    metrics = {
        f"{prefix}/num_tasks": float(len(tasks)),
        f"{prefix}/samples_per_task": float(k),
        f"{prefix}/pass@1": fmean(t.pass_at_1 for t in tasks),
        f"{prefix}/ci95": ci,
        f"{prefix}/pass@{k}": fmean(t.pass_at_k for t in tasks),
        f"{prefix}/maj@{k}": fmean(t.majority for t in tasks),
        f"{prefix}/submit_rate": sum(t.num_submitted for t in tasks) / max(1, sum(t.n for t in tasks)),
    }
    return metrics, tasks
