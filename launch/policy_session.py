"""Shared plumbing of the commands that only *sample* a policy (`labrl profile`, `labrl eval`).

They need the same things as training minus the trainer: the config's dataset (so task ids match
the training run's), env workers and vLLM generation workers built exactly as `launch.train` builds
them (`launch.components`), and an output directory with a RunLogger. Keeping this in one place
means profile and eval cannot drift apart from each other or from training.
"""

from __future__ import annotations

import argparse
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import ray

from cluster.ray_cluster import check_resources, connect
from configs.loading import ConfigError, load_config
from configs.schema import LabrlConfig
from envs.dataset import Task, TaskDataset, round_robin_by_difficulty
from launch import components as C
from launch.fleet import EngineFleet
from launch.preflight import preflight
from models.loading import ModelNotFoundError, resolve_model_path
from monitor.run_logger import LOG_FORMAT, RunLogger, log_to_file
from rollout.pool import EnvWorkerPool

logger = logging.getLogger("labrl")


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", default=None, help="YAML config (default: configs/default.yaml)")
    p.add_argument("--checkpoint", default=None,
                   help="HF model directory to sample (e.g. RUN_DIR/final_model); default: model.path")
    p.add_argument("--samples-per-task", "-k", type=int, default=1, help="samples per task (k)")
    p.add_argument("--num-tasks", type=int, default=None, help="first N tasks of the split")
    p.add_argument("--out", default=None, help="output directory (default: RUNS_ROOT/<command>-<name>-<time>)")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. generation.temperature=0.7")
    return p


@dataclass
class SamplingRun:
    cfg: LabrlConfig
    dataset: TaskDataset
    pool: EnvWorkerPool
    out_dir: Path
    run_log: RunLogger
    model_dir: str


def pick_tasks(dataset: TaskDataset, split: str, num_tasks: int | None) -> list[Task]:
    """The first `num_tasks` of a split (all: None), spread over its difficulties like a run's."""
    tasks = round_robin_by_difficulty(dataset.tasks(split))  # type: ignore[arg-type]
    return tasks[:num_tasks] if num_tasks is not None else tasks


@contextmanager
def sampling_run(cfg: LabrlConfig, command: str, checkpoint: str | None, out: str | None) -> Iterator[SamplingRun]:
    """Ray, env workers and generation workers for `cfg`'s policy (or `checkpoint`), then cleanup."""
    spec = preflight(cfg, training=False)  # sampling only: no trainer to fit
    model_path = checkpoint or cfg.model.path
    model_dir = resolve_model_path(model_path) if model_path else None
    out_dir = Path(out) if out else Path(cfg.logging.runs_root) / (
        f"{command}-{cfg.run_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    handler = log_to_file(out_dir / f"{command}.log")
    if model_dir is None:
        logger.warning("no --checkpoint and no model.path: sampling a freshly initialised tiny model")
        model_dir = C.prepare_model(cfg, out_dir)
    dataset = C.make_dataset(cfg, spec)
    run_log = RunLogger.for_run(out_dir, cfg, f"{command}-{cfg.run_name}", command=command, checkpoint=model_dir)
    pool = fleet = None
    try:
        connect(cfg.cluster.address, C.cpus_requested(cfg, with_trainer=False), cfg.cluster.num_cpus,
                timeout_s=cfg.cluster.connect_timeout_s)
        check_resources({"CPU": C.cpus_requested(cfg, with_trainer=False),
                         "GPU": C.gpus_requested(cfg, with_trainer=False)})
        pool = C.make_env_pool(cfg, model_dir)
        fleet = EngineFleet(cfg, model_dir)
        pool.wait_ready()
        fleet.wait_ready()
        pool.set_router(fleet.router())
        yield SamplingRun(cfg, dataset, pool, out_dir, run_log, model_dir)
    finally:
        run_log.finish()
        if pool is not None:
            pool.shutdown()
        if fleet is not None:
            fleet.stop()
        logging.getLogger().removeHandler(handler)
        handler.close()


def run_command(argv: list[str] | None, parser: argparse.ArgumentParser,
                body: Callable[[argparse.Namespace, LabrlConfig], None]) -> int:
    """Common `main`: logging, config errors and missing models as exit code 2, Ray shut down (the
    Ray it started: a caller's own, which `connect` joins, e.g. a notebook's or a test's, stays up)."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    args = parser.parse_args(argv)
    if args.samples_per_task < 1:
        parser.error("--samples-per-task must be >= 1")
    callers_ray = ray.is_initialized()
    try:
        cfg = load_config(args.config, args.overrides)
        body(args, cfg)
    except (ConfigError, ModelNotFoundError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    finally:
        if ray.is_initialized() and not callers_ray:
            ray.shutdown()
    return 0
