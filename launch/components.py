"""Factories that turn the validated config into the run's actors and settings objects.

Kept apart from `launch.train` so tests, `labrl eval` and benchmarks build the same actors the
same way.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import ray

from actors.generation import GenerationWorker
from actors.router import GenerationRouter
from actors.types import EngineConfig, SamplingSpec
from cluster.placement import Placement
from envs.agent_loop import EpisodeLimits
from envs.pool import EnvWorkerPool
from envs.worker import EnvWorkerSettings
from configs.schema import LabrlConfig
from models.loading import load_tokenizer, resolve_model_path
from models.tiny import TinyModelSpec, save_tiny_model
from trainers.grpo.losses import PolicyLossConfig
from trainers.group import PolicyTrainerGroup
from trainers.settings import TrainerSettings

logger = logging.getLogger(__name__)


def prepare_model(cfg: LabrlConfig, run_dir: Path) -> str:
    """The initial policy directory: the configured model, or a freshly built tiny one."""
    if cfg.model.path is not None:
        return resolve_model_path(cfg.model.path)
    m = cfg.model
    spec = TinyModelSpec(hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
                         num_layers=m.num_layers, num_heads=m.num_heads, num_kv_heads=m.num_kv_heads,
                         max_position_embeddings=max(1024, cfg.generation.max_model_len), seed=cfg.seed)
    return str(save_tiny_model(run_dir / "init_model", spec))


def cpus_requested(cfg: LabrlConfig) -> float:
    return (cfg.generation.num_workers * cfg.generation.cpus_per_worker
            + cfg.rollout.num_env_workers * cfg.rollout.cpus_per_env_worker
            + cfg.trainer.num_ranks * cfg.trainer.cpus_per_rank)


def gpus_requested(cfg: LabrlConfig) -> float:
    return (cfg.generation.num_workers * cfg.generation.gpus_per_worker
            + cfg.trainer.num_ranks * cfg.trainer.gpus_per_rank)


def sampling_spec(cfg: LabrlConfig, model_dir: str, temperature: float | None = None) -> SamplingSpec:
    tok = load_tokenizer(model_dir)
    return SamplingSpec(max_tokens=cfg.generation.max_new_tokens, min_tokens=cfg.generation.min_new_tokens,
                        temperature=cfg.generation.temperature if temperature is None else temperature,
                        top_p=cfg.generation.top_p,
                        stop_token_ids=[tok.convert_tokens_to_ids(tok.eos_token)],
                        seed=cfg.seed if cfg.generation.seeded_sampling else None)


def episode_limits(cfg: LabrlConfig) -> EpisodeLimits:
    return EpisodeLimits(max_turns=cfg.env.max_turns, max_new_tokens=cfg.generation.max_new_tokens,
                         max_model_len=cfg.generation.max_model_len, timeout_s=cfg.env.episode_timeout_s,
                         score_truncated_turns=cfg.env.score_truncated_turns)


def make_generation_workers(cfg: LabrlConfig, model_dir: str, indices: list[int] | None = None,
                            placement: Placement | None = None) -> list:
    """One GenerationWorker actor per engine (`indices`: only those, e.g. to replace dead ones),
    in its placement-group bundle when a `placement` is given."""
    g = cfg.generation
    engine = EngineConfig(model_path=model_dir, max_model_len=g.max_model_len, kv_cache_gb=g.kv_cache_gb,
                          kv_block_size=g.kv_block_size,
                          gpu_memory_utilization=g.gpu_memory_utilization,
                          tensor_parallel_size=g.tensor_parallel_size, enforce_eager=g.enforce_eager,
                          dtype=cfg.model.dtype, seed=cfg.seed, enable_sleep_mode=g.sleep_level > 0)
    def options(i: int) -> dict:
        if placement is None:
            return {"num_cpus": g.cpus_per_worker, "num_gpus": g.gpus_per_worker}
        return placement.generation_options(i)

    return [GenerationWorker.as_actor(engine, name=f"gen{i}", pause_mode=cfg.sync.pause_mode, **options(i))
            for i in (range(g.num_workers) if indices is None else indices)]


def make_env_pool(cfg: LabrlConfig, model_dir: str, router: GenerationRouter | None) -> EnvWorkerPool:
    settings = EnvWorkerSettings(env_name=cfg.env.name, tokenizer_path=model_dir,
                                 sampling=sampling_spec(cfg, model_dir), limits=episode_limits(cfg),
                                 max_concurrent_episodes=cfg.rollout.max_concurrent_episodes)
    pin = cfg.rollout.env_worker_resource  # e.g. keep env workers on CPU-only nodes
    return EnvWorkerPool(cfg.rollout.num_env_workers, settings, router,
                         num_cpus=cfg.rollout.cpus_per_env_worker,
                         resources={pin: 0.001} if pin else None)


def loss_config(cfg: LabrlConfig) -> PolicyLossConfig:
    g = cfg.grpo
    return PolicyLossConfig(clip_low=g.clip_low, clip_high=g.clip_high, agg_mode=g.agg_mode,
                            kl_coef=g.kl_coef, entropy_coef=g.entropy_coef,
                            importance_sampling=g.importance_sampling)


def make_trainer(cfg: LabrlConfig, model_dir: str, placement: Placement | None = None) -> PolicyTrainerGroup:
    t = cfg.trainer
    settings = TrainerSettings(model_path=model_dir, num_ranks=t.num_ranks, cpus_per_rank=t.cpus_per_rank,
                               gpus_per_rank=t.gpus_per_rank, zero_stage=t.zero_stage, lr=t.lr,
                               weight_decay=t.weight_decay, warmup_steps=t.warmup_steps,
                               grad_clip=t.grad_clip, micro_batch_tokens=t.micro_batch_tokens,
                               gradient_checkpointing=t.gradient_checkpointing,
                               skip_zero_advantage=t.skip_zero_advantage, seed=cfg.seed,
                               temperature=cfg.generation.temperature)
    if placement is None:
        return PolicyTrainerGroup(settings)
    return PolicyTrainerGroup(settings, placement_group=placement.trainer_pg,
                              bundle_offset=placement.trainer_bundle_offset)


def sync_weights(trainer: PolicyTrainerGroup, workers: list, version: int, cfg: LabrlConfig) -> dict[str, float]:
    """Push the trainer's weights to every generation worker; returns `sync/` metrics."""
    stats = trainer.sync_weights(workers, version, cfg.sync.transport, cfg.sync.bucket_mb << 20,
                                 cfg.sync.timeout_s)
    return {f"sync/{k}": float(v) for k, v in dataclasses.asdict(stats).items()
            if isinstance(v, (int, float))}


def sleep_engines(workers: list, level: int, timeout_s: float) -> dict[str, float]:
    """Colocated mode, before a trainer step: every engine drains and releases its GPU memory."""
    t0 = time.perf_counter()
    out = _get_all([w.sleep.remote(level, timeout_s) for w in workers], timeout_s, f"sleep(level={level})")
    metrics = {"colocate/sleep_s": time.perf_counter() - t0}
    if all("freed_gb" in o for o in out):  # GPU engines: what the trainer gained
        metrics["colocate/freed_gb"] = sum(o["freed_gb"] for o in out)
    return metrics


def wake_engines(workers: list, tags: list[str], timeout_s: float) -> dict[str, float]:
    """Colocated mode, around the weight sync: wake "weights", sync, then wake "kv_cache"."""
    t0 = time.perf_counter()
    out = _get_all([w.wake_up.remote(tags, timeout_s) for w in workers], timeout_s, f"wake_up({tags})")
    key = "_".join(tags)
    return {f"colocate/wake_{key}_s": time.perf_counter() - t0,
            "colocate/generation_paused_s": max(o["paused_s"] for o in out)}


def _get_all(refs: list, timeout_s: float, what: str) -> list:
    try:
        return ray.get(refs, timeout=timeout_s + 30)
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(f"generation workers: {what} did not finish within {timeout_s + 30:.0f} s") from None


def answers(actor, timeout_s: float = 10.0) -> bool:
    """Whether an actor still answers a trivial call (a dead or wedged one does not)."""
    try:
        ray.get(actor.policy_version.remote(), timeout=timeout_s)
        return True
    except Exception:  # noqa: BLE001 - dead, restarting or hung: all count as gone
        return False


def wait_ready(handles: list, what: str, timeout_s: float) -> None:
    try:
        ray.get([h.ready.remote() for h in handles], timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(f"{what} not ready after {timeout_s:.0f}s") from None


def stop_generation_workers(workers: list, timeout_s: float = 60.0) -> None:
    """Shut the vLLM engines down (their worker processes too), then kill the actors."""
    refs = [w.shutdown.remote() for w in workers]
    try:
        ray.get(refs, timeout=timeout_s)
    except Exception as err:  # noqa: BLE001 - a dead or hung worker is killed below anyway
        logger.warning("generation worker shutdown: %s", err)
    for w in workers:
        ray.kill(w, no_restart=True)
