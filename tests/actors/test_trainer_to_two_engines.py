"""The real DeepSpeed trainer syncing to two real vLLM engines, under ZeRO-0 and ZeRO-3, over shm
(one-shot), gloo (the streaming broadcast protocol nccl uses on GPUs) and shm_inplace (the trainer
writing into the engines' shared weights). One engine runs eagerly, the other compiled.

After a GRPO step and a sync, each engine serves exactly the trainer's weights: its prompt
logprobs equal the trainer's own on the same tokens (fp32, max abs difference <= 1e-3), it
reports the new version, and its logprobs moved (the step really changed the weights).
"""

from __future__ import annotations

import random

import pytest
import ray

from actors.generation import GenerationWorker
from actors.types import EngineSpec
from configs.schema import GenerationConfig, GRPOConfig, SyncConfig, TrainerConfig
from trainers.batching import TrainSample
from trainers.group import PolicyTrainerGroup
from trainers.spec import TrainerSpec

TIMEOUT = 300


@pytest.fixture(scope="module")
def engines(ray_local, tiny_model_dir):
    # One eager engine, one running vLLM's compiled graph: syncs must reach the weights both run.
    handles = [GenerationWorker.as_actor(EngineSpec(tiny_model_dir, GenerationConfig(
                   max_model_len=256, kv_cache_gb=0.5, enforce_eager=i == 0)), name=f"two-engines-{i}")
               for i in range(2)]
    assert ray.get([h.ready.remote() for h in handles], timeout=900) == [0, 0]
    yield handles
    for h in handles:
        try:
            ray.get(h.shutdown.remote(), timeout=60)
        finally:
            ray.kill(h)


def grpo_samples(seed: int, n: int = 8) -> list[TrainSample]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ids = [rng.randint(7, 99) for _ in range(rng.randint(12, 30))]
        out.append(TrainSample(token_ids=ids, loss_mask=[0] * 4 + [1] * (len(ids) - 4),
                               sampler_logprobs=[0.0] * len(ids), advantage=(-1.0) ** i))
    return out


@pytest.mark.parametrize("stage, ranks, transport, version", [(0, 1, "shm", 1), (3, 2, "shm", 2),
                                                               (3, 2, "gloo", 3), (3, 2, "shm_inplace", 4)])
def test_engines_serve_the_trainer_weights_after_a_step(engines, tiny_model_dir, stage, ranks, transport,
                                                        version):
    group = PolicyTrainerGroup(TrainerSpec(tiny_model_dir, TrainerConfig(
        num_ranks=ranks, zero_stage=stage, lr=3e-2, micro_batch_tokens=96, cpus_per_rank=1,
        zero3_persistence_threshold=0)), name=f"two-engines-z{stage}")
    try:
        probe = grpo_samples(99, 1)[0].token_ids
        before = ray.get([e.prompt_logprobs.remote(probe) for e in engines], timeout=TIMEOUT)
        group.train_step(grpo_samples(version), GRPOConfig())  # each case its own update
        # 1 MiB buckets: the ~4 MB tiny model streams in several
        stats = group.sync_weights(engines, version, SyncConfig(transport=transport, bucket_mb=1, timeout_s=TIMEOUT))
        assert stats.version == version and (stats.num_buckets > 1 or transport == "shm_inplace")  # no buckets
        trainer = group.compute_logprobs([probe])[0]
        for engine, old in zip(engines, before):
            assert ray.get(engine.policy_version.remote()) == version
            served = ray.get(engine.prompt_logprobs.remote(probe), timeout=TIMEOUT)
            assert max(abs(a - b) for a, b in zip(served[1:], trainer[1:])) <= 1e-3
            assert max(abs(a - b) for a, b in zip(served[1:], old[1:])) > 1e-2
    finally:
        group.shutdown()
