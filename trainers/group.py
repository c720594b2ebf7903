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

from trainers.batching import TrainSample, plan_micro_batches, plan_train_step
from trainers.grpo.losses import PolicyLossConfig
from trainers.metrics import merge_states
from trainers.policy_trainer import PolicyTrainerRank
from trainers.settings import TrainerSettings

logger = logging.getLogger(__name__)


class PolicyTrainerGroup:
    """Create, drive and shut down the trainer ranks.

    `placement_group`: optional; rank r goes to bundle `bundle_offset + r` (each bundle must hold
    `cpus_per_rank` CPUs and `gpus_per_rank` GPUs). Without one, Ray places the ranks freely.
    """

    def __init__(self, settings: TrainerSettings, *, placement_group: PlacementGroup | None = None,
                 bundle_offset: int = 0, name: str = "policy_trainer") -> None:
        self.settings = settings
        self.name = name
        actor_cls = ray.remote(PolicyTrainerRank)
        n = settings.num_ranks
        self.ranks: list[Any] = []
        for r in range(n):
            opts: dict[str, Any] = {"num_cpus": settings.cpus_per_rank,
                                    "num_gpus": settings.gpus_per_rank,
                                    "name": f"{name}_rank{r}_{id(self):x}"}
            if placement_group is not None:
                opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group, placement_group_bundle_index=bundle_offset + r)
            self.ranks.append(actor_cls.options(**opts).remote(settings, r, n))
        t0 = time.perf_counter()
        try:
            addr, port = self._wait([self.ranks[0].master_endpoint.remote()],
                                    "rank 0 start-up (actor scheduling; enough CPUs/GPUs free?)",
                                    settings.setup_timeout_s)[0]
            self.info = self._all("setup", "DeepSpeed setup (process group rendezvous at "
                                  f"{addr}:{port}, model load, deepspeed.initialize)",
                                  settings.setup_timeout_s, addr, port)[0]
        except BaseException:
            self.shutdown()  # do not leave half-started ranks holding CPUs/GPUs
            raise
        logger.info("%s: %d rank(s) ready in %.1fs (ZeRO-%d, %.1fM params)", name, n,
                    time.perf_counter() - t0, settings.zero_stage, self.info["num_params"] / 1e6)

    # ------------------------------------------------------------- helpers
    def _wait(self, refs: list[Any], what: str, timeout_s: float) -> list[Any]:
        """Results of `refs` in order. The first rank to fail raises at once (its peers are
        probably stuck in a collective with it); ranks still silent at the deadline are named."""
        deadline = time.monotonic() + timeout_s
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1,
                                      timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                missing = [i for i, ref in enumerate(refs) if ref in pending]
                raise TimeoutError(f"{self.name}: {what} did not finish within {timeout_s:.0f}s "
                                   f"on rank(s) {missing} of {len(refs)}")
            ray.get(ready)  # raises the rank's error, if any
        return ray.get(refs)

    def _all(self, method: str, what: str, timeout_s: float, *args: Any) -> list[Any]:
        """Call `method` on every rank at once (collective) and wait for all of them."""
        refs = [getattr(r, method).remote(*args) for r in self.ranks]
        return self._wait(refs, what, timeout_s)

    # --------------------------------------------------------------- work
    def train_step(self, samples: list[TrainSample], loss_cfg: PolicyLossConfig,
                   ppo_epochs: int = 1, num_mini_batches: int = 1) -> dict[str, float]:
        """`num_mini_batches` optimizer steps per epoch over `samples`; merged metrics.

        Metrics (all under `train/`): loss terms are full-batch values averaged over the
        updates; per-token statistics are token-weighted over every rank; `*_max`/`*_min` are
        extremes; `tokens_per_s` counts the batch's real (unpadded) tokens per wall second.
        """
        s = self.settings
        if not has_learning_signal(samples, loss_cfg):
            # The loss is identically zero, yet an Adam step would still move every weight along
            # its momentum; a few such steps after one lucky batch drift the policy off course.
            logger.info("train_step skipped: every advantage is 0 and no KL/entropy term (no signal)")
            return {"train/skipped_no_signal": 1.0, "train/num_sequences": float(len(samples))}
        t0 = time.perf_counter()
        skip_flat = s.skip_zero_advantage and advantage_is_the_only_signal(loss_cfg)
        plan = plan_train_step(samples, s.num_ranks, num_mini_batches, s.micro_batch_tokens, skip_flat)
        refs = [rank.train_step.remote(plan[r], loss_cfg, ppo_epochs)
                for r, rank in enumerate(self.ranks)]
        states = self._wait(refs, f"train_step ({len(samples)} samples, {num_mini_batches} "
                            f"mini-batch(es) x {ppo_epochs} epoch(s))", s.step_timeout_s)
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
        samples = [TrainSample(list(t), [0] * len(t), [0.0] * len(t), 0.0) for t in token_ids]
        plan = plan_micro_batches(samples, self.settings.num_ranks, self.settings.micro_batch_tokens)
        refs = [rank.compute_logprobs.remote(plan[r]) for r, rank in enumerate(self.ranks)]
        out: list[list[float]] = [[] for _ in token_ids]
        for part in self._wait(refs, f"compute_logprobs ({len(token_ids)} sequences)",
                               self.settings.step_timeout_s):
            for idx, lp in part:
                out[idx] = lp
        return out

    def sync_weights(self, receivers: list[Any], version: int, transport: str = "shm",
                     bucket_bytes: int = 64 << 20, timeout_s: float = 120.0) -> Any:
        """Send the current weights as `version` to `receivers` (rank 0 sends; all ranks gather).

        Returns the sender's `SyncStats`.
        """
        what = (f"weight sync v{version} via {transport!r} to {len(receivers)} receiver(s) "
                "(receivers alive? ZeRO-3 gathers stuck?)")
        return self._all("sync_weights", what, timeout_s + 60.0, receivers, version, transport,
                         bucket_bytes, timeout_s)[0]

    def save_checkpoint(self, ckpt_dir: str) -> str:
        """Model, optimizer, scheduler, RNG and step counter; returns the checkpoint tag."""
        return self._all("save_checkpoint", f"save_checkpoint to {ckpt_dir}",
                         self.settings.step_timeout_s, ckpt_dir)[0]

    def load_checkpoint(self, ckpt_dir: str, tag: str | None = None) -> int:
        """Restore what `save_checkpoint` wrote (`tag=None`: the latest); returns the step."""
        steps = self._all("load_checkpoint", f"load_checkpoint from {ckpt_dir}",
                          self.settings.step_timeout_s, ckpt_dir, tag)
        return int(steps[0])

    def export_hf(self, out_dir: str) -> str:
        """HF-format weights plus the source model's config and tokenizer files."""
        return self._all("export_hf", f"export_hf to {out_dir}", self.settings.step_timeout_s,
                         out_dir)[0]

    def gather_parameters(self) -> dict[str, Tensor]:
        """Full fp32 CPU copy of every parameter (small models: tests and debugging)."""
        return self._all("gather_parameters", "gather_parameters", self.settings.step_timeout_s)[0]

    @property
    def step(self) -> int:
        return int(self._wait([self.ranks[0].get_step.remote()], "get_step", 60.0)[0])

    def shutdown(self) -> None:
        for r in self.ranks:
            try:
                ray.kill(r, no_restart=True)
            except Exception as err:  # noqa: BLE001 - best effort: the actor may already be gone
                logger.warning("%s: kill failed: %s", self.name, err)
        self.ranks = []


def advantage_is_the_only_signal(loss_cfg: PolicyLossConfig) -> bool:
    """True when the loss has no KL or entropy term: a sample with advantage 0 has zero gradient."""
    return not (loss_cfg.kl_coef or loss_cfg.entropy_coef)


def has_learning_signal(samples: list[TrainSample], loss_cfg: PolicyLossConfig) -> bool:
    """False when the policy loss has zero gradient: all advantages 0 and no KL or entropy term."""
    return not advantage_is_the_only_signal(loss_cfg) or any(x.advantage != 0.0 for x in samples)
