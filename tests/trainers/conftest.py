"""Fixtures for the trainer tests: a tiny policy on disk, one Ray cluster per test module, and
helpers (served as the `th` fixture: test modules cannot import sibling helper modules here).

The model is deliberately minute (2 layers, 64 hidden) so DeepSpeed start-up, not compute,
dominates the run time.
"""

from __future__ import annotations

import dataclasses
import random
from types import SimpleNamespace

import pytest
import ray
import torch

from configs.schema import GRPOConfig, TrainerConfig
from models.tiny import TinyModelSpec, save_tiny_model
from trainers.batching import MicroBatch, TrainSample, collate
from trainers.grpo.losses import gather_logprobs, policy_loss

TINY = TinyModelSpec(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                     num_kv_heads=2, max_position_embeddings=256, seed=1)


def make_samples(seed: int, n: int, vocab: int = 100, min_len: int = 6,
                 max_len: int = 40) -> list[TrainSample]:
    """Random episodes: a prompt (mask 0) then a response (mask 1), varied lengths, noisy
    sampler logprobs (so importance weights are not all 1) and signed advantages."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(min_len, max_len)
        prompt = rng.randint(2, min_len - 1)
        out.append(TrainSample(token_ids=[rng.randint(7, vocab - 1) for _ in range(length)],
                               loss_mask=[0] * prompt + [1] * (length - prompt),
                               sampler_logprobs=[-4.6 + rng.gauss(0, 0.05) for _ in range(length)],
                               advantage=rng.gauss(0, 1)))
    return out


def reference_steps(model_dir: str, batches: list[list[TrainSample]], cfg: GRPOConfig,
                    trainer: TrainerConfig) -> tuple[dict[str, torch.Tensor], list[float], list[float]]:
    """Plain PyTorch, one process, whole batch in one forward: what every trainer layout must
    reproduce (on-policy: old logprobs = current, one optimizer step per batch).

    Returns the parameters, and per step the pre-clip gradient norm and the loss. Adam's update
    barely depends on the gradient's scale, so the norms are what catch a mis-scaled gradient.
    """
    from transformers import AutoModelForCausalLM

    from trainers.spec import make_optimizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    opt = make_optimizer(model, trainer)
    norms, losses = [], []
    for samples in batches:
        b = collate(MicroBatch(samples), model.config.pad_token_id)
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1]
        lp = gather_logprobs(logits, b.target_ids)
        loss, _ = policy_loss(lp, lp.detach(), b.advantages, b.mask, cfg,
                              sampler_logprobs=b.sampler_logprobs)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.grad_clip)))
        losses.append(loss.item())
        opt.step()
        opt.zero_grad()
    return {n: p.detach().clone() for n, p in model.named_parameters()}, norms, losses


def assert_params_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor],
                        atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Default tolerance: 1% of the test lr. Adam divides by sqrt(v): where a gradient is ~0 its
    fp32 rounding (summation order differs across layouts) moves the update by up to that much."""
    assert set(got) == set(want)
    worst = max((got[k] - want[k]).abs().max().item() for k in want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=atol, rtol=rtol,
                                   msg=lambda m, k=k: f"{k}: {m} (worst param diff {worst:.2e})")


def set_on_policy(group, samples: list[TrainSample]) -> None:
    """Make the sampler logprobs the trainer's own (what a perfectly matched sampler returns)."""
    for s, lp in zip(samples, group.compute_logprobs([s.token_ids for s in samples])):
        s.sampler_logprobs = lp


def assert_logprobs_match_hf(group, model_dir: str, seqs: list[list[int]]) -> None:
    """The trainer's logprobs equal those of `model_dir` loaded by plain transformers."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    for ids, lp in zip(seqs, group.compute_logprobs(seqs)):
        t = torch.tensor([ids])
        want = gather_logprobs(model(input_ids=t).logits[:, :-1], t[:, 1:])[0]
        assert len(lp) == len(ids) and lp[0] == 0.0
        torch.testing.assert_close(torch.tensor(lp[1:]), want, atol=1e-5, rtol=1e-5)


def check_resume(group, ckpt_dir: str, seed: int, cfg: GRPOConfig) -> None:
    """save -> step B  must equal  save -> step A (elsewhere) -> load -> step B, exactly."""
    a, b = make_samples(seed, 8), make_samples(seed + 1, 8)
    group.train_step(a, cfg)
    step = group.step
    group.save_checkpoint(ckpt_dir)
    group.train_step(b, cfg)
    uninterrupted = group.gather_parameters()
    group.train_step(a, cfg)  # move away, then come back
    assert group.load_checkpoint(ckpt_dir) == step
    group.train_step(b, cfg)
    assert_params_close(group.gather_parameters(), uninterrupted, atol=0, rtol=0)


def check_zero_advantage_skipping(group, ckpt_dir: str, seed: int, cfg: GRPOConfig) -> None:
    """From one checkpoint, a batch with every sample run and the same batch with its zero-advantage
    samples skipped give the same loss, gradient norm and weights; the model runs fewer tokens. A
    mini-batch with no signal at all makes no optimizer step."""
    samples = make_samples(seed, 12)
    for s in samples[::2]:
        s.advantage = 0.0
    group.save_checkpoint(ckpt_dir)
    results = []
    spec = group.spec  # skip_zero_advantage is read on the driver: swap the group's spec
    try:
        for skip in (False, True):
            group.load_checkpoint(ckpt_dir)
            group.spec = dataclasses.replace(spec, trainer=spec.trainer.model_copy(
                update={"skip_zero_advantage": skip}))
            results.append((group.train_step(samples, cfg), group.gather_parameters()))
    finally:
        group.spec = spec
    (dense, dense_params), (skipped, skipped_params) = results
    assert skipped["train/num_zero_advantage_skipped"] == 6 and dense["train/num_zero_advantage_skipped"] == 0
    assert skipped["train/num_sequences"] == 6 and dense["train/num_sequences"] == 12
    assert skipped["train/num_tokens"] < dense["train/num_tokens"] == skipped["train/batch_tokens"]
    assert skipped["train/loss"] == pytest.approx(dense["train/loss"], rel=1e-5)
    assert skipped["train/grad_norm"] == pytest.approx(dense["train/grad_norm"], rel=1e-5)
    assert_params_close(skipped_params, dense_params, atol=1e-6, rtol=1e-5)
    flat_first = sorted(samples, key=lambda s: s.advantage != 0.0)  # mini-batch 1: all six flat ones
    step = group.step
    m = group.train_step(flat_first, cfg.model_copy(update={"num_mini_batches": 2}))
    assert group.step == step + 1 and m["train/skipped_no_signal_updates"] == 1.0


@pytest.fixture(scope="session")
def th() -> SimpleNamespace:
    return SimpleNamespace(make_samples=make_samples, reference_steps=reference_steps,
                           assert_params_close=assert_params_close, set_on_policy=set_on_policy,
                           assert_logprobs_match_hf=assert_logprobs_match_hf,
                           check_resume=check_resume, check_zero_advantage_skipping=check_zero_advantage_skipping)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny_policy"), TINY))


@pytest.fixture(scope="module")
def ray_cluster():
    from cluster.ray_cluster import connect

    if ray.is_initialized():  # a Ray left by another test module: start our own, sized for us
        ray.shutdown()
    connect(None, num_cpus_needed=4, num_cpus=4)
    yield
    ray.shutdown()
