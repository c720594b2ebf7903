"""One sink for a run's metrics: metrics.jsonl in the run directory, and Weights & Biases.

W&B runs offline by default (files under the run directory, sync later with `wandb sync`); it goes
online only when the config says so. The run directory alone is enough to render reports.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SECRET_MARKERS = ("key", "token", "secret", "password")


def redact(obj: Any) -> Any:
    """Drop values whose key looks like a credential before a config is written anywhere."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if any(m in k.lower() for m in SECRET_MARKERS) else redact(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


class RunLogger:
    def __init__(self, run_dir: Path, config: dict[str, Any], project: str, mode: str, name: str):
        self.run_dir = run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        (self.run_dir / "config.json").write_text(json.dumps(redact(config), indent=2))
        self._wandb = None
        if mode != "disabled":
            self._wandb = _start_wandb(run_dir, config, project, mode, name)

    def log(self, metrics: dict[str, float], step: int) -> None:
        record = {"step": step, "time": time.time(), **metrics}
        self._jsonl.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def alert(self, title: str, text: str) -> None:
        logger.warning("%s: %s", title, text)
        if self._wandb is not None:
            try:
                self._wandb.alert(title=title, text=text)
            except Exception as err:  # noqa: BLE001 - offline runs cannot send alerts
                logger.debug("wandb alert not sent: %s", err)

    def finish(self) -> None:
        self._jsonl.close()
        if self._wandb is not None:
            self._wandb.finish()


def _start_wandb(run_dir: Path, config: dict[str, Any], project: str, mode: str, name: str):
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    env_mode = os.environ.get("WANDB_MODE")
    return wandb.init(project=project, name=name, dir=str(run_dir), config=redact(config),
                      mode=env_mode or mode, reinit="finish_previous")
