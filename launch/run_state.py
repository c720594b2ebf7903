"""Run checkpoints: the trainer's DeepSpeed state plus what the driver needs to resume exactly.

Layout under the run directory:
  checkpoint/            DeepSpeed checkpoints (one `step_<n>` folder per save, model + optimizer +
                         scheduler + RNG), written by the trainer ranks
  run_state.json         the driver's state, naming the DeepSpeed tag it goes with

`run_state.json` is written last and atomically (write to a temporary file, fsync, rename), so a
save interrupted half-way leaves the previous complete checkpoint as the one a resume picks up.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

STATE_FILE = "run_state.json"
CHECKPOINT_DIR = "checkpoint"
CONFIG_FILE = "resolved_config.json"


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
