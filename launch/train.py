"""`labrl train [--config FILE] [section.field=value ...]` or `labrl train --resume RUN_DIR`.

Also the Ray job entrypoint (`ray job submit --working-dir . -- python -m launch.train ...`).
Flow: validate config (before Ray starts) -> policy (tiny or `model.path`) -> behaviour cloning on
reference demonstrations -> held-out eval -> GRPO with async rollouts and per-step weight sync ->
held-out eval -> final HF weights, metrics.jsonl, curves and summary.json in the run directory.
SIGTERM (what cluster schedulers send) and Ctrl-C checkpoint the run before it exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
from pathlib import Path

import ray

from envs.registry import UnknownEnvironmentError
from configs.schema import LabrlConfig
from configs.loading import ConfigError, apply_override, load_config
from launch.run import TrainingRun
from launch.run_state import CONFIG_FILE, load_run_state
from models.loading import ModelNotFoundError

logger = logging.getLogger("labrl")
EXIT_HEALTH_STOP = 3
EXIT_SIGNAL = 130


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="labrl train", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="YAML config (default: configs/default.yaml)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue a checkpointed run in RUN_DIR (its saved config; overrides apply on top)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.lr=1e-4")
    return p.parse_args(argv)


def train(cfg: LabrlConfig) -> dict[str, float]:
    """A fresh run in a new run directory; returns the summary (held-out success etc.)."""
    return TrainingRun(cfg).execute()


def resume(run_dir: Path, overrides: list[str]) -> dict[str, float]:
    """Continue a checkpointed run with its saved config (overrides, e.g. more steps, on top)."""
    raw = json.loads((run_dir / CONFIG_FILE).read_text())
    for override in overrides:
        apply_override(raw, override)
    cfg = LabrlConfig.model_validate(raw)
    return TrainingRun(cfg, run_dir, resume=load_run_state(run_dir)).execute()


def _stop_on_sigterm(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        cfg = None if args.resume else load_config(args.config, args.overrides)
    except ConfigError as err:
        logger.error("%s", err)
        return 2
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        summary = resume(Path(args.resume), args.overrides) if args.resume else train(cfg)
    except (ConfigError, ModelNotFoundError, UnknownEnvironmentError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    except KeyboardInterrupt:
        logger.warning("stopped by signal; resume with: labrl train --resume <run dir>")
        return EXIT_SIGNAL
    finally:
        if ray.is_initialized():
            ray.shutdown()
    return EXIT_HEALTH_STOP if summary.get("health/stopped") else 0


if __name__ == "__main__":
    raise SystemExit(main())
