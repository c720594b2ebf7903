"""Driver-side handle of the policy trainer: N `PolicyTrainerRank` actors acting as one.

The group plans all work on the driver (`trainers.batching`) and calls the same method on every
rank at once, because every parameter-touching method is collective (see `policy_trainer`).
Every wait has a timeout whose error names the operation and the ranks that did not answer:
a hung collective otherwise looks like a silent stall of the whole run.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from torch import Tensor

from actors.calls import dead_actors, wait_all
from configs.schema import GRPOConfig, SyncConfig
from trainers.batching import TrainSample, plan_micro_batches, plan_train_step
from trainers.metrics import merge_states
from trainers.policy_trainer import PolicyTrainerRank
from trainers.spec import TrainerSpec

logger = logging.getLogger(__name__)


class TrainerRankLost(RuntimeError):
    """A trainer rank died (its actor is gone); the group is unusable until rebuilt."""

    def __init__(self, rank: int, cause: str):
        super().__init__(f"trainer rank {rank} died: {cause}")
        self.rank, self.cause = rank, cause


class PolicyTrainerGroup:
    """Create, drive and shut down the trainer ranks.

    `placement_group`: optional; rank r goes to bundle `bundle_offset + r` (each bundle must hold
    `trainer.cpus_per_rank` CPUs and `trainer.gpus_per_rank` GPUs). Without one, Ray places the
    ranks freely.
    """

    def __init__(self, spec: TrainerSpec, *, placement_group: PlacementGroup | None = None,
                 bundle_offset: int = 0, name: str = "policy_trainer") -> None:
        self.spec = spec
        self.name = name
        t = spec.trainer
        actor_cls = ray.remote(PolicyTrainerRank)
        n = t.num_ranks
        self.ranks: list[Any] = []
        for r in range(n):
            opts: dict[str, Any] = {"num_cpus": t.cpus_per_rank, "num_gpus": t.gpus_per_rank,
                                    "name": f"{name}_rank{r}_{id(self):x}"}
            if placement_group is not None:
                opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group, placement_group_bundle_index=bundle_offset + r)
            self.ranks.append(actor_cls.options(**opts).remote(spec, r, n))
        t0 = time.perf_counter()
        try:
            addr, port = self._wait([self.ranks[0].master_endpoint.remote()],
                                    "rank 0 start-up (actor scheduling; enough CPUs/GPUs free?)",
                                    t.setup_timeout_s)[0]
            self.info = self._all("setup", "DeepSpeed setup (process group rendezvous at "
                                  f"{addr}:{port}, model load, deepspeed.initialize)",
                                  t.setup_timeout_s, addr, port)[0]
        except BaseException:
            self.shutdown()  # do not leave half-started ranks holding CPUs/GPUs
            raise
        logger.info("%s: %d rank(s) ready in %.1fs (ZeRO-%d, %.1fM params)", name, n,
                    time.perf_counter() - t0, t.zero_stage, self.info["num_params"] / 1e6)

    # ------------------------------------------------------------- helpers
    def _wait(self, refs: list[Any], what: str, timeout_s: float) -> list[Any]:
        """Results of `refs` (rank r's at index r) in order. The first rank to fail raises at once
        (its peers are probably stuck in a collective with it); ranks still silent at the deadline
        are named."""
        try:
            results = wait_all({f"rank {r}": ref for r, ref in enumerate(refs)}, timeout_s,
                               f"{self.name}: {what}", error=RuntimeError, fail_fast=True)
        except Exception as err:
            dead = dead_actors(self.ranks)
            if dead:  # the run can restore the group from a checkpoint (launch/recovery.py)
                raise TrainerRankLost(dead[0], f"{what}: {err}") from err
            raise
        return list(results.values())

    def _all(self, method: str, what: str, timeout_s: float, *args: Any) -> list[Any]:
        """Call `method` on every rank at once (collective) and wait for all of them."""
        refs = [getattr(r, method).remote(*args) for r in self.ranks]
        return self._wait(refs, what, timeout_s)

    # --------------------------------------------------------------- work
    def train_step(self, samples: list[TrainSample], grpo: GRPOConfig) -> dict[str, float]:
        """`grpo.num_mini_batches` optimizer steps per epoch, `grpo.ppo_epochs` epochs over
        `samples`; merged metrics.

        Metrics (all under `train/`): loss terms are full-batch values averaged over the
        updates; per-token statistics are token-weighted over every rank; `*_max`/`*_min` are
        extremes; `tokens_per_s` counts the batch's real (unpadded) tokens per wall second.
        """
        t = self.spec.trainer
        if not has_learning_signal(samples, grpo):
            # The loss is identically zero, yet an Adam step would still move every weight along
            # its momentum; a few such steps after one lucky batch drift the policy off course.
            logger.info("train_step skipped: every advantage is 0 and no KL/entropy term (no signal)")
            return {"train/skipped_no_signal": 1.0, "train/num_sequences": float(len(samples))}
        t0 = time.perf_counter()
        skip_flat = t.skip_zero_advantage and advantage_is_the_only_signal(grpo)
        plan = plan_train_step(samples, t.num_ranks, grpo.num_mini_batches, t.micro_batch_tokens,
                               skip_flat)
        refs = [rank.train_step.remote(plan[r], grpo) for r, rank in enumerate(self.ranks)]
        states = self._wait(refs, f"train_step ({len(samples)} samples, {grpo.num_mini_batches} "
                            f"mini-batch(es) x {grpo.ppo_epochs} epoch(s))", t.step_timeout_s)
        metrics = merge_states(states)
        metrics["train/skipped_no_signal"] = 0.0
        # The whole batch, run or not (`train/num_tokens` counts what the model ran).
        metrics["train/batch_tokens"] = float(sum(len(x.token_ids) for x in samples))
        metrics["train/num_zero_advantage_skipped"] = float(
            sum(x.advantage == 0.0 for x in samples) if skip_flat else 0)
        wall = time.perf_counter() - t0
        metrics["train/wall_time_s"] = wall
        metrics["train/tokens_per_s"] = metrics["train/num_tokens"] / max(wall, 1e-9)
        metrics["train/padding_frac"] = 1.0 - metrics["train/num_tokens"] / max(
            metrics["train/num_padded_tokens"], 1.0)
        return metrics

    def compute_logprobs(self, token_ids: list[list[int]]) -> list[list[float]]:
        """Per-token logprobs under the current weights (position 0 is 0.0), in input order."""
        if not token_ids:
            return []
        t = self.spec.trainer
        samples = [TrainSample(list(ids), [0] * len(ids), [0.0] * len(ids), 0.0) for ids in token_ids]
        plan = plan_micro_batches(samples, t.num_ranks, t.micro_batch_tokens)
        refs = [rank.compute_logprobs.remote(plan[r]) for r, rank in enumerate(self.ranks)]
        out: list[list[float]] = [[] for _ in token_ids]
        for part in self._wait(refs, f"compute_logprobs ({len(token_ids)} sequences)",
                               t.step_timeout_s):
            for idx, lp in part:
                out[idx] = lp
        return out

    def sync_weights(self, receivers: list[Any], version: int, sync: SyncConfig) -> Any:
        """Send the current weights as `version` to `receivers` over `sync.transport`, in buckets
        of `sync.bucket_mb` (rank 0 sends; all ranks gather). Returns the sender's `SyncStats`."""
        what = (f"weight sync v{version} via {sync.transport!r} to {len(receivers)} receiver(s) "
                "(receivers alive? ZeRO-3 gathers stuck?)")
        return self._all("sync_weights", what, sync.timeout_s + 60.0, receivers, version, sync)[0]

    def save_checkpoint(self, ckpt_dir: str, tag: str | None = None) -> str:
        """Model, optimizer, scheduler, RNG and step counter under `tag` (default `step_<n>`);
        returns the tag."""
        return self._all("save_checkpoint", f"save_checkpoint to {ckpt_dir}",
                         self.spec.trainer.step_timeout_s, ckpt_dir, tag)[0]

    def load_checkpoint(self, ckpt_dir: str, tag: str | None = None) -> int:
        """Restore what `save_checkpoint` wrote (`tag=None`: the latest); returns the step."""
        steps = self._all("load_checkpoint", f"load_checkpoint from {ckpt_dir}",
                          self.spec.trainer.step_timeout_s, ckpt_dir, tag)
        return int(steps[0])

    def export_hf(self, out_dir: str) -> str:
        """HF-format weights plus the source model's config and tokenizer files."""
        return self._all("export_hf", f"export_hf to {out_dir}", self.spec.trainer.step_timeout_s,
                         out_dir)[0]

    def gather_parameters(self) -> dict[str, Tensor]:
        """Full fp32 CPU copy of every parameter (small models: tests and debugging)."""
        return self._all("gather_parameters", "gather_parameters",
                         self.spec.trainer.step_timeout_s)[0]

    @property
    def step(self) -> int:
        """Optimizer steps taken so far."""
        return int(self._wait([self.ranks[0].get_step.remote()], "get_step", 60.0)[0])

    def shutdown(self) -> None:
        for r in self.ranks:
            try:
                ray.kill(r, no_restart=True)
            except Exception as err:  # noqa: BLE001 - best effort: the actor may already be gone
                logger.warning("%s: kill failed: %s", self.name, err)
        self.ranks = []


def advantage_is_the_only_signal(grpo: GRPOConfig) -> bool:
    """True when the loss has no KL or entropy term: a sample with advantage 0 has zero gradient."""
    return not (grpo.kl_coef or grpo.entropy_coef)


def has_learning_signal(samples: list[TrainSample], grpo: GRPOConfig) -> bool:
    """False when the policy loss has zero gradient: all advantages 0 and no KL or entropy term."""
    return not advantage_is_the_only_signal(grpo) or any(x.advantage != 0.0 for x in samples)
