"""One-rank trainer (ZeRO-0): on-policy ratio, the full-batch update, KL reference, resume, export."""

from __future__ import annotations

import pytest
import torch

from trainers.grpo.losses import PolicyLossConfig, gather_logprobs
from trainers.group import PolicyTrainerGroup
from trainers.settings import TrainerSettings

LR, WD, CLIP = 1e-3, 0.01, 1.0
CFG = PolicyLossConfig(importance_sampling="token_tis", is_cap=2.0)


@pytest.fixture(scope="module")
def group(ray_cluster, tiny_model_dir):
    g = PolicyTrainerGroup(TrainerSettings(model_path=tiny_model_dir, num_ranks=1, zero_stage=0,
                                           lr=LR, weight_decay=WD, grad_clip=CLIP,
                                           micro_batch_tokens=96, cpus_per_rank=1))
    yield g
    g.shutdown()


def test_compute_logprobs_matches_hf(group, tiny_model_dir, th):
    from transformers import AutoModelForCausalLM

    seqs = [s.token_ids for s in th.make_samples(1, 5)]
    got = group.compute_logprobs(seqs)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    for ids, lp in zip(seqs, got):
        t = torch.tensor([ids])
        want = gather_logprobs(model(input_ids=t).logits[:, :-1], t[:, 1:])[0]
        assert len(lp) == len(ids) and lp[0] == 0.0
        torch.testing.assert_close(torch.tensor(lp[1:]), want, atol=1e-5, rtol=1e-5)


def test_on_policy_first_step_and_full_batch_equivalence(group, tiny_model_dir, th):
    """Sampler == trainer: ratio and IS weights are exactly 1, approx_kl 0; two steps (several
    micro-batches each) equal plain full-batch PyTorch steps."""
    batches = [th.make_samples(10, 12), th.make_samples(11, 12)]
    for samples in batches:
        for s, lp in zip(samples, group.compute_logprobs([s.token_ids for s in samples])):
            s.sampler_logprobs = lp
    metrics = [group.train_step(batches[0], CFG)]
    first = metrics[0]
    assert first["train/approx_kl"] == 0.0
    assert first["train/is_ratio_min"] == first["train/is_ratio_max"] == 1.0
    assert first["train/pg_clipfrac_low"] == first["train/pg_clipfrac_high"] == 0.0
    assert first["train/token_mult_prob_error"] == pytest.approx(1.0, abs=1e-6)
    assert first["train/num_micro_batches"] > 1  # the budget forces accumulation
    assert first["train/lr"] == pytest.approx(LR) and first["train/grad_norm"] > 0
    assert first["train/tokens_per_s"] > 0 and first["train/peak_memory_gb"] > 0
    metrics.append(group.train_step(batches[1], CFG))
    want, norms, losses = th.reference_steps(tiny_model_dir, batches, CFG, LR, WD, CLIP)
    assert [m["train/grad_norm"] for m in metrics] == pytest.approx(norms, rel=1e-4)
    assert [m["train/loss"] for m in metrics] == pytest.approx(losses, rel=1e-4, abs=1e-7)
    th.assert_params_close(group.gather_parameters(), want)


def test_mini_batches_recompute_old_logprobs(group, th):
    samples = th.make_samples(12, 8)
    for s, lp in zip(samples, group.compute_logprobs([s.token_ids for s in samples])):
        s.sampler_logprobs = lp
    step0 = group.step
    m = group.train_step(samples, CFG, ppo_epochs=2, num_mini_batches=2)
    assert group.step == step0 + 4
    # Old logprobs are frozen at the start: later updates see a moved policy.
    assert m["train/approx_kl"] > 0 and m["train/is_ratio_min"] == pytest.approx(1.0, abs=1e-6)


def test_kl_reference_loaded_only_when_needed(group, th):
    samples = th.make_samples(13, 6)
    m = group.train_step(samples, PolicyLossConfig())
    assert "train/kl_ref" not in m
    m = group.train_step(samples, PolicyLossConfig(kl_coef=0.1))
    assert m["train/kl_ref"] > 0  # the policy has moved away from the initial weights


def test_resume_equals_uninterrupted(group, tmp_path, th):
    a, b = th.make_samples(20, 8), th.make_samples(21, 8)
    group.train_step(a, CFG)
    step = group.step
    group.save_checkpoint(str(tmp_path / "ckpt"))
    group.train_step(b, CFG)
    uninterrupted = group.gather_parameters()
    group.train_step(a, CFG)  # move away, then come back
    assert group.load_checkpoint(str(tmp_path / "ckpt")) == step
    group.train_step(b, CFG)
    th.assert_params_close(group.gather_parameters(), uninterrupted, atol=0, rtol=0)


def test_export_reloads_in_transformers(group, tmp_path, th):
    from transformers import AutoModelForCausalLM

    from models.loading import load_tokenizer

    out = group.export_hf(str(tmp_path / "hf"))
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tok = load_tokenizer(out)
    assert tok.decode(tok("a b\nc")["input_ids"]) == "a b\nc"
    seqs = [s.token_ids for s in th.make_samples(30, 4)]
    for ids, lp in zip(seqs, group.compute_logprobs(seqs)):
        t = torch.tensor([ids])
        want = gather_logprobs(model(input_ids=t).logits[:, :-1], t[:, 1:])[0]
        torch.testing.assert_close(torch.tensor(lp[1:]), want, atol=1e-5, rtol=1e-5)
