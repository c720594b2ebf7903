"""The run configuration's schema: one pydantic section per component, validated once.

This module sits at the bottom of labrl's import graph: every component takes its own section
(`TrainerConfig`, `GRPOConfig`, `GenerationConfig`, ...) directly, so no field is copied into a
second settings class and every rule below is checked once, before Ray starts. Sections forbid
unknown keys, so a typo fails with the dotted name of the field. `configs.loading.load_config`
reads YAML plus `section.field=value` overrides into `LabrlConfig`.

Rules that need a registry living higher up (advantage estimators, weight-sync transports,
environments) are checked by `launch.preflight`, also before Ray starts.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator


from configs.section import Section
from configs.training import GRPOConfig, TrainerConfig

__all__ = ["GRPOConfig", "TrainerConfig", "Section"]  # the training sections live in configs/training.py


class ModelConfig(Section):
    """The policy. `path: null` builds the tiny local model (no downloads)."""

    path: str | None = Field(None, description="Local HF directory or cached hub id of the policy.")
    build: Literal["tiny", "chat"] = Field("tiny", description="What `path: null` builds: `tiny`, the character "
        "model of the shape fields below; `chat`, model kit preset `chat_preset` (models/chat_kit.py).")
    chat_preset: str = Field("chat-cpu", description="build=chat: BPE tokenizer, tool template, random Qwen2.")
    vocab_size: int = Field(16384, gt=263, description="build=chat; the generated corpus stops near 1.5k tokens.")
    hidden_size: int = Field(128, gt=0, description="Tiny model only.")
    intermediate_size: int = Field(512, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(4, gt=0)
    num_kv_heads: int = Field(2, gt=0)
    dtype: Literal["float32", "bfloat16"] = "float32"


class EnvConfig(Section):
    name: str = Field("stoichiometry", description="Registered name or dotted import path.")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings of an environment built from config (nemo_gym, mcp, aviary_http, or a "
                    "factory at an import path): passed to its factory as keywords, checked before "
                    "Ray starts. Bundled environments take none.")
    difficulties: list[int] = Field(default_factory=lambda: [1], min_length=1)
    num_train_tasks: int = Field(4000, gt=0)
    num_heldout_tasks: int = Field(200, gt=0)
    max_turns: int = Field(6, gt=0, description="Assistant turns per episode before truncation.")
    episode_timeout_s: float = Field(120.0, gt=0)
    score_truncated_turns: bool = Field(
        False, description="A turn cut at generation.max_new_tokens: false ends the episode unscored "
                           "(reward 0, reason truncated_length); true hands its text to the environment "
                           "like any turn (TRL's default). Either way the trajectory counts as truncated.")
    tool_timeout_s: float = Field(5.0, gt=0, description="One tool call's wall-clock limit; a call that runs "
                                                          "longer becomes an error observation.")
    task_filter_profile: str | None = Field(
        None, description="Reward profile JSONL (`labrl profile`): training drops tasks whose profiled "
                          "reward has zero variance (no GRPO signal); see launch/curriculum.py.")
    profile_train_tasks: int = Field(
        0, ge=0, description="Profile the start policy (after SFT) on this many training tasks, spread over "
                             "the difficulties, `profile_samples` samples each, before GRPO: the in-run "
                             "reward profile filters and orders training like task_filter_profile. 0: off.")
    profile_samples: int = Field(4, ge=2, description="Samples per task of the in-run profile (variance needs 2+).")
    curriculum: Literal["shuffle", "easy_first", "hard_first"] = Field(
        "shuffle", description="Training task order: seeded shuffle, or by profiled pass rate "
                               "(needs task_filter_profile or profile_train_tasks).")

    @model_validator(mode="after")
    def _curriculum_needs_profile(self) -> "EnvConfig":
        if self.task_filter_profile is not None and self.profile_train_tasks:
            raise ValueError("env.task_filter_profile and env.profile_train_tasks are two sources of one "
                             "profile; set one")
        if self.curriculum != "shuffle" and self.task_filter_profile is None and not self.profile_train_tasks:
            raise ValueError(f"env.curriculum={self.curriculum!r} needs a reward profile: "
                             "env.task_filter_profile or env.profile_train_tasks")
        return self


class SFTConfig(Section):
    """Behaviour cloning on the environment's scripted-solver demonstrations."""

    enabled: bool = True
    num_demos: int = Field(1000, gt=0, description="Demonstration tasks: the first training tasks, taken "
                           "round-robin over `difficulties`.")
    difficulties: list[int] | None = Field(
        None, min_length=1, description="Difficulties demonstrated (a subset of env.difficulties); None: all. "
        "E.g. [1]: GRPO has to carry what SFT showed on the easiest level to the harder ones.")
    novice_fraction: float = Field(
        0.0, ge=0, lt=1, description="Share of demonstrations played by the environment's novice "
        "solver (a typical human mistake; needs an env that has one). They are kept whether or not "
        "they succeed: an imperfect demonstrator, whose mistakes GRPO has to unlearn.")
    steps: int = Field(150, ge=0)
    batch_size: int = Field(32, gt=0)
    lr: float = Field(3e-3, gt=0)
    numerics: Literal["any_x86", "intel_x86", "this_machine"] = Field(
        "intel_x86", description="What the SFT process's arithmetic may depend on (the kernels' instruction "
        "set and the thread count decide how sums are rounded, and SFT amplifies a rounding difference into "
        "another checkpoint). `any_x86`: the same checkpoint for a seed on any x86-64 CPU with AVX2, Intel or "
        "AMD: torch's kernels pinned to AVX2, MKL's reproducibility mode on its COMPATIBLE (SSE2) branch, the "
        "only one MKL honours on non-Intel CPUs; its GEMMs run 2.5x slower than the AVX2 branch (README). "
        "`intel_x86`: the same on any Intel CPU with AVX2 (MKL's AVX2 branch; on an AMD CPU MKL ignores it "
        "and dispatches as it likes, so the checkpoint differs). `this_machine`: the CPU's fastest kernels; "
        "the same checkpoint only on this machine. The pinned modes also run deterministic algorithms.")
    num_threads: int = Field(2, gt=0, description="torch threads of the SFT process; fixed, not the machine's "
                             "core count, because with pinned numerics the split of sums follows it.")


class GenerationConfig(Section):
    num_workers: int = Field(1, gt=0)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    tensor_parallel_size: int = Field(1, gt=0)
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of training rollouts; "
                               "the trainer optimises softmax(logits / temperature).")
    top_p: float = Field(1.0, gt=0, le=1)
    seeded_sampling: bool = Field(False, description="Seed every request from (seed, group, member, turn): "
                                  "a rerun or resumed run on the same weights samples the same tokens. "
                                  "Off by default: per-request generators cost vLLM some speed.")
    max_new_tokens: int = Field(96, gt=0, description="Per assistant turn.")
    min_new_tokens: int = Field(0, ge=0, description="Per assistant turn, EOS suppressed until then (benchmarks "
                                "use it for equal-length completions). The sampler's logprobs then leave "
                                "out EOS's probability, a small mismatch the IS correction sees.")
    max_model_len: int = Field(768, gt=0, description="Whole episode, prompt included.")
    kv_cache_gb: float = Field(1.0, gt=0, description="CPU KV cache (VLLM_CPU_KVCACHE_SPACE).")
    kv_block_size: int | None = Field(
        None, gt=0, description="Tokens per KV-cache block. vLLM reuses a prompt's KV only in whole blocks, so "
                                "a GRPO group shares its prompt's prefill only up to the last full block. None: "
                                "32 on CPU (vLLM's 128 shares nothing below 128 prompt tokens), vLLM's own on GPU.")
    gpu_memory_utilization: float = Field(0.5, gt=0, lt=1)
    enforce_eager: bool = Field(
        False, description="True: run vLLM's model eagerly. False (vLLM's default): torch.compile it at start-up "
                           "(10-12 s once per model shape, cached under ~/.cache/vllm); on CPU that removes "
                           "much of a decode step's per-op overhead (tiny model: +17-35% completions/s).")
    cpu_gemm: Literal["packed", "plain"] = Field(
        "packed", description="CPU engines (direct reload): packed: linear layers compute through oneDNN copies of "
                              "the weights, rebuilt after every sync (decode GEMMs ~20% faster; one more copy of "
                              "the weights in memory); plain: F.linear on the synced weights (actors/vllm_plugin.py).")
    sleep_level: Literal[0, 1, 2] = Field(
        0, description="placement.mode=colocated: engines sleep while the trainer steps, giving it their "
                       "GPU memory. 1: weights to host memory, KV cache dropped; 2: weights dropped too "
                       "(the weight sync after the step refills them; cheapest). 0: engines stay resident, "
                       "so their memory and the trainer's must fit side by side. Needs rollout.max_staleness=0.")

    @model_validator(mode="after")
    def _check_gpu_layout(self) -> "GenerationConfig":
        """On GPU every tensor-parallel shard needs its own whole GPU (cluster/placement.py gives
        each shard a one-GPU bundle); any other count is an engine that cannot start or idles GPUs."""
        g, tp = self.gpus_per_worker, self.tensor_parallel_size
        if g > 0 and (g > 1 or tp > 1) and g != tp:
            raise ValueError(f"generation.gpus_per_worker ({g:g}) must equal generation.tensor_parallel_size "
                             f"({tp}) on GPU: one GPU per tensor-parallel shard")
        return self


class AutoscaleConfig(Section):
    """`rollout.autoscale`: grow or shrink rollout capacity from the pipeline's own timers
    (`launch/autoscale.py` decides, `launch/elastic.py` applies; every decision is logged with its
    reason in `scale_events.jsonl` and charted in `capacity.png`).

    After each step the policy averages the last `window_steps` steps. Trainer waiting for rollouts
    more than `wait_high` of the step: rollouts are the bottleneck; env (tool) time above
    `env_share_high` of the episodes' time adds env workers, otherwise engines. Trainer waiting less
    than `wait_low` with nothing left in flight (rollouts waited for the trainer): one member of the
    larger-than-needed kind is retired (`scale_down`). After a change, `cooldown_steps` steps pass
    before the next decision, so its effect is measured first."""

    enabled: bool = False
    min_engines: int = Field(1, gt=0)
    max_engines: int = Field(4, gt=0)
    min_env_workers: int = Field(1, gt=0)
    max_env_workers: int = Field(16, gt=0)
    window_steps: int = Field(2, gt=0, description="Steps averaged per decision.")
    cooldown_steps: int = Field(2, ge=0, description="Steps after a change before the next decision.")
    wait_high: float = Field(0.25, gt=0, lt=1, description="Share of step time the trainer waits for "
                                                          "rollouts above which capacity is added.")
    wait_low: float = Field(0.05, ge=0, lt=1, description="Share below which (nothing in flight) capacity "
                                                          "is retired.")
    env_share_high: float = Field(0.5, gt=0, lt=1, description="Env (tool) share of episode time above "
                                                               "which env workers are added instead of engines.")
    env_workers_step: int = Field(1, gt=0, description="Env workers added or retired per decision.")
    scale_down: bool = Field(True, description="Retire capacity when rollouts wait for the trainer.")

    @model_validator(mode="after")
    def _check_bounds(self) -> "AutoscaleConfig":
        if self.min_engines > self.max_engines:
            raise ValueError(f"rollout.autoscale.min_engines ({self.min_engines}) > max_engines ({self.max_engines})")
        if self.min_env_workers > self.max_env_workers:
            raise ValueError(f"rollout.autoscale.min_env_workers ({self.min_env_workers}) > max_env_workers "
                             f"({self.max_env_workers})")
        if self.wait_low >= self.wait_high:
            raise ValueError(f"rollout.autoscale.wait_low ({self.wait_low}) must be below wait_high ({self.wait_high})")
        return self


class RolloutConfig(Section):
    num_env_workers: int = Field(2, gt=0)
    cpus_per_env_worker: float = Field(0.25, gt=0)
    max_concurrent_episodes: int = Field(64, gt=0, description="Per env worker.")
    max_staleness: int = Field(1, ge=0, description="Policy versions a trained trajectory may lag; 0 = synchronous.")
    env_worker_resource: str | None = Field(
        None, description="Custom Ray resource every env worker requires, e.g. 'cpu_node' to pin them to "
                          "CPU-only nodes started with `ray start --resources '{\"cpu_node\": 1}'` "
                          "(each worker takes 0.001 of it). None: any node.")
    capacity_timeout_s: float = Field(
        300.0, gt=0, description="How long an engine or env worker added during the run (`labrl scale-run`, "
                                 "autoscale) waits for its resources (e.g. a node the Ray autoscaler is "
                                 "adding); then the request is given up, logged, and the run goes on.")
    autoscale: AutoscaleConfig = Field(default_factory=AutoscaleConfig)

    @model_validator(mode="after")
    def _check_resource_name(self) -> "RolloutConfig":
        if self.env_worker_resource in ("CPU", "GPU", "memory", "object_store_memory"):
            raise ValueError(f"rollout.env_worker_resource must be a custom resource name, not "
                             f"{self.env_worker_resource!r} (use cpus_per_env_worker for CPUs)")
        return self


class SyncConfig(Section):
    """How the trainer pushes weights to the engines after every step (actors/weight_sync/).

    shm: CPU shared memory, engines on the trainer's node. shm_inplace: the same node, engines' weights
    kept in shared memory and written in place by the trainer (one copy: ~1.1-1.5x the memcpy floor
    against shm's 3.5-4x; a failure mid-write leaves the engines unhealthy instead of untouched). gloo: CPU broadcast from trainer rank 0
    over TCP, any node (CPU engines elsewhere than the trainer). nccl: GPU broadcast from trainer rank 0,
    any node. cuda_ipc: GPU handles, engines sharing the trainer's GPUs (placement.mode=colocated).
    """

    transport: str = Field("shm", description="A name in actors/weight_sync's transport registry; whether it "
                                              "fits the placement is checked before Ray starts.")
    bucket_mb: float = Field(64, gt=0, description="Bucket size of the streaming transports (MiB).")
    timeout_s: float = Field(120.0, gt=0)
    background_reload: bool = Field(
        True, description="shm: a sync returns once every engine has drained and closed its gate to requests; "
                          "the trainer computes its next step while the engines reload, requests wait at the "
                          "gate (none is served by the old weights after the sync), a failed reload surfaces at "
                          "the next sync (the engine marks itself unhealthy meanwhile). false: wait for the "
                          "reloads. Other transports always wait.")
    pause_mode: Literal["wait", "abort", "keep", "recompute"] = Field(
        "wait", description="What a sync does to requests running on an engine (actors/generation.py). "
                            "wait: finish them first (one version per turn); abort: rerun them from scratch "
                            "after; keep: pause them in place and continue on the new weights with their KV "
                            "cache; recompute: as keep, with their KV recomputed under the new weights. "
                            "keep/recompute turns can span two versions (both are recorded).")


class EvalConfig(Section):
    num_tasks: int = Field(200, gt=0, description="Held-out tasks evaluated after SFT and after GRPO (taken "
                           "round-robin over the difficulties, so every level is in any prefix).")
    samples_per_task: int = Field(1, gt=0, description="Samples per held-out task in those evaluations: "
                                  "pass@1 averages them; intervals treat tasks as the unit.")
    temperature: float = Field(1.0, ge=0, description="`labrl eval` only; a training run's held-out evals "
                               "sample at generation.temperature, the distribution GRPO optimises.")
    every_steps: int = Field(0, ge=0, description="Held-out curve during GRPO: evaluate the first `curve_tasks` "
                             "held-out tasks every N steps, logged under `eval/` (W&B, metrics.jsonl) with "
                             "`eval/updates` and drawn beside the training reward; its points before the first "
                             "and after the last step are the full evaluations' episodes of those tasks. 0: off "
                             "(only the full evaluations after SFT and after GRPO).")
    curve_tasks: int = Field(64, gt=0, description="Held-out tasks of each curve point (the same ones every time, "
                             "the first of the `num_tasks` evaluated after SFT and GRPO, every level among them).")


class LoggingConfig(Section):
    runs_root: str = "runs"
    wandb_project: str = "labrl"
    wandb_mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline: W&B files in the run directory (`wandb sync` later); "
                               "the WANDB_MODE environment variable overrides.")
    group: str | None = Field(None, description="W&B run group (e.g. one sweep or ablation).")
    sample_every: int = Field(10, ge=0, description="Log sample trajectories every N GRPO steps "
                                                     "(W&B table + samples.jsonl); 0 = never.")
    num_samples: int = Field(4, gt=0, description="Trajectories logged each time.")
    progress_bar: bool = True


HealthCheck = Literal["entropy_collapse", "reward_collapse", "truncation", "logprob_mismatch",
                      "nonfinite_loss"]


class MonitorConfig(Section):
    """Health alarms checked on every GRPO step's metrics (monitor/health.py).

    Each alarm logs a console warning and sends a W&B alert; checks named in `stop_on` also stop
    the run cleanly (weights exported, summary written). A threshold of null disables its check.
    """

    enabled: bool = True
    entropy_min: float | None = Field(0.02, ge=0, description="Alarm when train/entropy (nats) falls below.")
    reward_std_min: float = Field(1e-6, ge=0, description="Batch reward std at or below this is 'no signal'.")
    reward_collapse_steps: int = Field(5, gt=0, description="Consecutive no-signal steps before alarming.")
    reward_drop: float | None = Field(None, gt=0, description="Alarm when the windowed reward mean falls this "
                                                              "far below its best so far.")
    reward_window: int = Field(5, gt=0, description="Steps averaged for reward_drop.")
    truncation_rate_max: float | None = Field(0.5, ge=0, le=1, description="Alarm above this truncation rate.")
    token_mult_prob_error_max: float | None = Field(1.05, ge=1, description="Sampler/trainer mismatch bound "
                                                                           "(NeMo RL: healthy < 1.05); checked on steps whose "
                                                                           "samples are all on-policy (staleness 0).")
    sampler_logprob_diff_max: float | None = Field(None, gt=0, description="Bound on mean |trainer - "
                                                                          "sampler| logprob per token.")
    nonfinite_loss_max_consecutive: int = Field(3, gt=0, description="NaN/Inf-loss steps in a row that "
                                                                     "stop the run (if in stop_on).")
    stop_on: list[HealthCheck] = Field(default_factory=lambda: ["nonfinite_loss"],
                                       description="Checks whose alarm stops the run.")
    repeat_every: int = Field(10, gt=0, description="Steps between repeated alerts of a persisting alarm.")


class CheckpointConfig(Section):
    """Trainer + driver state for `labrl train --resume RUN_DIR` (launch/run_state.py), and what a dead
    trainer rank is restored from. Also written on SIGTERM/Ctrl-C. A save is atomic: the driver state
    naming it is written last, so a kill half-way leaves the previous checkpoint as the one used."""

    every_steps: int = Field(4, ge=0, description="Save after every N-th GRPO step; 0: no step trigger.")
    every_minutes: float = Field(30.0, ge=0, description="Also save after a step when this long has passed "
                                                         "since the last save; 0: no time trigger.")
    keep_last: int = Field(2, gt=0, description="Complete checkpoints kept on disk; older ones are deleted.")


class ClusterConfig(Section):
    address: str | None = Field(None, description="None (and no RAY_ADDRESS): start labrl's own local Ray "
                                                  "instance, never another one found on the machine; 'auto' "
                                                  "or host:port: join that cluster (RAY_ADDRESS does too).")
    num_cpus: int | None = Field(None, gt=0, description="Local cluster only; may over-subscribe.")
    connect_timeout_s: float = Field(180.0, gt=0, description="Limit on starting the local Ray instance or "
                                                              "joining the cluster, then fail naming the address; "
                                                              "an address where no GCS listens fails in seconds.")


class PlacementConfig(Section):
    """Where the roles' actors go (cluster/placement.py builds one placement group layout from this).

    disaggregated: generation engines, trainer ranks and env workers hold separate resources.
    colocated: engine i shares trainer rank i's bundle (and GPU); tensor_parallel_size must be 1.
    """

    mode: Literal["disaggregated", "colocated"] = "disaggregated"
    check_fit: bool = Field(True, description="Fail before any actor starts when the cluster cannot hold a "
                                              "role; set false on autoscaling clusters (nodes appear on demand).")
    ready_timeout_s: float = Field(600.0, gt=0, description="Wait for placement-group reservations, then fail "
                                                            "naming the roles still pending.")


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
    placement: PlacementConfig = PlacementConfig()
    monitor: MonitorConfig = MonitorConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()

    @model_validator(mode="after")
    def _check_combinations(self) -> "LabrlConfig":
        g = self.grpo
        if g.batch_size % g.group_size:
            raise ValueError(f"grpo.batch_size ({g.batch_size}) must be divisible by "
                             f"grpo.group_size ({g.group_size})")
        if self.generation.max_new_tokens >= self.generation.max_model_len:
            raise ValueError("generation.max_new_tokens must be smaller than generation.max_model_len")
        if self.generation.min_new_tokens > self.generation.max_new_tokens:
            raise ValueError(f"generation.min_new_tokens ({self.generation.min_new_tokens}) must be at most "
                             f"generation.max_new_tokens ({self.generation.max_new_tokens})")
        if self.model.path is None and self.model.hidden_size % self.model.num_heads:
            raise ValueError("model.hidden_size must be divisible by model.num_heads")
        if self.model.path is None and self.model.num_heads % self.model.num_kv_heads:
            raise ValueError("model.num_heads must be divisible by model.num_kv_heads")
        if self.model.path is None and self.model.build == "tiny" and self.model.hidden_size < 32 * self.model.num_heads:
            raise ValueError("model.hidden_size / model.num_heads < 32: heads under 32 dimensions do not run in "
                             "vLLM's CPU attention (vLLM 0.32 kills the engine at the first request)")
        if unknown := set(self.sft.difficulties or ()) - set(self.env.difficulties):
            raise ValueError(f"sft.difficulties {sorted(unknown)} are not in env.difficulties "
                             f"{self.env.difficulties}: demonstrations come from the training tasks")
        return self

    @model_validator(mode="after")
    def _check_colocation(self) -> "LabrlConfig":
        """Colocated engines live inside trainer ranks' bundles: one engine per rank, one GPU shared."""
        g, t = self.generation, self.trainer
        if g.sleep_level and self.placement.mode != "colocated":
            raise ValueError(f"generation.sleep_level={g.sleep_level} frees GPU memory for a trainer sharing the "
                             "GPU: it needs placement.mode=colocated")
        if g.sleep_level and self.rollout.max_staleness:
            raise ValueError(f"generation.sleep_level={g.sleep_level}: engines sleep while the trainer steps, so "
                             f"nothing can generate ahead; set rollout.max_staleness=0 (got "
                             f"{self.rollout.max_staleness})")
        if self.placement.mode != "colocated":
            return self
        if g.tensor_parallel_size > 1:
            raise ValueError("placement.mode=colocated needs generation.tensor_parallel_size=1 (an engine "
                             "shares a single trainer rank's GPU)")
        if g.num_workers > t.num_ranks:
            raise ValueError(f"placement.mode=colocated: generation.num_workers ({g.num_workers}) must not "
                             f"exceed trainer.num_ranks ({t.num_ranks}): engine i shares rank i's bundle")
        if (g.gpus_per_worker > 0) != (t.gpus_per_rank > 0):
            raise ValueError("placement.mode=colocated: set both generation.gpus_per_worker and "
                             "trainer.gpus_per_rank above 0 (shared GPUs) or both to 0 (CPU)")
        if g.gpus_per_worker + t.gpus_per_rank > 1 + 1e-9:
            raise ValueError(f"placement.mode=colocated: generation.gpus_per_worker ({g.gpus_per_worker:g}) + "
                             f"trainer.gpus_per_rank ({t.gpus_per_rank:g}) must be at most 1 (one shared GPU)")
        return self
