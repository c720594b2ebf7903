"""Run checkpoints: the trainer's DeepSpeed state plus what the driver needs to resume exactly.

Layout under the run directory:
  checkpoint/            DeepSpeed checkpoints (one `v<policy version>` folder per save, model +
                         optimizer + scheduler + RNG), written by the trainer ranks; the newest
                         `checkpoint.keep_last` complete ones are kept
  run_state.json         the driver's state, naming the DeepSpeed tag it goes with

`run_state.json` is written last and atomically (write to a temporary file, fsync, rename): it is
the commit. A save killed half-way (even by SIGKILL) leaves a folder no `run_state.json` names, and
the previous complete checkpoint stays the one a resume or a trainer restart picks up; the orphan
is deleted by the next save.

Rows that the driver appended after the committed checkpoint (metrics.jsonl, batches.jsonl,
samples.jsonl) describe steps that will run again: `rewind_run_files` removes them, so a resumed
or restored run's logs hold each step once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

STATE_FILE = "run_state.json"
CHECKPOINT_DIR = "checkpoint"
CONFIG_FILE = "resolved_config.json"
# Files the driver appends per-step rows to, and the key that marks such a row (its `step` is the
# 0-based GRPO step it describes; other rows, such as evaluations, have no such key).
STEP_LOGS = {"metrics.jsonl": "accounting/produced", "batches.jsonl": "task_ids", "samples.jsonl": "task_id"}
_TAG = re.compile(r"v(\d+)")


@dataclass
class RunState:
    """Where a run stands: the one resume position. Step k trains from policy version k, so the
    version served after the last completed step is also the next step to run."""

    policy_version: int  # version served after the last completed step (= the next step)
    trainer_tag: str  # DeepSpeed tag under checkpoint/
    policy_dir: str  # initial policy (after SFT) the engines and the trainer are built from
    summary: dict  # evaluation results so far (e.g. after SFT)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_run_state(run_dir: Path, state: RunState) -> None:
    write_atomic(run_dir / STATE_FILE, json.dumps(asdict(state), indent=2))
    logger.info("checkpoint: policy v%d (next step %d), trainer tag %s", state.policy_version,
                state.policy_version, state.trainer_tag)


def load_run_state(run_dir: Path) -> RunState:
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {STATE_FILE}: nothing to resume from "
                                "(no checkpoint was completed in that run)")
    return RunState(**json.loads(path.read_text()))


def committed_run_state(run_dir: Path) -> RunState | None:
    """The last complete checkpoint's state, None when the run has none yet."""
    return load_run_state(run_dir) if (Path(run_dir) / STATE_FILE).is_file() else None


def checkpoint_tag(version: int) -> str:
    """The trainer tag of the checkpoint taken when `version` is served (one trainer state per version)."""
    return f"v{version}"


def stale_checkpoints(ckpt_dir: Path, committed: str, keep_last: int) -> list[Path]:
    """Folders to delete once `committed` is the run's checkpoint: everything but it and the
    `keep_last - 1` newest older ones. Folders newer than the commit are orphans of a killed save."""
    match = _TAG.fullmatch(committed)
    if match is None or not ckpt_dir.is_dir():
        return []
    newest = int(match.group(1))
    versions = sorted((int(m.group(1)), d) for d in ckpt_dir.iterdir()
                      if d.is_dir() and (m := _TAG.fullmatch(d.name)))
    older = [d for v, d in versions if v < newest]
    keep = set(older[len(older) - (keep_last - 1):] if keep_last > 1 else [])
    return [d for v, d in versions if v != newest and d not in keep]


def remove_checkpoint(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def rewind_run_files(run_dir: Path, version: int) -> int:
    """Drop per-step rows of steps >= `version` (they run again); returns how many went.

    Rows without a step counter (evaluations, summaries) stay. Files are rewritten in place, not
    replaced, so a logger holding them open in append mode keeps writing to the same file.
    """
    removed = 0
    for name, marker in STEP_LOGS.items():
        path = Path(run_dir) / name
        if not path.is_file():
            continue
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if not _is_step_row_from(line, marker, version)]
        if len(kept) != len(lines):
            with open(path, "r+") as f:
                f.write("".join(kept))
                f.truncate()
            removed += len(lines) - len(kept)
    return removed


def _is_step_row_from(line: str, marker: str, version: int) -> bool:
    try:
        row = json.loads(line)
    except ValueError:  # a line cut short by a kill mid-write
        return True
    return marker in row and row.get("step", -1) >= version
