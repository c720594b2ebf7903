"""`labrl train [--config FILE] [section.field=value ...]` or `labrl train --resume RUN_DIR`.

Also the Ray job entrypoint (`ray job submit --working-dir . -- python -m launch.train ...`).
Flow: validate config (before Ray starts) -> policy (tiny or `model.path`) -> behaviour cloning on
reference demonstrations -> held-out eval -> GRPO with async rollouts and per-step weight sync ->
held-out eval -> final HF weights, metrics.jsonl, curves and summary.json in the run directory.
SIGTERM (what cluster schedulers send) and Ctrl-C stop it in every phase, start-up included (exit
130); from GRPO on they checkpoint the run first. The handler is installed before anything slow
(the run's modules, torch and Ray, are imported inside `main`, ~10 s), and `connect` keeps it in
force across ray.init, which would otherwise replace it with its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from configs.loading import ConfigError, config_from_dict, load_config
from configs.schema import LabrlConfig
from launch.run_state import CONFIG_FILE, load_run_state
from monitor.run_logger import LOG_FORMAT

logger = logging.getLogger("labrl")
EXIT_HEALTH_STOP = 3
EXIT_TRAINER_LOST = 4  # a trainer rank died more often than trainer.max_restarts allows
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
    from launch.run import TrainingRun

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
    from launch.run import TrainingRun

    return TrainingRun(cfg, run_dir, resume=load_run_state(run_dir)).execute()


def _stop_on_sigterm(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return _main(parse_args(argv))
    except KeyboardInterrupt:
        logger.warning("stopped by signal; a checkpointed run resumes with: labrl train --resume <run dir>")
        return EXIT_SIGNAL
    finally:
        ray = sys.modules.get("ray")  # imported by the run, if it got that far
        if ray is not None and ray.is_initialized():
            ray.shutdown()
        signal.signal(signal.SIGTERM, previous)


def _main(args: argparse.Namespace) -> int:
    try:
        cfg = resumed_config(Path(args.resume), args.overrides) if args.resume else load_config(
            args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    from cluster.ray_cluster import ClusterConnectError, ResourceError
    from launch.recovery import TrainerRestartsExhausted
    from models.loading import ModelNotFoundError

    try:
        summary = run_resumed(cfg, Path(args.resume)) if args.resume else train(cfg)
    except (ConfigError, ModelNotFoundError, FileNotFoundError, ClusterConnectError, ResourceError) as err:
        logger.error("%s", err)
        return 2
    except TrainerRestartsExhausted as err:
        logger.error("%s; resume from the last checkpoint with: labrl train --resume <run dir>", err)
        return EXIT_TRAINER_LOST
    return EXIT_HEALTH_STOP if summary.get("health/stopped") else 0


if __name__ == "__main__":
    raise SystemExit(main())
