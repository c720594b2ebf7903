"""`env.name=nemo_gym`: an `EnvSpec` over a NeMo Gym task JSONL and a running NeMo Gym server.

    labrl train env.name=nemo_gym env.options.url=http://127.0.0.1:8000 \\
        env.options.tasks=examples/nemo_gym_lab/tasks.jsonl sft.enabled=false

Each JSONL row is one task, kept whole in `Task.data["row"]` and sent back to the server as NeMo
Gym's own agents do. A row's `difficulty` field, where present, is its difficulty (else 1);
`env.difficulties` picks the rows, and the train / held-out split is a seeded shuffle of those
(same seed and difficulties, same split). Task ids name the row (`nemo_gym/<split>/<row index>`), so reward
profiles and curricula follow a row across seeds.
"""

from __future__ import annotations

import importlib
import json
import random
from functools import partial
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from envs.adapters.nemo_gym.env import NemoGymGymnasiumEnvironment, NemoGymResourcesEnvironment
from envs.core import Environment
from envs.dataset import Task, TaskDataset
from envs.registry import EnvSpec, ReferencePolicy, no_reference_policy

NAME = "nemo_gym"


class NemoGymOptions(BaseModel):
    """`env.options` of `env.name=nemo_gym`."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="Base URL of the resources server, e.g. http://127.0.0.1:8000.")
    tasks: Path = Field(description="NeMo Gym task JSONL (rows with responses_create_params).")
    shape: Literal["resources", "gymnasium"] = Field(
        "resources", description="resources: /seed_session, /<tool>, /verify; gymnasium: /reset, /step.")
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="Share of rows held out (at most "
                                                                  "env.num_heldout_tasks).")
    reference: str | None = Field(None, description="Import path 'pkg.module:fn' of a reference solver "
                                                    "(env, history) -> Message, for SFT demonstrations.")
    headers: dict[str, str] = Field(default_factory=dict, description="Sent with every request (auth).")
    timeout_s: float = Field(60.0, gt=0, description="Limit of one request, /verify included.")
    max_connections: int = Field(256, gt=0, description="Connection pool size per env worker.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        return url

    @field_validator("tasks")
    @classmethod
    def _tasks_exist(cls, path: Path) -> Path:
        if not path.is_file():
            raise ValueError(f"task file {str(path)!r} does not exist")
        return path


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The JSONL rows; a row that is not an object with `responses_create_params` is named."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not JSON: {err}") from None
        if not isinstance(row, dict) or not isinstance(row.get("responses_create_params"), dict):
            raise ValueError(f"{path}:{number}: a task row needs a responses_create_params object")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no task rows")
    return rows


def split_rows(rows: list[dict[str, Any]], num_train: int, num_heldout: int, difficulties: Sequence[int],
               seed: int, heldout_fraction: float) -> TaskDataset:
    """The rows of the wanted difficulties, shuffled by seed; the first `heldout_fraction` of them
    (at most `num_heldout`) are held out, the next `num_train` train."""
    order = [i for i in range(len(rows)) if _difficulty(rows[i]) in difficulties]
    random.Random(seed).shuffle(order)
    num_held = min(num_heldout, max(1, round(len(order) * heldout_fraction)))
    splits = (("heldout", order[:num_held]), ("train", order[num_held:num_held + num_train]))
    return TaskDataset(Task(f"{NAME}/{split}/{i:05d}", NAME, split, _difficulty(rows[i]), seed,
                            {"row": rows[i], "index": i})
                       for split, indices in splits for i in sorted(indices))


def _difficulty(row: dict[str, Any]) -> int:
    return int(row.get("difficulty", 1))


def _import_reference(path: str) -> ReferencePolicy:
    module, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"reference {path!r} cannot be imported: {err}") from None


def _make_env(options: NemoGymOptions, task: Task) -> Environment:
    cls = NemoGymResourcesEnvironment if options.shape == "resources" else NemoGymGymnasiumEnvironment
    return cls(task, options.url, options.headers, options.timeout_s, options.max_connections)


def nemo_gym_spec(**options: Any) -> EnvSpec:
    """The spec for `env.options` (see `NemoGymOptions`); reads the task file, no network."""
    opts = NemoGymOptions(**options)
    rows = read_rows(opts.tasks)
    difficulties = tuple(sorted({_difficulty(r) for r in rows}))
    return EnvSpec(
        name=NAME, difficulties=difficulties,
        make_dataset=partial(split_rows, rows, heldout_fraction=opts.heldout_fraction),
        make_env=partial(_make_env, opts),
        reference_policy=_import_reference(opts.reference) if opts.reference else no_reference_policy,
        description=f"NeMo Gym {opts.shape} server at {opts.url} ({len(rows)} rows from {opts.tasks})")
