"""One sink for a run's metrics: metrics.jsonl in the run directory, and Weights & Biases.

W&B runs offline by default (files under the run directory, sync later with `wandb sync`); it goes
online only when the config (or WANDB_MODE) says so. The run directory alone is enough to render
reports: metrics.jsonl, config.json, samples.jsonl and alarms.jsonl hold everything W&B shows.
Nothing a credential touches is written: config dumps are redacted by key, and every string that
goes to a file, to W&B or to a log handler is scrubbed of secret values (monitor/secrets.py).

Metric namespaces: `rollout/`, `env/<name>/`, `train/`, `sync/`, `timing/`, `accounting/`,
`health/`, `eval_<label>/`, `profile/`; tables: `samples/trajectories`, `profile/tasks`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

from configs.schema import LabrlConfig
from monitor.secrets import Scrubber, install_log_scrubber, redact, secret_values

__all__ = ["LOG_FORMAT", "RunLogger", "log_to_file", "redact"]

logger = logging.getLogger(__name__)

# The driver's log line, on the console and in the run directory's log file.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_to_file(path: Path) -> logging.Handler:
    """Also send the driver's log records to `path`; returns the handler (remove it when done)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    return handler


class RunLogger:
    """Writes metrics, tables and alerts of one run to its directory and to W&B.

    `mode`: "offline" | "online" | "disabled" (W&B only; the files are always written).
    """

    def __init__(self, run_dir: Path, config: dict[str, Any], project: str, mode: str, name: str,
                 group: str | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.scrub = Scrubber(secret_values(config))
        install_log_scrubber(self.scrub)
        safe_config = self.scrub.obj(redact(config))
        (self.run_dir / "config.json").write_text(json.dumps(safe_config, indent=2))
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        self._wandb = None
        if mode != "disabled":
            self._wandb = _start_wandb(self.run_dir, safe_config, project, mode, name, group)

    @classmethod
    def for_run(cls, run_dir: Path, cfg: LabrlConfig, name: str, **extra_config: Any) -> "RunLogger":
        """A run's logger as its config's `logging` section asks (W&B project, mode, group)."""
        log = cfg.logging
        return cls(run_dir, {**cfg.model_dump(), **extra_config}, log.wandb_project, log.wandb_mode, name,
                   group=log.group)

    @property
    def wandb_run(self) -> Any:
        """The W&B run (None when disabled): for callers that need W&B-specific features."""
        return self._wandb

    def log(self, metrics: dict[str, float], step: int) -> None:
        record = {"step": step, "time": time.time(), **metrics}
        self._jsonl.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def log_table(self, key: str, columns: Sequence[str], rows: list[dict[str, Any]], step: int | None,
                  jsonl_name: str | None = None) -> None:
        """A table of rows (dicts keyed by `columns`): appended to `jsonl_name` and logged to W&B."""
        rows = [self.scrub.obj(r) for r in rows]
        if jsonl_name is not None:
            append_jsonl(self.run_dir / jsonl_name, rows)
        if self._wandb is not None and rows:
            import wandb

            table = wandb.Table(columns=list(columns), data=[[r.get(c) for c in columns] for r in rows])
            self._wandb.log({key: table}, step=step)

    def alert(self, title: str, text: str) -> None:
        """A console warning and a W&B alert (online runs deliver it; offline ones only log it)."""
        title, text = self.scrub.text(title), self.scrub.text(text)
        logger.warning("%s: %s", title, text)
        if self._wandb is not None:
            try:
                self._wandb.alert(title=title, text=text)
            except Exception as err:  # noqa: BLE001 - offline runs cannot send alerts
                logger.debug("wandb alert not sent: %s", err)

    def finish(self) -> None:
        if not self._jsonl.closed:
            self._jsonl.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file ({} when it does not exist)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file ([] when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _start_wandb(run_dir: Path, config: dict[str, Any], project: str, mode: str, name: str,
                 group: str | None):
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    env_mode = os.environ.get("WANDB_MODE")
    # console="off": train.log already holds the (scrubbed) log; raw stdout capture would bypass
    # the scrubber. Metadata (argv, git) is kept: it is what makes an online run reproducible.
    settings = wandb.Settings(console="off")
    return wandb.init(project=project, name=name, group=group, dir=str(run_dir), config=config,
                      mode=env_mode or mode, reinit="finish_previous", settings=settings)
