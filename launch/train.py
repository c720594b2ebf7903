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

from configs.loading import ConfigError, config_from_dict, load_config
from configs.schema import LabrlConfig
from launch.run import TrainingRun
from launch.run_state import CONFIG_FILE, load_run_state
from models.loading import ModelNotFoundError
from monitor.run_logger import LOG_FORMAT

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


def resumed_config(run_dir: Path, overrides: list[str]) -> LabrlConfig:
    """A checkpointed run's saved config with `overrides` (e.g. more steps) on top."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {CONFIG_FILE}: not a labrl run directory")
    return config_from_dict(json.loads(path.read_text()), overrides)


def resume(run_dir: Path, overrides: list[str]) -> dict[str, float]:
    """Continue a checkpointed run with its saved config (overrides, e.g. more steps, on top)."""
    return run_resumed(resumed_config(run_dir, overrides), run_dir)


def run_resumed(cfg: LabrlConfig, run_dir: Path) -> dict[str, float]:
    return TrainingRun(cfg, run_dir, resume=load_run_state(run_dir)).execute()


def _stop_on_sigterm(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    args = parse_args(argv)
    try:
        cfg = resumed_config(Path(args.resume), args.overrides) if args.resume else load_config(
            args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        summary = run_resumed(cfg, Path(args.resume)) if args.resume else train(cfg)
    except (ConfigError, ModelNotFoundError, FileNotFoundError) as err:
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
