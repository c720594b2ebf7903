"""Checks that need a registry above `configs/` (environments, advantage estimators, weight-sync
transports, the model on disk), run on the validated config before Ray starts.

Together with the schema's own validators this is the whole of "a bad config fails before any
actor starts": every check raises `ConfigError` naming the field.
"""

from __future__ import annotations

import logging
import os

from actors.weight_sync import check_transport
from configs.loading import ConfigError
from configs.schema import LabrlConfig
from envs.registry import EnvSpec, UnknownEnvironmentError, get_env_spec
from launch.memory_model import GB, WARN_FRACTION, MemoryPrediction, format_table, predict_memory
from models.chat_kit import PRESETS as CHAT_PRESETS
from models.loading import resolve_model_path
from trainers.grpo.advantages import ADVANTAGE_ESTIMATORS

logger = logging.getLogger(__name__)
# Refuse only what exceeds all of the machine's RAM: the node total adds per-role peaks that do not
# all happen at once (a conservative sum), and what other jobs hold changes from minute to minute.
HOST_USABLE_FRACTION = 1.0


def preflight(cfg: LabrlConfig, *, check_memory: bool = True, training: bool = True) -> EnvSpec:
    """Raise `ConfigError` for anything that would fail once actors run; returns the env spec.
    `training=False` (sampling only: eval, profile): the memory check leaves out the trainer."""
    try:
        spec = get_env_spec(cfg.env.name, cfg.env.options)
    except UnknownEnvironmentError as err:
        raise ConfigError(f"env.name: {err}") from None
    if cfg.grpo.advantage_estimator not in ADVANTAGE_ESTIMATORS:
        raise ConfigError(f"grpo.advantage_estimator={cfg.grpo.advantage_estimator!r} is not registered; "
                          f"known: {sorted(ADVANTAGE_ESTIMATORS)}")
    try:
        check_transport(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.rollout.autoscale.enabled and cfg.placement.mode == "colocated":
        raise ConfigError("rollout.autoscale.enabled: placement.mode=colocated binds each engine to a trainer "
                          "rank's GPU, so engines cannot be added or retired during the run")
    if cfg.model.path is not None:
        resolve_model_path(cfg.model.path)  # raises ModelNotFoundError naming the path
    elif cfg.model.build == "chat" and cfg.model.chat_preset not in CHAT_PRESETS:
        raise ConfigError(f"model.chat_preset={cfg.model.chat_preset!r} is not a model-kit preset; "
                          f"known: {sorted(CHAT_PRESETS)}")
    if cfg.sft.enabled and spec.agent is not None:
        raise ConfigError(f"sft.enabled: {cfg.env.name!r} is an agent program, which has no scripted solver to "
                          "play demonstrations; set sft.enabled=false (and model.path= a warmed-up checkpoint)")
    if cfg.sft.enabled and not spec.has_reference:
        raise ConfigError(f"sft.enabled: environment {cfg.env.name!r} has no reference solver to play "
                          "demonstrations; give it one (see its adapter's options) or set sft.enabled=false")
    if cfg.sft.enabled and cfg.sft.novice_fraction > 0 and spec.novice_policy is None:
        logger.warning("sft.novice_fraction=%g: environment %r has no novice solver; its demonstrations "
                       "are all played by the reference solver", cfg.sft.novice_fraction, cfg.env.name)
    if check_memory:
        check_memory_fit(cfg, training=training)
    return spec


def novice_fraction(cfg: LabrlConfig, spec: EnvSpec) -> float:
    """The share of demonstrations the novice solver plays (0 where the environment has none)."""
    return cfg.sft.novice_fraction if spec.novice_policy is not None else 0.0


def host_memory_gb() -> tuple[float, float]:
    """(available, total) RAM of this machine in GB: what other processes leave (MemAvailable on
    Linux), and all of it."""
    import psutil

    memory = psutil.virtual_memory()
    return memory.available / GB, memory.total / GB


def gpu_memory_gb() -> float | None:
    """One GPU's memory where this process sees one (None otherwise: GPUs are checked only then)."""
    try:
        import torch

        return torch.cuda.get_device_properties(0).total_memory / GB if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - no usable CUDA here: nothing to check against
        return None


def _joins_cluster(cfg: LabrlConfig) -> bool:
    """As cluster.ray_cluster.connect decides: another cluster's nodes, not this machine, hold the roles."""
    env = os.environ.get("RAY_ADDRESS") or None
    target = env if cfg.cluster.address in (None, "auto") and env else cfg.cluster.address
    return target not in (None, "local")


def _advice(cfg: LabrlConfig, pred: MemoryPrediction) -> str:
    """What to change, largest saving first, from the prediction's parts summed over roles."""
    t, g = cfg.trainer, cfg.generation
    part = lambda *names, role="trainer": sum(r.parts.get(n, 0.0) * r.count for r in pred.roles  # noqa: E731
                                              for n in names if r.role.startswith(role))
    if t.use_gpu:
        states = (f"more trainer.num_ranks (now {t.num_ranks}) or a higher trainer.zero_stage (now {t.zero_stage}; "
                  "3 shards weights, gradients and Adam states)")
    else:  # measured: on CPU every rank keeps whole-model buffers, and stage 3 keeps the most
        states = (f"fewer trainer.num_ranks (now {t.num_ranks}; each rank on the node holds the whole fp32 model "
                  "and DeepSpeed's buffers)" + ("" if t.zero_stage == 2 else f" or trainer.zero_stage=2 (now "
                                                f"{t.zero_stage}; the least per rank on CPU, stage 3 the most)"))
    options = [(part("weights", "grads", "optimizer", "deepspeed buffers"), states),
               (part("activations", "logits", "token buffers"),
                f"trainer.micro_batch_tokens (now {t.micro_batch_tokens})"
                + ("" if t.gradient_checkpointing else " or trainer.gradient_checkpointing=true")),
               (part("kv cache", role="engine"),
                f"generation.kv_cache_gb (now {g.kv_cache_gb:g} GiB x {g.num_workers} engine(s))"),
               (part("activations", "logits", role="sft"), f"sft.batch_size (now {cfg.sft.batch_size})"),
               (part("gpu_memory_utilization x GPU", role="engine"),
                f"generation.gpu_memory_utilization (now {g.gpu_memory_utilization:g})")]
    return "; ".join(text for gb, text in sorted(options, key=lambda o: -o[0]) if gb >= 0.05)


def check_memory_fit(cfg: LabrlConfig, *, training: bool = True, host: tuple[float, float] | None = None,
                     gpu_gb: float | None = None) -> MemoryPrediction | None:
    """Refuse a layout whose predicted peak cannot fit; warn when it comes close to what is free.

    CPU runs: the node total against this machine's RAM. Refused above HOST_USABLE_FRACTION of
    MemTotal (it cannot fit here: a fixed bound, so the check does not flake with other jobs'
    memory), warned above WARN_FRACTION of MemAvailable (it may not fit now). Only
    for a local Ray instance; joining a cluster, its nodes are not this machine, so it only warns.
    GPU runs: each GPU's total against one GPU's memory, when this process sees a GPU (or `gpu_gb`).
    `placement.check_fit=false` turns refusals into warnings, as it does for Ray resources."""
    gpu_run = cfg.trainer.use_gpu or cfg.generation.gpus_per_worker > 0
    gpu_gb = gpu_gb if gpu_gb is not None else (gpu_memory_gb() if gpu_run else None)
    try:
        pred = predict_memory(cfg, gpu_memory_gb=gpu_gb, training=training)
    except (KeyError, ValueError, OSError) as err:  # a model this model cannot size: nothing to refuse
        logger.warning("memory check skipped: cannot size the model (%s: %s)", type(err).__name__, err)
        return None
    logger.info("predicted peak memory per role:\n%s", format_table(pred))
    if gpu_run:  # (where, GB, refusal bound, warning bound, what the bounds are)
        checks = [(f"GPU {i}", gb, gpu_gb, WARN_FRACTION * gpu_gb, f"{gpu_gb:.1f} GB of GPU memory")
                  for i, gb in pred.per_gpu_gb.items() if gpu_gb]
        refuse = cfg.placement.check_fit
    else:
        available, total = host or host_memory_gb()
        limit = HOST_USABLE_FRACTION * total
        checks = [("node total (host RAM)", pred.node_total_gb, limit, WARN_FRACTION * available,
                   f"host RAM: MemTotal {total:.1f} GB (refused above {limit:.1f}), available now {available:.1f} GB")]
        refuse = cfg.placement.check_fit and not _joins_cluster(cfg)
    roles = ", ".join(f"{r.role}{f' x{r.count}' if r.count > 1 else ''} {r.total:.2f} GB"
                      for r in sorted(pred.roles, key=lambda r: -r.total * r.count)[:4])
    for where, gb, limit, warn_at, what in checks:
        text = f"memory: predicted peak of {where} {gb:.1f} GB ({roles}); {what}. To fit, lower: {_advice(cfg, pred)}"
        if gb > limit and refuse:
            raise ConfigError(text)
        if gb > min(limit, warn_at):
            logger.warning("%s", text)
    return pred
