"""One data-parallel rank of the DeepSpeed policy trainer (a Ray actor; `trainers.group` drives it).

Every public method that touches parameters is collective: the group calls it on all ranks at
once with work planned on the driver (`trainers.batching`), so the ranks run the same number of
forwards/backwards and the same parameter gathers in the same order. A rank never decides alone
how much work it does; that is what keeps ZeRO-2/3 collectives from deadlocking.

One optimizer step per mini-batch: DeepSpeed runs in unmanaged accumulation mode (see
`trainers.spec`), each micro-batch does `engine.backward`, the mini-batch ends with one
`engine.step()` (clipping, optimizer, LR schedule). Losses carry global normalisers, and DeepSpeed
averages gradients over ranks, so the backward loss is multiplied by the world size: the summed
gradient is then exactly the full-batch gradient, whatever the split.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor

from actors.calls import free_port
from actors.gc_heap import freeze_startup_heap
from configs.schema import GRPOConfig, SyncConfig
from trainers.batching import Collated, MicroBatch, MiniBatchShard, collate, shifted_logits
from trainers.checkpoint import (copy_model_files, iter_full_parameters, load_training_state,
                                 save_training_state, write_safetensors_shards)
from trainers.core_lending import CoreLending
from trainers.grpo.losses import gather_logprobs, policy_loss, token_entropy
from trainers.host_malloc import keep_freed_memory
from trainers.metrics import MetricState, kind_for
from trainers.spec import TrainerSpec, deepspeed_config, make_optimizer, make_scheduler

logger = logging.getLogger(__name__)

__all__ = ["PolicyTrainerRank"]

# Counts policy_loss reports per micro-batch; the trainer reports its own batch-level counts.
_SKIPPED_LOSS_METRICS = frozenset({"num_tokens", "num_seqs"})


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class PolicyTrainerRank:
    """A DeepSpeed engine holding this rank's share of the policy (see module docstring)."""

    def __init__(self, spec: TrainerSpec, rank: int, world_size: int) -> None:
        logging.basicConfig(level=logging.INFO,
                            format=f"%(asctime)s trainer[{rank}] %(levelname)s %(name)s: %(message)s")
        self.model_path = spec.model_path
        self.spec = spec
        self.cfg = spec.trainer
        self.rank = rank
        self.world_size = world_size
        self.step = 0
        self.engine: Any = None
        self.ref_model: torch.nn.Module | None = None
        self.pad_id = 0
        self._senders: dict[tuple, Any] = {}
        self.lending: CoreLending | None = None
        if self.cfg.use_gpu:
            torch.cuda.set_device(0)  # Ray exposes exactly this rank's GPU(s)
            self.device = torch.device("cuda", 0)
        else:
            torch.set_num_threads(max(1, int(self.cfg.cpus_per_rank)))
            self.device = torch.device("cpu")
            if self.cfg.keep_freed_memory:
                keep_freed_memory()

    def master_endpoint(self) -> tuple[str, int]:
        """Rank 0's node IP and a free port, for the torch.distributed rendezvous."""
        import ray

        return ray.util.get_node_ip_address(), free_port()

    # ------------------------------------------------------------------ setup
    def setup(self, master_addr: str, master_port: int) -> dict[str, Any]:
        """Join the process group, load the HF model and build the DeepSpeed engine."""
        import deepspeed
        from transformers import AutoModelForCausalLM

        s, t = self.spec, self.cfg
        os.environ.update({"MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port),
                           "RANK": str(self.rank), "WORLD_SIZE": str(self.world_size),
                           "LOCAL_RANK": "0"})
        if not t.use_gpu:
            # DeepSpeed's CPU shared-memory all-reduce only serves its inference path; skipping it
            # spares every fresh machine a ~100 s gcc build at the first start-up.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="nccl" if t.use_gpu else "gloo",
                                   auto_mpi_discovery=False, verbose=False,
                                   timeout=timedelta(seconds=t.dist_timeout_s))
        torch.manual_seed(s.seed)
        ds_config = deepspeed_config(s, self.world_size)
        # Every rank loads the full fp32 model in host memory; deepspeed.initialize partitions
        # it. (Loading pre-partitioned via HfDeepSpeedConfig needs `accelerate`, not installed.)
        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32,
                                                     attn_implementation=t.attn_implementation)
        model.config.use_cache = False
        self.pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        if not t.use_gpu and t.use_idle_engine_cpus:
            self.lending = CoreLending.create(self.rank, max(1, int(t.cpus_per_rank)))
            if self.lending is not None and not self.lending.attach(model):
                self.lending = None  # no decoder layer to hook: the rank keeps its own threads
        if t.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        n_params = sum(p.numel() for p in model.parameters())
        # Packed shared prompts need a 4D mask: the eager and SDPA attentions take one.
        self.attn_implementation = model.config._attn_implementation
        self.share_prefix_tokens = (t.share_prefix_tokens if self.attn_implementation in ("sdpa", "eager")
                                    else 0)
        # Prompts run once on cached keys and values (trainers/prompt_cache: a micro-batch's common
        # prompt; each group's own where packing is allowed); gradient checkpointing turns the cache off.
        self.cache_prompt = t.share_prefix_tokens > 0 and not t.gradient_checkpointing
        self.engine, *_ = deepspeed.initialize(
            model=model, optimizer=make_optimizer(model, t),
            lr_scheduler=lambda opt: make_scheduler(opt, s), config=ds_config)
        if self.world_size == 1 and t.zero_stage == 0:
            # Alone there is nothing to average with, yet ZeRO-0 would still flatten every
            # gradient into a fresh buffer and copy it back after backward: twice the model's
            # size in memory traffic a step (0.09 s of a 0.7 s step at 30M on 1 CPU thread).
            self.engine.enable_backward_allreduce = False
        if t.zero_stage == 0 and s.torch_dtype == torch.float32:
            self._record_fp32_grad_norm()
        logger.info("rank %d/%d ready: %.1fM params, ZeRO-%d, %s, %s", self.rank, self.world_size,
                    n_params / 1e6, t.zero_stage, s.torch_dtype, self.device)
        freeze_startup_heap(f"trainer rank {self.rank}")
        return {"num_params": n_params, "device": str(self.device)}

    def _record_fp32_grad_norm(self) -> None:
        """DeepSpeed's plain fp32 path (ZeRO-0) clips but drops the norm it computed; keep it
        where `get_global_grad_norm()` reads it, as the ZeRO and bf16 optimizers do."""
        from deepspeed.runtime.utils import clip_grad_norm_

        engine = self.engine

        def clip_and_record() -> None:
            norm = clip_grad_norm_(parameters=engine.module.parameters(),
                                   max_norm=engine.gradient_clipping(), mpu=engine.mpu)
            engine._global_grad_norm = float(norm)

        engine.clip_fp32_gradients = clip_and_record

    # --------------------------------------------------------------- forward
    def _collate(self, mb: MicroBatch, every_position: bool = False) -> Collated:
        """`every_position`: logprobs wanted at prompt positions too (no cached prompt)."""
        return collate(mb, self.pad_id, self.share_prefix_tokens,
                       cache_prompt=self.cache_prompt and not every_position).to(self.device)

    def _logits(self, model: Any, b: Collated) -> Tensor:
        return shifted_logits(model, b, self.attn_implementation, self.spec.torch_dtype)

    def _forward(self, b: Collated, *, entropy: str = "none") -> tuple[Tensor, Tensor | None]:
        """Per-token logprobs [B, L-1] (and entropy: "none", "no_grad" or "grad")."""
        logits = self._logits(self.engine, b)
        temperature = self.spec.temperature
        logprobs = b.full_width(gather_logprobs(logits, b.from_first_logit(b.target_ids), temperature=temperature))
        ent = None
        if entropy == "grad":
            ent = b.full_width(token_entropy(logits, temperature=temperature))
        elif entropy == "no_grad":
            with torch.no_grad():
                ent = b.full_width(token_entropy(logits.detach(), temperature=temperature))
        return logprobs, ent

    @torch.no_grad()
    def _logprobs_no_grad(self, batches: list[Collated]) -> list[Tensor]:
        return [self._forward(b)[0] for b in batches]

    def _ref_logprobs(self, batches: list[Collated], cfg: GRPOConfig) -> list[Tensor | None]:
        """Reference logprobs: from the samples if they carry them; else from a reference model,
        loaded on first use and only when the KL term is on (it costs a full model copy)."""
        given = [b.ref_logprobs for b in batches]
        if cfg.kl_coef == 0 or all(r is not None or b.is_placeholder for r, b in zip(given, batches)):
            return given
        if self.ref_model is None:
            from transformers import AutoModelForCausalLM

            path = self.cfg.ref_model_path or self.model_path
            logger.info("loading reference model from %s (kl_coef=%g)", path, cfg.kl_coef)
            self.ref_model = AutoModelForCausalLM.from_pretrained(
                path, dtype=self.spec.torch_dtype).to(self.device).eval().requires_grad_(False)
        out: list[Tensor | None] = []
        with torch.no_grad():
            for b in batches:
                logits = self._logits(self.ref_model, b)
                out.append(b.full_width(gather_logprobs(logits, b.from_first_logit(b.target_ids),
                                                        temperature=self.spec.temperature)))
        return out

    # ------------------------------------------------------------ train step
    def train_step(self, shards: list[MiniBatchShard], grpo: GRPOConfig) -> MetricState:
        """Run `grpo.ppo_epochs` passes over this rank's mini-batch shards; one optimizer step each.

        Old logprobs are recomputed with the current weights before the first update. With a
        single update the "old" policy IS the current one, so the detached logprobs of the update
        forward are used instead (one forward saved; the first ratio is exactly 1).
        """
        t0 = time.perf_counter()
        if self.lending is not None:
            self.lending.begin_step()
        self.engine.train()
        batches = [[self._collate(mb) for mb in sh.micro_batches] for sh in shards]
        ppo_epochs = grpo.ppo_epochs
        single_update = len(shards) == 1 and ppo_epochs == 1
        old = None if single_update else [self._logprobs_no_grad(bs) for bs in batches]
        refs = [self._ref_logprobs(bs, grpo) for bs in batches]
        t_prep = time.perf_counter()
        num_updates = len(shards) * ppo_epochs
        want_entropy = "grad" if grpo.entropy_coef else (
            "no_grad" if self.cfg.log_entropy else "none")
        state = MetricState()
        skipped = 0  # updates with nothing finite on any rank (every rank counts the same)
        flat = 0  # updates whose samples all had advantage 0: no micro-batch, no step
        for _ in range(ppo_epochs):
            for k, (shard, bs) in enumerate(zip(shards, batches)):
                if not bs:  # every sample of this mini-batch had advantage 0 (same on all ranks)
                    flat += 1
                    continue
                finite = 0
                for j, b in enumerate(bs):
                    logprobs, ent = self._forward(b, entropy="none" if b.is_placeholder else want_entropy)
                    if b.is_placeholder:  # keeps ZeRO collectives in step; contributes nothing
                        self.engine.backward(logprobs.sum() * 0.0, scale_wrt_gas=False)
                        continue
                    loss, m = policy_loss(
                        logprobs, old[k][j] if old is not None else logprobs.detach(), b.advantages,
                        b.mask, grpo, sampler_logprobs=b.sampler_logprobs, ref_logprobs=refs[k][j],
                        entropy=ent, token_normalizer=shard.token_normalizer,
                        seq_normalizer=shard.seq_normalizer)
                    if torch.isfinite(loss):
                        finite += 1
                    else:  # a NaN/Inf never reaches the weights: same collectives, zero gradient
                        state.add("train/nonfinite_micro_batches", 1.0, "sum")
                        loss = logprobs.sum() * 0.0
                    self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
                    self._record(state, m, num_updates)  # the NaN loss is reported: the monitor counts it
                state.add("train/lr", self.engine.get_lr()[0], "mean")
                if not self._any_rank(finite > 0):
                    # Nothing finite anywhere: the accumulated gradient is exactly zero, and an
                    # Adam step on it would still move the weights along the old momentum.
                    skipped += 1
                    continue
                if self.lending is not None:
                    self.lending.adjust()
                self.engine.step()
                self.step += 1
                grad_norm = self.engine.get_global_grad_norm()
                if grad_norm is not None:
                    state.add("train/grad_norm", float(grad_norm), "mean")
        if skipped:
            state.add("train/skipped_nonfinite", float(skipped), "max")
        if flat:
            state.add("train/skipped_no_signal_updates", float(flat), "max")
        elapsed = time.perf_counter() - t0
        if self.lending is not None:
            for key, value in self.lending.end_step().items():
                state.add(key, value, "max")
        mbs = [mb for sh in shards for mb in sh.micro_batches]
        state.add("train/num_tokens", sum(mb.num_tokens for mb in mbs), "sum")
        state.add("train/num_padded_tokens", sum(mb.padded_tokens for mb in mbs), "sum")
        # Positions the model ran (padding included; fewer than padded_tokens with shared prompts).
        state.add("train/num_model_tokens", sum(b.model_tokens for bs in batches for b in bs
                                                if not b.is_placeholder), "sum")
        state.add("train/num_sequences", sum(len(mb.samples) for mb in mbs), "sum")
        state.add("train/num_micro_batches", len(mbs), "max")
        state.add("train/step_time_s", elapsed, "max")
        state.add("train/old_logprob_time_s", t_prep - t0, "max")
        state.add("train/peak_memory_gb", _peak_memory_gb(self.device), "max")
        state.add("train/optimizer_step", float(self.step), "max")
        return state

    def _any_rank(self, flag: bool) -> bool:
        """True if `flag` holds on at least one rank (collective: every rank must call it)."""
        if self.world_size == 1:
            return flag
        import torch.distributed as dist

        votes = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(votes)
        return votes.item() > 0

    @staticmethod
    def _record(state: MetricState, m: dict[str, float], num_updates: int) -> None:
        n_tok = m.get("num_tokens", 0.0)
        for key, value in m.items():
            if key in _SKIPPED_LOSS_METRICS:
                continue
            kind = kind_for(key)
            if kind == "sum":  # this micro-batch's share of one update's loss; average over updates
                state.add(f"train/{key}", value / num_updates, "sum")
            elif n_tok > 0:
                state.add(f"train/{key}", value, kind, weight=n_tok)

    # ------------------------------------------------------------- inference
    @torch.no_grad()
    def compute_logprobs(self, micro_batches: list[MicroBatch]) -> list[tuple[int, list[float]]]:
        """`(index, logprobs)` per sequence; logprobs align with token ids (position 0 is 0.0)."""
        self.engine.eval()
        out: list[tuple[int, list[float]]] = []
        for mb in micro_batches:
            b = self._collate(mb, every_position=True)
            lp = self._forward(b)[0].float().cpu()
            for row, (idx, s) in enumerate(zip(mb.indices, mb.samples)):
                out.append((idx, [0.0] + lp[row, : len(s.token_ids) - 1].tolist()))
        self.engine.train()
        return out

    # ------------------------------------------------------ full parameters
    def named_parameters_iter(self, bucket_bytes: int = 256 << 20) -> Iterator[tuple[str, Tensor]]:
        """Lazy full parameters; collective under ZeRO-3 (see `trainers.checkpoint`). Only rank 0
        yields anything; the other ranks must exhaust the iterator too."""
        return iter_full_parameters(self.engine.module, is_source=self.rank == 0,
                                    bucket_bytes=bucket_bytes)

    def gather_parameters(self) -> dict[str, Tensor] | None:
        """Full CPU copy of every parameter on rank 0 (None elsewhere): tests and debugging."""
        params = {n: t.detach().float().cpu().clone() for n, t in self.named_parameters_iter()}
        return params if self.rank == 0 else None

    def sync_weights(self, receivers: list[Any], version: int, sync: SyncConfig) -> Any:
        """Push full weights to `receivers` from rank 0; every rank must call this together."""
        bucket_bytes = int(sync.bucket_mb * (1 << 20))
        params = self.named_parameters_iter(bucket_bytes)
        if self.rank != 0:
            for _ in params:
                pass
            return None
        from actors.weight_sync import make_sender, sender_options

        options = sender_options(sync)
        key = (sync.transport, tuple(getattr(r, "_actor_id", id(r)) for r in receivers), bucket_bytes,
               sync.timeout_s, tuple(sorted(options.items())))
        if key not in self._senders:
            # The engines changed (replaced, added or retired): the old sender's shared memory or
            # process group serves nobody now.
            for old in self._senders.values():
                old.close()
            self._senders = {key: make_sender(sync.transport, receivers, bucket_bytes, sync.timeout_s, **options)}
        try:
            return self._senders[key].send(params, version)
        finally:
            for _ in params:  # on failure: finish the gathers so the other ranks are not stuck
                pass

    # ----------------------------------------------------------- persistence
    def save_checkpoint(self, ckpt_dir: str, tag: str | None = None) -> str:
        return save_training_state(self.engine, ckpt_dir, self.step, self.rank, tag)

    def load_checkpoint(self, ckpt_dir: str, tag: str | None = None) -> int:
        self.step = load_training_state(self.engine, ckpt_dir, self.rank, tag)
        return self.step

    def export_hf(self, out_dir: str, shard_bytes: int = 4 << 30) -> str:
        """HF-format weights + the source model's config and tokenizer files (rank 0 writes)."""
        params = self.named_parameters_iter()
        if self.rank != 0:
            for _ in params:
                pass
            return out_dir
        dtype = write_safetensors_shards(params, out_dir, shard_bytes)
        copy_model_files(self.model_path, out_dir, dtype)
        logger.info("exported step %d weights to %s", self.step, out_dir)
        return out_dir

    def ping(self) -> bool:
        """Answers while the actor lives (`actors.calls.alive`)."""
        return True

    def get_step(self) -> int:
        return self.step
