"""Factories that turn the validated config into the run's actors.

Each component is built from its own config section through its runtime object's `from_config`
(the one place the sections are combined); kept apart from `launch.train` so tests, `labrl eval`
and benchmarks build the same actors the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from actors.generation import GenerationWorker
from actors.router import GenerationRouter
from actors.types import EngineSpec
from cluster.placement import Placement
from configs.schema import LabrlConfig
from envs.dataset import Task, TaskDataset
from envs.registry import EnvSpec
from models.loading import resolve_model_path
from models.tiny import TinyModelSpec, save_tiny_model
from rollout.env_worker import EnvWorkerSpec
from rollout.play import run_tasks
from rollout.pool import EnvWorkerPool
from rollout.trajectory import Trajectory
from trainers.batching import TrainSample
from trainers.group import PolicyTrainerGroup
from trainers.sft import sft_process_env, train_sft
from trainers.spec import TrainerSpec

logger = logging.getLogger("labrl")


def prepare_model(cfg: LabrlConfig, run_dir: Path) -> str:
    """The initial policy directory: the configured model, or a freshly built tiny one."""
    if cfg.model.path is not None:
        return resolve_model_path(cfg.model.path)
    m = cfg.model
    if m.build == "chat":
        from launch.model_kit import build_chat_policy  # tokenizer training: only for this build

        return build_chat_policy(run_dir / "init_model", m.chat_preset, m.vocab_size, cfg.seed)
    spec = TinyModelSpec(hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
                         num_layers=m.num_layers, num_heads=m.num_heads, num_kv_heads=m.num_kv_heads,
                         max_position_embeddings=max(1024, cfg.generation.max_model_len), seed=cfg.seed)
    return str(save_tiny_model(run_dir / "init_model", spec))


def make_dataset(cfg: LabrlConfig, spec: EnvSpec) -> TaskDataset:
    """The config's tasks: the same ids in training, `labrl eval` and `labrl profile`."""
    return spec.make_dataset(cfg.env.num_train_tasks, max(cfg.env.num_heldout_tasks, cfg.eval.num_tasks),
                             cfg.env.difficulties, cfg.seed)


def cpus_requested(cfg: LabrlConfig, with_trainer: bool = True) -> float:
    return (cfg.generation.num_workers * cfg.generation.cpus_per_worker
            + cfg.rollout.num_env_workers * cfg.rollout.cpus_per_env_worker
            + (cfg.trainer.num_ranks * cfg.trainer.cpus_per_rank if with_trainer else 0.0))


def gpus_requested(cfg: LabrlConfig, with_trainer: bool = True) -> float:
    return (cfg.generation.num_workers * cfg.generation.gpus_per_worker
            + (cfg.trainer.num_ranks * cfg.trainer.gpus_per_rank if with_trainer else 0.0))


def make_generation_workers(cfg: LabrlConfig, model_dir: str, indices: list[int] | None = None,
                            placement: Placement | None = None) -> list:
    """One GenerationWorker actor per engine (`indices`: only those, e.g. to replace dead ones),
    in its placement-group bundle when a `placement` is given."""
    g = cfg.generation
    spec = EngineSpec.from_config(cfg, model_dir)

    def options(i: int) -> dict:
        if placement is None:
            return {"num_cpus": g.cpus_per_worker, "num_gpus": g.gpus_per_worker}
        return placement.generation_options(i)

    return [GenerationWorker.as_actor(spec, name=f"gen{i}", **options(i))
            for i in (range(g.num_workers) if indices is None else indices)]


def make_extra_generation_worker(cfg: LabrlConfig, model_dir: str, index: int, options: dict) -> Any:
    """An engine added during the run, with the options of its own reservation
    (`cluster.placement.reserve_extra_engine`)."""
    return GenerationWorker.as_actor(EngineSpec.from_config(cfg, model_dir), name=f"gen{index}", **options)


def make_env_pool(cfg: LabrlConfig, model_dir: str, router: GenerationRouter | None = None) -> EnvWorkerPool:
    return EnvWorkerPool(EnvWorkerSpec.from_config(cfg, model_dir), cfg.rollout, router)


def make_trainer(cfg: LabrlConfig, model_dir: str, placement: Placement | None = None) -> PolicyTrainerGroup:
    spec = TrainerSpec.from_config(cfg, model_dir)
    if placement is None:
        return PolicyTrainerGroup(spec)
    return PolicyTrainerGroup(spec, placement_group=placement.trainer_pg,
                              bundle_offset=placement.trainer_bundle_offset)


def run_sft(cfg: LabrlConfig, policy_dir: str, out_dir: Path, samples: list[TrainSample], pad_token_id: int) -> dict[str, float]:
    """`train_sft` in a Ray task of its own: its process starts with `sft_process_env` (numerics pinned
    before torch loads). It runs on the driver's node, where `policy_dir` is and `out_dir` is read
    back; no CPU is reserved: it runs while the env workers that made the demos idle."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    task = ray.remote(num_cpus=0, max_retries=0, scheduling_strategy=here,
                      runtime_env={"env_vars": sft_process_env(cfg.sft)})(train_sft)
    return ray.get(task.remote(policy_dir, str(out_dir), samples, cfg.sft, seed=cfg.seed, pad_token_id=pad_token_id,
                               progress_bar=cfg.logging.progress_bar))


def demonstrations(pool: EnvWorkerPool, tasks: list[Task], num_novice: int,
                   progress: bool = True) -> tuple[list[Trajectory], dict[str, float]]:
    """Scripted-solver episodes for behaviour cloning: the first `num_novice` tasks played by the
    environment's novice solver, the rest by its reference solver; returns the usable ones and stats."""
    expert = run_tasks(pool, tasks[num_novice:], solver="reference", desc="demos", progress=progress)
    novice = run_tasks(pool, tasks[:num_novice], solver="novice", desc="novice demos",
                       progress=progress) if num_novice else []
    # Reference demos that fail are solver bugs, not teaching material; novice ones are the point.
    good_expert = [t for t in expert if t.success]
    kept_novice = [t for t in novice if t.finish_reason == "env_done"]
    logger.info("demonstrations: %d/%d reference succeeded; %d/%d novice submitted, %d of them correct",
                len(good_expert), len(expert), len(kept_novice), len(novice), sum(t.success for t in novice))
    return good_expert + kept_novice, {"sft/novice_demos": float(len(kept_novice)),
                                       "sft/novice_demo_success": sum(t.success for t in novice) / max(1, len(novice))}


def demonstration_samples(demos: list[Trajectory]) -> list[TrainSample]:
    """Scripted-solver episodes as SFT samples: the loss covers the solver's (assistant) tokens."""
    return [TrainSample(t.token_ids, t.loss_mask, [0.0] * len(t.token_ids), 0.0) for t in demos]
