"""Tasks and task datasets: deterministic from a seed, with disjoint train and held-out splits.

Why deterministic: every worker and every restart must see the same task behind the same id, and a
held-out score is only comparable across runs if the held-out tasks are identical. Why disjoint by
content (not just by id): a held-out task that also appears in training measures memorisation.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Literal, Sequence

logger = logging.getLogger(__name__)

Split = Literal["train", "heldout"]
SPLITS: tuple[Split, ...] = ("train", "heldout")

TaskGenerator = Callable[[random.Random, int], dict[str, Any]]


@dataclass(frozen=True)
class Task:
    """One problem instance: everything an environment needs to rebuild it lives in `data`."""

    id: str
    env_name: str
    split: Split
    difficulty: int
    seed: int
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Task":
        return cls(id=d["id"], env_name=d["env_name"], split=d["split"],
                   difficulty=int(d["difficulty"]), seed=int(d["seed"]), data=dict(d.get("data", {})))


def _content_key(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, default=str)


class TaskDataset:
    """An indexed, immutable collection of tasks (train first, then held-out)."""

    def __init__(self, tasks: Iterable[Task]):
        self._tasks: list[Task] = list(tasks)
        self._by_id: dict[str, Task] = {}
        for task in self._tasks:
            if task.split not in SPLITS:
                raise ValueError(f"task {task.id}: unknown split {task.split!r}")
            if task.id in self._by_id:
                raise ValueError(f"duplicate task id {task.id}")
            self._by_id[task.id] = task

    @classmethod
    def generate(cls, env_name: str, generator: TaskGenerator, num_train: int, num_heldout: int,
                 difficulties: Sequence[int], seed: int,
                 key: Callable[[dict[str, Any]], Any] | None = None,
                 max_attempts_factor: int = 50) -> "TaskDataset":
        """Draw tasks with `generator(rng, difficulty)`, spread evenly over `difficulties`.

        Held-out tasks are drawn first and are distinct by content `key` (default: all of
        `data`); no training task shares a key with a held-out one. Training keys are distinct too
        until a difficulty runs out of new ones; then training tasks may repeat (never a held-out
        one), with a warning, because a small task space should not stop a long run. Each task's
        `seed` is drawn from the dataset seed, so the same arguments always give the same tasks,
        and the held-out tasks of a difficulty depend only on (seed, difficulty, num_heldout).
        Raises ValueError when a difficulty has too few distinct tasks for the held-out split or
        none left for training.
        """
        if not difficulties:
            raise ValueError("at least one difficulty level is needed")
        key_fn = key or _content_key
        per_split = {"heldout": _spread(num_heldout, len(difficulties)),
                     "train": _spread(num_train, len(difficulties))}
        drawn: dict[Split, list[Task]] = {"train": [], "heldout": []}
        for d_index, difficulty in enumerate(difficulties):
            # One stream per difficulty, held-out first: the held-out tasks do not change when
            # num_train or the other difficulty levels change.
            master = random.Random(f"{env_name}:{seed}:{difficulty}")
            heldout_keys: set[Any] = set()
            for split in ("heldout", "train"):
                want = per_split[split][d_index]
                seen: set[Any] = set()
                attempts, count, repeats = 0, 0, False
                while count < want:
                    attempts += 1
                    if attempts > max_attempts_factor * want + 100:
                        if split == "heldout" or not seen:
                            raise ValueError(f"{env_name}: difficulty {difficulty} has too few "
                                             f"distinct tasks for {want} {split} tasks")
                        if not repeats:
                            logger.warning("%s: difficulty %d has only %d distinct training tasks "
                                           "(asked for %d); repeating them", env_name, difficulty,
                                           len(seen), want)
                        repeats = True
                    task_seed = master.getrandbits(63)
                    data = generator(random.Random(task_seed), difficulty)
                    k = key_fn(data)
                    if k in heldout_keys or (k in seen and not repeats):
                        continue
                    seen.add(k)
                    if split == "heldout":
                        heldout_keys.add(k)
                    index = len(drawn[split])
                    drawn[split].append(Task(id=f"{env_name}/{split}/d{difficulty}/{index:05d}",
                                             env_name=env_name, split=split, difficulty=difficulty,
                                             seed=task_seed, data=data))
                    count += 1
        return cls(drawn["train"] + drawn["heldout"])

    def tasks(self, split: Split, difficulty: int | None = None) -> list[Task]:
        """Tasks of one split, optionally of one difficulty, in index order."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        return [t for t in self._tasks
                if t.split == split and (difficulty is None or t.difficulty == difficulty)]

    def by_id(self, task_id: str) -> Task:
        return self._by_id[task_id]

    @property
    def difficulties(self) -> list[int]:
        return sorted({t.difficulty for t in self._tasks})

    def __len__(self) -> int:
        return len(self._tasks)

    def __getitem__(self, index: int) -> Task:
        return self._tasks[index]

    def __iter__(self):
        return iter(self._tasks)


def _spread(total: int, parts: int) -> list[int]:
    """`total` split into `parts` near-equal counts, the remainder going to the first parts."""
    base, extra = divmod(max(total, 0), parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def round_robin_by_difficulty(tasks: Sequence[Task]) -> list[Task]:
    """`tasks` reordered so that every prefix spreads evenly over their difficulties (one of each
    level in turn, each level in its own order). Datasets list tasks level by level, so a plain
    prefix (`tasks[:n]`) would hold only the easiest level."""
    levels: dict[int, list[Task]] = {}
    for t in tasks:
        levels.setdefault(t.difficulty, []).append(t)
    queues = [levels[d] for d in sorted(levels)]
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]
