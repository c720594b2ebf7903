"""One-rank trainer (ZeRO-0): on-policy ratio, the full-batch update, KL reference, resume, export."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest
import ray
import torch

from configs.schema import GRPOConfig, TrainerConfig
from trainers.group import PolicyTrainerGroup, TrainerRankLost
from trainers.spec import TrainerSpec

LR = 1e-3
TRAINER = TrainerConfig(num_ranks=1, zero_stage=0, lr=LR, weight_decay=0.01, grad_clip=1.0,
                        micro_batch_tokens=96, cpus_per_rank=1)
CFG = GRPOConfig(clip_high=0.2, importance_sampling="token_tis", is_cap=2.0)
PLAIN = GRPOConfig(clip_high=0.2, importance_sampling="none")  # no sampler correction
WITH_KL = GRPOConfig(clip_high=0.2, importance_sampling="none", kl_coef=0.1)


@pytest.fixture(scope="module")
def group(ray_cluster, tiny_model_dir):
    g = PolicyTrainerGroup(TrainerSpec(tiny_model_dir, TRAINER))
    yield g
    g.shutdown()


def test_compute_logprobs_matches_hf(group, tiny_model_dir, th):
    th.assert_logprobs_match_hf(group, tiny_model_dir, [s.token_ids for s in th.make_samples(1, 5)])


def test_on_policy_first_step_and_full_batch_equivalence(group, tiny_model_dir, th):
    """Sampler == trainer: ratio and IS weights are exactly 1, approx_kl 0; two steps (several
    micro-batches each) equal plain full-batch PyTorch steps."""
    batches = [th.make_samples(10, 12), th.make_samples(11, 12)]
    for samples in batches:
        th.set_on_policy(group, samples)
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
    want, norms, losses = th.reference_steps(tiny_model_dir, batches, CFG, TRAINER)
    assert [m["train/grad_norm"] for m in metrics] == pytest.approx(norms, rel=1e-4)
    assert [m["train/loss"] for m in metrics] == pytest.approx(losses, rel=1e-4, abs=1e-7)
    th.assert_params_close(group.gather_parameters(), want)


def test_mini_batches_recompute_old_logprobs(group, th):
    samples = th.make_samples(12, 8)
    th.set_on_policy(group, samples)
    step0 = group.step
    m = group.train_step(samples, CFG.model_copy(update={"ppo_epochs": 2, "num_mini_batches": 2}))
    assert group.step == step0 + 4
    # Old logprobs are frozen at the start: later updates see a moved policy.
    assert m["train/approx_kl"] > 0 and m["train/is_ratio_min"] == pytest.approx(1.0, abs=1e-6)


def test_kl_reference_loaded_only_when_needed(group, th):
    samples = th.make_samples(13, 6)
    m = group.train_step(samples, PLAIN)
    assert "train/kl_ref" not in m
    m = group.train_step(samples, WITH_KL)
    assert m["train/kl_ref"] > 0  # the policy has moved away from the initial weights


def test_batch_without_signal_leaves_weights_alone(group, th):
    """All-zero advantages give a zero loss; an Adam step would still move the weights along its
    momentum from earlier steps, so the group skips it. A KL term is signal: that step runs."""
    samples = th.make_samples(14, 6)
    group.train_step(samples, CFG)  # leaves nonzero Adam momentum behind
    for s in samples:
        s.advantage = 0.0
    before, step0 = group.gather_parameters(), group.step
    m = group.train_step(samples, CFG)
    assert m["train/skipped_no_signal"] == 1.0 and group.step == step0
    th.assert_params_close(group.gather_parameters(), before, atol=0.0, rtol=0.0)
    m = group.train_step(samples, WITH_KL)
    assert m["train/skipped_no_signal"] == 0.0 and group.step == step0 + 1


def test_nonfinite_loss_never_reaches_the_weights(group, th):
    """A NaN micro-batch loss is reported (the health monitor counts it) but backpropagated as a
    zero gradient; a step with nothing finite is skipped outright."""
    samples = th.make_samples(15, 8)
    th.set_on_policy(group, samples)
    for s in samples:
        s.advantage = math.nan
    before, step0 = group.gather_parameters(), group.step
    m = group.train_step(samples, CFG)
    assert math.isnan(m["train/loss"]) and m["train/skipped_nonfinite"] == 1.0 and group.step == step0
    assert m["train/nonfinite_micro_batches"] == m["train/num_micro_batches"] > 1
    th.assert_params_close(group.gather_parameters(), before, atol=0.0, rtol=0.0)
    for i, s in enumerate(samples):  # one poisoned sample among good ones: the step runs without it
        s.advantage = math.nan if i == 0 else (-1.0) ** i
    m = group.train_step(samples, CFG)
    assert group.step == step0 + 1 and "train/skipped_nonfinite" not in m
    assert 1 <= m["train/nonfinite_micro_batches"] < m["train/num_micro_batches"]
    after = group.gather_parameters()
    assert all(torch.isfinite(t).all() for t in after.values())
    assert any(not torch.equal(after[n], before[n]) for n in before)


def test_resume_equals_uninterrupted(group, tmp_path, th):
    th.check_resume(group, str(tmp_path / "ckpt"), seed=20, cfg=CFG)


def test_zero_advantage_samples_skipped_without_changing_the_update(group, tmp_path, th):
    th.check_zero_advantage_skipping(group, str(tmp_path / "ckpt"), seed=60, cfg=CFG)


def test_export_reloads_in_transformers(group, tmp_path, th):
    from models.loading import load_tokenizer

    out = group.export_hf(str(tmp_path / "hf"))
    tok = load_tokenizer(out)
    assert tok.decode(tok("a b\nc")["input_ids"]) == "a b\nc"
    th.assert_logprobs_match_hf(group, out, [s.token_ids for s in th.make_samples(30, 4)])


ALLREDUCE_PROBE = """
import sys
from deepspeed.runtime.engine import DeepSpeedEngine
from benchmarks.trainer_profile import batch, make_rank
from models.tiny import save_tiny_model
from trainers.batching import plan_train_step
calls, real = [], DeepSpeedEngine.allreduce_bucket
def counted(self, *args, **kwargs):
    calls.append(1)
    return real(self, *args, **kwargs)
DeepSpeedEngine.allreduce_bucket = counted
rank, cfg = make_rank(str(save_tiny_model(sys.argv[1])), port=int(sys.argv[2]))
plan = plan_train_step(batch(1, rank.engine.module.config.vocab_size), 1, 1, cfg.trainer.micro_batch_tokens)[0]
metrics = rank.train_step(plan, cfg.grpo)
sys.stdout.write(f"RESULT {len(calls)} {metrics.result()['train/grad_norm']}\\n")
"""


def test_a_lone_rank_skips_the_gradient_allreduce(tmp_path):
    """ZeRO-0 would flatten and copy back every gradient after backward even with no peer; one
    rank skips that (the update itself is checked against plain PyTorch above)."""
    from actors.calls import free_port
    from benchmarks.common import REPO_ROOT

    proc = subprocess.run([sys.executable, "-c", ALLREDUCE_PROBE, str(tmp_path / "model"), str(free_port())],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    calls, grad_norm = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT ")).split()[1:]
    assert int(calls) == 0 and float(grad_norm) > 0


@ray.remote(num_cpus=0)
def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_waits_name_what_hung(ray_cluster):
    g = PolicyTrainerGroup.__new__(PolicyTrainerGroup)  # only the waiting logic, no ranks
    g.name, g.ranks = "policy_trainer", []
    fast = _sleep.remote(0.0)
    ray.get(fast)  # worker start-up is slow on a busy machine; only the sleeper may be late
    with pytest.raises(TimeoutError, match=r"policy_trainer: export_hf to /x failed on 1 of 2") as err:
        g._wait([fast, _sleep.remote(30.0)], "export_hf to /x", 3.0)
    assert "rank 1: no answer within 3.0 s" in str(err.value) and "rank 0" not in str(err.value)


@ray.remote
class _FakeRank:
    def ping(self) -> bool:
        return True

    def work(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


def test_a_dead_rank_is_reported_lost_and_a_busy_peer_is_not_blamed(ray_cluster):
    g = PolicyTrainerGroup.__new__(PolicyTrainerGroup)  # the waiting logic over two stand-in ranks
    g.name, g.ranks = "policy_trainer", [_FakeRank.remote(), _FakeRank.remote()]
    ray.get([r.ping.remote() for r in g.ranks])
    refs = [rank.work.remote(30.0) for rank in g.ranks]  # rank 0 stays busy, as if in a collective
    ray.kill(g.ranks[1], no_restart=True)
    with pytest.raises(TrainerRankLost) as err:
        g._wait(refs, "train_step (8 samples)", 60.0)
    assert err.value.rank == 1 and "train_step (8 samples)" in err.value.cause
    assert "trainer rank 1 died" in str(err.value)
    ray.kill(g.ranks[0], no_restart=True)
