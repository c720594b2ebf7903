"""The training sections of the run configuration: the GRPO step and the DeepSpeed trainer
(kept apart from configs/schema.py, which re-exports them, to keep each file small)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from configs.section import Section


class GRPOConfig(Section):
    """The GRPO step: batch shape, advantage estimator, and the clipped policy loss
    (`trainers/grpo/losses.py` takes this section as it is)."""

    num_steps: int = Field(20, ge=0)
    batch_size: int = Field(64, gt=0, description="Trajectories per optimizer step.")
    group_size: int = Field(8, gt=1, description="Trajectories per task (one GRPO group).")
    advantage_estimator: str = Field(
        "grpo", description="A name in trainers/grpo/advantages.py's registry (grpo, dr_grpo, rloo, "
                            "reinforce_pp_baseline, or one registered by the user); checked before Ray starts.")
    ppo_epochs: int = Field(1, gt=0, description="Passes over each batch.")
    num_mini_batches: int = Field(1, gt=0, description="Optimizer steps per pass (the batch split evenly).")
    clip_low: float = Field(0.2, ge=0, lt=1, description="PPO ratio clip below 1 - clip_low.")
    clip_high: float = Field(0.28, ge=0, description="PPO ratio clip above 1 + clip_high (DAPO clip-higher).")
    dual_clip: float | None = Field(None, gt=1, description="Bound the loss of a negative-advantage token whose "
                                                            "ratio exceeds this at |A| * dual_clip; null: off.")
    kl_coef: float = Field(0.0, ge=0, description="KL penalty against the reference policy (trainer.ref_model_path).")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k3", description="Per-token KL estimator of the penalty.")
    entropy_coef: float = Field(0.0, ge=0)
    agg_mode: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "token-mean"
    max_response_tokens: int | None = Field(
        None, gt=0, description="seq-mean-token-sum-norm's constant divisor; null: the padded width.")
    importance_sampling: Literal["none", "token_tis", "seq_mask"] = Field(
        "token_tis", description="Correction for the sampler/trainer mismatch: token_tis weights each token by "
                                 "min(trainer/sampler probability ratio, is_cap); seq_mask drops sequences whose "
                                 "ratio leaves [1/seq_mask_threshold, seq_mask_threshold].")
    is_cap: float = Field(2.0, gt=0, description="token_tis: cap on the importance weight.")
    seq_mask_threshold: float = Field(2.0, ge=1, description="seq_mask: bound on the sequence ratio.")
    dynamic_sampling: bool = Field(
        False, description="DAPO dynamic sampling: drop groups whose rewards are all equal (no signal) "
                           "and refill the batch with new groups from the current policy.")
    max_refill_rounds: int = Field(2, ge=1, description="Refill rounds per step before training on "
                                                        "a short batch (dynamic_sampling).")
    oversample_groups: int = Field(
        0, ge=0, description="dynamic_sampling: groups drawn per batch beyond batch_size / group_size, played "
                             "with the batch (ahead of the step when asynchronous) so flat groups are replaced "
                             "without a refill round inside the step; groups with signal beyond the batch are "
                             "dropped, counted as `surplus`.")
    collect_timeout_s: float = Field(600.0, gt=0, description="Wait for a batch's groups before failing, "
                                                              "naming how many arrived.")

    @model_validator(mode="after")
    def _check_oversampling(self) -> "GRPOConfig":
        if self.oversample_groups and not self.dynamic_sampling:
            raise ValueError(f"grpo.oversample_groups ({self.oversample_groups}) draws groups to replace the ones "
                             "dynamic sampling drops; set grpo.dynamic_sampling=true or oversample_groups=0")
        return self


# Seen on an H200 with DeepSpeed 0.19.8: stage 0 in bf16 either fails at initialize (fp32 gradient
# accumulation) or keeps no fp32 master weights (bf16 accumulation), so Adam would lose small updates.
_ZERO0_BF16 = ("trainer.zero_stage=0 cannot train in bf16: DeepSpeed's stage 0 has no fp32 master weights; "
               "use zero_stage=1 (on one rank it costs the same memory)")


class TrainerConfig(Section):
    """The DeepSpeed policy trainer (`trainers/`): rank layout, precision, optimizer, schedule."""

    num_ranks: int = Field(1, gt=0)
    cpus_per_rank: float = Field(1.0, gt=0)
    gpus_per_rank: float = Field(0.0, ge=0)
    zero_stage: Literal[0, 1, 2, 3] = 0
    zero3_persistence_threshold: int = Field(
        100_000, ge=0, description="ZeRO-3: parameters with fewer elements stay whole on every rank.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU.")
    attn_implementation: Literal["eager", "sdpa"] | None = Field(
        None, description="Attention kernel of the trained model; null: transformers' default.")
    lr: float = Field(3e-4, gt=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Shape after the warmup; linear/cosine decay to min_lr_ratio * lr by the run's "
                                "last optimizer step (grpo.num_steps x ppo_epochs x num_mini_batches).")
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0, description="AdamW decay, on matrices only.")
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0, description="Global gradient-norm clip; 0: off.")
    micro_batch_tokens: int = Field(8192, gt=0, description="Token budget of one packed micro-batch.")
    share_prefix_tokens: int = Field(
        1024, ge=0, description="Samples sharing a prompt run it once: each distinct prompt of a micro-batch on "
                                "cached keys and values (trainers/prompt_cache.py), or with gradient checkpointing "
                                "(which turns the cache off) packed into rows of at most this many tokens "
                                "(eager/SDPA attention); 0: off.")
    gradient_checkpointing: bool = False
    skip_zero_advantage: bool = Field(
        True, description="Do not run samples whose advantage is 0 through the model when the loss has "
                          "no KL or entropy term: their gradient is exactly zero (they still count in "
                          "the loss normalisers, so the update is unchanged). Per-token train/ metrics such "
                          "as entropy then cover the samples that ran.")
    use_idle_engine_cpus: bool = Field(
        True, description="CPU ranks: while generation engines on the rank's node have no request in flight, "
                          "compute on their CPUs too (intra-op threads raised per decoder layer; "
                          "trainers/core_lending.py). Shared evenly by the node's ranks.")
    keep_freed_memory: bool = Field(
        True, description="CPU ranks: glibc malloc keeps freed memory mapped instead of unmapping it, so a step "
                          "reuses the last step's pages rather than faulting them in again (resident memory "
                          "stays at its peak; trainers/host_malloc.py).")
    log_entropy: bool = Field(True, description="Compute train/entropy (no gradient) when entropy_coef is 0.")
    ref_model_path: str | None = Field(None, description="KL reference policy; null: the initial policy.")
    num_nodes: int | None = Field(
        None, gt=0, description="Nodes the ranks span. 1: all ranks on one node (fails fast when no node "
                                "holds them); None: packed onto as few nodes as Ray finds.")
    max_restarts: int = Field(3, ge=0, description="Times a run restores the trainer ranks from the last checkpoint "
                                                   "after one dies before it stops (launch/recovery.py).")
    setup_timeout_s: float = Field(600.0, gt=0, description="Rank start-up, rendezvous and model load.")
    step_timeout_s: float = Field(1800.0, gt=0, description="One train step, checkpoint or export.")
    dist_timeout_s: float = Field(600.0, gt=0, description="torch.distributed collectives.")

    @model_validator(mode="after")
    def _check_rank_layout(self) -> "TrainerConfig":
        if self.gpus_per_rank > 1:
            raise ValueError(f"trainer.gpus_per_rank ({self.gpus_per_rank:g}) must be at most 1: a DeepSpeed "
                             "rank drives one GPU; raise trainer.num_ranks instead")
        if self.zero_stage == 0 and self.uses_bf16:
            raise ValueError(_ZERO0_BF16)
        if self.num_nodes is not None and self.num_ranks % self.num_nodes:
            raise ValueError(f"trainer.num_ranks ({self.num_ranks}) must be divisible by trainer.num_nodes "
                             f"({self.num_nodes})")
        return self

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_rank > 0

    @property
    def uses_bf16(self) -> bool:
        return self.dtype == "bfloat16" or (self.dtype == "auto" and self.use_gpu)
