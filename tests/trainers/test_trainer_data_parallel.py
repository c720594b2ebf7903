"""Two ranks under ZeRO-1/2/3 must do exactly what one process does with the whole batch, and
checkpoint, weight sync and export must see the full (gathered) parameters."""

from __future__ import annotations

import math

import pytest
import ray
import torch

from configs.schema import GRPOConfig, SyncConfig, TrainerConfig
from trainers.group import PolicyTrainerGroup
from trainers.spec import TrainerSpec

CFG = GRPOConfig(clip_high=0.2, importance_sampling="token_tis", is_cap=2.0)


def trainer_config(stage: int) -> TrainerConfig:
    return TrainerConfig(num_ranks=2, zero_stage=stage, lr=1e-3, weight_decay=0.01, grad_clip=1.0,
                         micro_batch_tokens=96, cpus_per_rank=1,
                         zero3_persistence_threshold=0)  # partition every parameter, however small


@pytest.fixture(scope="module", params=[1, 2, 3], ids=lambda s: f"zero{s}")
def group(request, ray_cluster, tiny_model_dir):
    g = PolicyTrainerGroup(TrainerSpec(tiny_model_dir, trainer_config(request.param)))
    yield g
    g.shutdown()


@ray.remote(num_cpus=0)
class RecordingReceiver:
    """A GenerationWorker stand-in that keeps what an shm sync delivered."""

    def __init__(self, spec: dict[str, tuple[tuple[int, ...], str]]) -> None:
        self.spec = spec
        self.received: dict[str, torch.Tensor] = {}

    def describe(self) -> dict:
        return {"name": "recorder", "node_id": ray.get_runtime_context().get_node_id(), "pid": 0,
                "version": 0, "healthy": True, "weight_spec": self.spec, "optional_names": [],
                "tensor_parallel_size": 1}

    def apply_update(self, transport: str, payload: dict, timeout_s: float = 300.0,
                     version: int | None = None, background: bool = False) -> dict:
        from actors.weight_sync.shm import ShmReceiver

        self.received = {n: t.clone() for n, t in ShmReceiver().weights(payload)}
        return {"version": version, "pause_s": 0.0, "reload_s": 0.0}

    def await_update(self, version: int) -> dict:  # the copy above was made before apply_update returned
        return {"version": version, "pause_s": 0.0, "reload_s": 0.0}

    def get(self) -> dict[str, torch.Tensor]:
        return self.received


@pytest.fixture(scope="module")
def receiver(ray_cluster, tiny_model_dir):
    """One receiver for every ZeRO stage (an actor start costs seconds here)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    handle = RecordingReceiver.remote({n: (tuple(p.shape), "float32")
                                       for n, p in model.named_parameters()})
    yield handle
    ray.kill(handle)


def test_two_ranks_equal_one_full_batch(group, tiny_model_dir, th):
    """Uneven micro-batch counts (split + placeholder passes) included: the 3-sample batch of
    50-60 token episodes gives one rank two micro-batches and the other one."""
    batches = [th.make_samples(40, 12), th.make_samples(41, 3, min_len=50, max_len=60)]
    metrics = [group.train_step(samples, CFG) for samples in batches]
    assert [m["train/num_sequences"] for m in metrics] == [12, 3]
    assert metrics[1]["train/num_micro_batches"] == 2
    want, norms, losses = th.reference_steps(tiny_model_dir, batches, CFG, group.spec.trainer)
    assert [m["train/grad_norm"] for m in metrics] == pytest.approx(norms, rel=1e-4)
    assert [m["train/loss"] for m in metrics] == pytest.approx(losses, rel=1e-4, abs=1e-7)
    th.assert_params_close(group.gather_parameters(), want)


def test_ranks_agree_on_skipping_a_nonfinite_step(group, th):
    """The ranks vote: with nothing finite anywhere both skip; with one finite sample (on one rank
    only) both step, and no NaN reaches the gathered weights. A rank deciding alone would hang."""
    samples = th.make_samples(16, 2)  # two samples: one per rank
    for s in samples:
        s.advantage = math.nan
    step0 = group.step
    assert group.train_step(samples, CFG)["train/skipped_nonfinite"] == 1.0 and group.step == step0
    samples[0].advantage = 1.0
    m = group.train_step(samples, CFG)
    assert group.step == step0 + 1 and "train/skipped_nonfinite" not in m
    assert m["train/nonfinite_micro_batches"] >= 1
    assert all(torch.isfinite(t).all() for t in group.gather_parameters().values())


def test_resume_equals_uninterrupted(group, tmp_path, th):
    th.check_resume(group, str(tmp_path / "ckpt"), seed=50, cfg=CFG)


def test_zero_advantage_samples_skipped_without_changing_the_update(group, tmp_path, th):
    th.check_zero_advantage_skipping(group, str(tmp_path / "ckpt"), seed=70, cfg=CFG)


def test_sync_and_export_deliver_full_weights(group, receiver, tmp_path, th):
    full = group.gather_parameters()
    # 16 KiB buckets (the schema counts whole MiB; the tiny model is 0.3 MiB): several buckets,
    # so several ZeRO-3 gathers.
    sync = SyncConfig(transport="shm", timeout_s=60).model_copy(update={"bucket_mb": 1 / 64})
    stats = group.sync_weights([receiver], version=7, sync=sync)
    assert stats.version == 7 and stats.num_buckets > 1
    th.assert_params_close(ray.get(receiver.get.remote()), full, atol=0, rtol=0)
    out = group.export_hf(str(tmp_path / "hf"))
    th.assert_logprobs_match_hf(group, out, [s.token_ids for s in th.make_samples(60, 4)])
