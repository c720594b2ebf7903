"""Typed, validated run configuration: YAML files plus dotted command-line overrides.

Every section is a pydantic model that forbids unknown keys, so a typo fails before any actor
starts, with the dotted name of the field in the message. `load_config(path, ["trainer.lr=1e-4"])`
is the one way configs are built (the CLI, tests and `ray job submit` entrypoints all use it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    """The policy. `path: null` builds the tiny local model (no downloads)."""

    path: str | None = Field(None, description="Local HF directory or cached hub id of the policy.")
    hidden_size: int = Field(128, gt=0, description="Tiny model only.")
    intermediate_size: int = Field(512, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(4, gt=0)
    num_kv_heads: int = Field(2, gt=0)
    dtype: Literal["float32", "bfloat16"] = "float32"


class EnvConfig(Section):
    name: str = Field("stoichiometry", description="Registered name or dotted import path.")
    difficulties: list[int] = Field(default_factory=lambda: [1], min_length=1)
    num_train_tasks: int = Field(4000, gt=0)
    num_heldout_tasks: int = Field(200, gt=0)
    max_turns: int = Field(6, gt=0, description="Assistant turns per episode before truncation.")
    episode_timeout_s: float = Field(120.0, gt=0)
    tool_timeout_s: float = Field(5.0, gt=0)


class SFTConfig(Section):
    """Behaviour cloning on the environment's reference-solver demonstrations."""

    enabled: bool = True
    num_demos: int = Field(1000, gt=0)
    steps: int = Field(150, ge=0)
    batch_size: int = Field(32, gt=0)
    lr: float = Field(3e-3, gt=0)


class GenerationConfig(Section):
    num_workers: int = Field(1, gt=0)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    tensor_parallel_size: int = Field(1, gt=0)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(96, gt=0, description="Per assistant turn.")
    max_model_len: int = Field(768, gt=0, description="Whole episode, prompt included.")
    kv_cache_gb: float = Field(1.0, gt=0, description="CPU KV cache (VLLM_CPU_KVCACHE_SPACE).")
    gpu_memory_utilization: float = Field(0.5, gt=0, lt=1)
    enforce_eager: bool = True


class RolloutConfig(Section):
    num_env_workers: int = Field(2, gt=0)
    cpus_per_env_worker: float = Field(0.25, gt=0)
    max_concurrent_episodes: int = Field(64, gt=0, description="Per env worker.")
    max_staleness: int = Field(1, ge=0, description="Policy versions a trained trajectory may lag; 0 = synchronous.")


class GRPOConfig(Section):
    num_steps: int = Field(20, ge=0)
    batch_size: int = Field(64, gt=0, description="Trajectories per optimizer step.")
    group_size: int = Field(8, gt=1, description="Trajectories per task (one GRPO group).")
    advantage_estimator: str = "grpo"
    clip_low: float = Field(0.2, ge=0)
    clip_high: float = Field(0.28, ge=0)
    kl_coef: float = Field(0.0, ge=0)
    entropy_coef: float = Field(0.0, ge=0)
    agg_mode: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "token-mean"
    importance_sampling: Literal["none", "token_tis", "seq_mask"] = "token_tis"


class TrainerConfig(Section):
    num_ranks: int = Field(1, gt=0)
    cpus_per_rank: float = Field(1.0, gt=0)
    gpus_per_rank: float = Field(0.0, ge=0)
    zero_stage: Literal[0, 1, 2, 3] = 0
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    micro_batch_tokens: int = Field(8192, gt=0, description="Token budget of one packed micro-batch.")
    gradient_checkpointing: bool = False


class SyncConfig(Section):
    transport: Literal["shm"] = "shm"
    bucket_mb: int = Field(64, gt=0)
    timeout_s: float = Field(120.0, gt=0)


class EvalConfig(Section):
    num_tasks: int = Field(200, gt=0, description="Held-out tasks evaluated after SFT and after GRPO.")
    temperature: float = Field(1.0, ge=0)


class LoggingConfig(Section):
    runs_root: str = "runs"
    wandb_project: str = "labrl"
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    progress_bar: bool = True


class ClusterConfig(Section):
    address: str | None = Field(None, description="None: start a local Ray cluster; 'auto': join one.")
    num_cpus: int | None = Field(None, gt=0, description="Local cluster only; may over-subscribe.")


class LabrlConfig(Section):
    run_name: str = "default"
    seed: int = 0
    model: ModelConfig = ModelConfig()
    env: EnvConfig = EnvConfig()
    sft: SFTConfig = SFTConfig()
    generation: GenerationConfig = GenerationConfig()
    rollout: RolloutConfig = RolloutConfig()
    grpo: GRPOConfig = GRPOConfig()
    trainer: TrainerConfig = TrainerConfig()
    sync: SyncConfig = SyncConfig()
    eval: EvalConfig = EvalConfig()
    logging: LoggingConfig = LoggingConfig()
    cluster: ClusterConfig = ClusterConfig()

    @model_validator(mode="after")
    def _check_combinations(self) -> "LabrlConfig":
        g = self.grpo
        if g.batch_size % g.group_size:
            raise ValueError(f"grpo.batch_size ({g.batch_size}) must be divisible by "
                             f"grpo.group_size ({g.group_size})")
        if self.generation.max_new_tokens >= self.generation.max_model_len:
            raise ValueError("generation.max_new_tokens must be smaller than generation.max_model_len")
        if self.model.path is None and self.model.hidden_size % self.model.num_heads:
            raise ValueError("model.hidden_size must be divisible by model.num_heads")
        if self.model.path is None and self.model.num_heads % self.model.num_kv_heads:
            raise ValueError("model.num_heads must be divisible by model.num_kv_heads")
        return self


class ConfigError(ValueError):
    """A config that cannot run; the message names the offending field."""


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (1e-4, true, [1,2])."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like section.field=value")
    dotted, value_text = override.split("=", 1)
    keys = dotted.strip().split(".")
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {key!r} is not a section")
    node[keys[-1]] = yaml.safe_load(value_text)


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(config)"
        lines.append(f"  {where}: {e['msg']}")
    return "invalid config:\n" + "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> LabrlConfig:
    """Read YAML (the default config when `path` is None), apply overrides, validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    for override in overrides or []:
        apply_override(raw, override)
    try:
        return LabrlConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None
