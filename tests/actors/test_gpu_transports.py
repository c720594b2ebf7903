"""GPU weight-sync transports (nccl, cuda_ipc) against a real vLLM GenerationWorker.

They skip on machines without CUDA (like the 2-core development VM); the error path for a missing
GPU is tested everywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import ray
import torch

from actors.weight_sync import WeightSyncError, make_sender
from tests.actors.fakes import FakeWorker, started

NUM_GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
needs_gpu = pytest.mark.skipif(NUM_GPUS < 1, reason="requires CUDA GPU")
needs_two_gpus = pytest.mark.skipif(NUM_GPUS < 2, reason="requires CUDA GPU (2 devices: NCCL needs one per rank)")


@ray.remote
class TrainerStub:
    """Stands in for the trainer's rank 0: an HF copy of the policy on the GPU plus a sender."""

    def __init__(self, model_dir: str, transport: str, workers: list) -> None:
        from transformers import Qwen2ForCausalLM

        torch.backends.cuda.matmul.allow_tf32 = False
        self.model = Qwen2ForCausalLM.from_pretrained(model_dir, dtype=torch.float32).cuda().eval()
        self.sender = make_sender(transport, workers, bucket_bytes=256 << 10, timeout_s=120)

    def sync(self, version: int, seed: int):
        gen = torch.Generator(device="cuda").manual_seed(seed)
        with torch.no_grad():
            for p in self.model.parameters():
                p.add_(torch.randn(p.shape, generator=gen, device="cuda") * 0.05)
        return self.sender.send(self.model.named_parameters(), version)

    def logprobs(self, ids: list[int]) -> list[float]:
        with torch.no_grad():
            logp = torch.log_softmax(self.model(torch.tensor([ids], device="cuda")).logits[0].float(), -1)
        return [0.0] + [logp[i, t].item() for i, t in enumerate(ids[1:])]


@contextlib.contextmanager
def _gpu_worker(tiny_model_dir: str, num_gpus: float, name: str, **generation: object) -> Iterator[object]:
    from actors.generation import GenerationWorker
    from actors.types import EngineSpec
    from configs.schema import GenerationConfig

    spec = EngineSpec(tiny_model_dir, GenerationConfig(max_model_len=256, gpu_memory_utilization=0.3,
                                                       gpus_per_worker=num_gpus, **generation))
    worker = GenerationWorker.as_actor(spec, num_gpus=num_gpus, name=name)
    try:
        ray.get(worker.ready.remote(), timeout=600)
        yield worker
    finally:
        ray.get(worker.shutdown.remote(), timeout=120)
        ray.kill(worker)


def _assert_serves_trainer_weights(worker, trainer) -> None:
    ids = [1, 5, 9, 2, 7, 3, 8, 6, 10, 11]
    got = ray.get(worker.prompt_logprobs.remote(ids))
    want = ray.get(trainer.logprobs.remote(ids))
    assert max(abs(a - b) for a, b in zip(got, want)) < 2e-3


def _roundtrip(tiny_model_dir: str, transport: str, worker_gpus: float, trainer_gpus: float) -> None:
    with _gpu_worker(tiny_model_dir, worker_gpus, f"gpu-{transport}") as worker:
        trainer = TrainerStub.options(num_gpus=trainer_gpus).remote(tiny_model_dir, transport, [worker])
        for version in (1, 2):
            stats = ray.get(trainer.sync.remote(version, seed=version), timeout=300)
            assert stats.version == version and stats.num_buckets > 1
        assert ray.get(worker.policy_version.remote()) == 2
        _assert_serves_trainer_weights(worker, trainer)


@needs_gpu
def test_cuda_ipc_colocated_sync_matches_hf(ray_local, tiny_model_dir):
    _roundtrip(tiny_model_dir, "cuda_ipc", worker_gpus=0.4, trainer_gpus=0.4)


@needs_gpu
@pytest.mark.parametrize("level", [1, 2])
def test_colocated_sleep_frees_gpu_memory_and_sync_refills(ray_local, tiny_model_dir, level):
    """The colocated step on one GPU: sleep frees the engine's memory (KV cache, and the weights),
    the weights wake, a cuda_ipc sync loads the trainer's, the KV cache wakes, logprobs match."""
    with _gpu_worker(tiny_model_dir, 0.4, f"gpu-sleep-{level}", sleep_level=level) as worker:
        trainer = TrainerStub.options(num_gpus=0.4).remote(tiny_model_dir, "cuda_ipc", [worker])
        slept = ray.get(worker.sleep.remote(level), timeout=300)
        assert slept["freed_gb"] > 1.0, slept  # 0.3 of the GPU was reserved, mostly KV cache
        ray.get(worker.wake_up.remote(["weights"]), timeout=300)
        assert ray.get(trainer.sync.remote(1, seed=1), timeout=300).version == 1
        ray.get(worker.wake_up.remote(["kv_cache"]), timeout=300)
        assert ray.get(worker.health.remote())["healthy"]
        _assert_serves_trainer_weights(worker, trainer)


@needs_two_gpus
def test_nccl_sync_matches_hf(ray_local, tiny_model_dir):
    _roundtrip(tiny_model_dir, "nccl", worker_gpus=1, trainer_gpus=1)


@pytest.mark.skipif(NUM_GPUS > 0, reason="checks the error raised where there is no GPU")
@pytest.mark.parametrize("transport", ["nccl", "cuda_ipc"])
def test_gpu_transports_refuse_without_cuda(ray_local, transport):
    fake = FakeWorker.remote("cpu-only", {"w": ((2,), "float32")})
    started(fake)
    with pytest.raises(WeightSyncError, match="requires a CUDA GPU"):
        make_sender(transport, [fake], bucket_bytes=1 << 20, timeout_s=30)
    ray.kill(fake)
