"""Planning the trainer's work: rank split, token-budget packing, equal counts, normalisers."""

from __future__ import annotations

import math

import pytest
import torch

from configs.schema import LabrlConfig, TrainerConfig
from trainers.batching import (MicroBatch, TrainSample, collate, equalize_counts, global_normalizers,
                               pack_by_budget, plan_train_step, split_across_ranks)
from trainers.metrics import MetricState, merge_states
from trainers.spec import LrShape, TrainerSpec, deepspeed_config, make_optimizer, make_scheduler


def test_split_balances_tokens_and_is_deterministic():
    lengths = [100, 90, 80, 10, 10, 10, 5, 5, 70, 60]
    split = split_across_ranks(lengths, 2)
    assert sorted(i for r in split for i in r) == list(range(len(lengths)))
    loads = [sum(lengths[i] for i in r) for r in split]
    assert abs(loads[0] - loads[1]) <= max(lengths) // 2
    assert split == split_across_ranks(lengths, 2)
    assert split_across_ranks([7], 3) == [[0], [], []]


def test_pack_respects_budget_and_groups_similar_lengths():
    lengths = [50, 12, 48, 11, 13, 49, 300]
    groups = pack_by_budget(lengths, list(range(len(lengths))), token_budget=100)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert groups[0] == [6]  # too long for the budget: alone
    for g in groups[1:]:
        assert max(lengths[i] for i in g) * len(g) <= 100
    assert groups == [[6], [0, 5], [2, 4], [1, 3]]  # longest first, consecutive fill


def test_equalize_splits_then_pads_with_placeholders():
    per_rank = [[[0], [1], [2], [3]], [[4, 5, 6]], []]
    equalize_counts(per_rank)
    assert [len(g) for g in per_rank] == [4, 4, 4]
    assert sorted(i for g in per_rank[1] for i in g) == [4, 5, 6]
    assert [] in per_rank[1]  # 3 samples cannot fill 4 micro-batches
    assert per_rank[2] == [[], [], [], []]


def test_plan_train_step_global_normalizers_and_coverage(th):
    samples = th.make_samples(0, 13)
    plan = plan_train_step(samples, num_ranks=3, num_mini_batches=2, token_budget=64)
    assert len(plan) == 3 and all(len(p) == 2 for p in plan)
    for k, lo_hi in enumerate([(0, 6), (6, 13)]):  # round(13/2) = 6
        mini = samples[slice(*lo_hi)]
        shards = [plan[r][k] for r in range(3)]
        tokens, seqs = global_normalizers(mini)
        assert tokens == sum(s.num_loss_tokens for s in mini)
        assert all((sh.token_normalizer, sh.seq_normalizer) == (tokens, seqs) for sh in shards)
        assert len({len(sh.micro_batches) for sh in shards}) == 1  # equal counts
        seen = [id(s) for sh in shards for mb in sh.micro_batches for s in mb.samples]
        assert sorted(seen) == sorted(id(s) for s in mini)
        for sh in shards:
            for mb in sh.micro_batches:
                assert len(mb.samples) <= 1 or mb.padded_tokens <= 64


def test_collate_shifts_and_pads():
    a = TrainSample([5, 6, 7, 8], [0, 0, 1, 1], [0.0, 0.0, -1.0, -2.0], 0.5)
    b = TrainSample([9, 10], [0, 1], [0.0, -3.0], -1.0, ref_logprobs=[0.0, -2.5])
    c = collate(MicroBatch([a, b]), pad_id=0)
    assert c.input_ids.tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert c.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert c.target_ids.tolist() == [[6, 7, 8], [10, 0, 0]]
    assert c.mask.tolist() == [[0, 1, 1], [1, 0, 0]]
    assert c.sampler_logprobs.tolist() == [[0.0, -1.0, -2.0], [-3.0, 0.0, 0.0]]
    assert c.ref_logprobs is None  # only some samples carry reference logprobs
    placeholder = collate(MicroBatch([]), pad_id=0)
    assert placeholder.is_placeholder and placeholder.mask.sum() == 0


def test_sample_validation():
    with pytest.raises(ValueError, match="loss_mask"):
        TrainSample([1, 2, 3], [0, 1], [0.0, 0.0, 0.0], 1.0)


def test_metric_merge_is_token_weighted_across_ranks():
    r0, r1 = MetricState(), MetricState()
    r0.add("clip", 0.5, "mean", weight=10)
    r1.add("clip", 0.0, "mean", weight=30)
    r0.add("loss", 0.2, "sum")
    r1.add("loss", 0.3, "sum")
    r0.add("ratio_max", 1.5, "max")
    r1.add("ratio_max", 1.2, "max")
    out = merge_states([r0, r1])
    assert out["clip"] == pytest.approx(0.125)
    assert out["loss"] == pytest.approx(0.5)
    assert out["ratio_max"] == 1.5


def test_lr_shape_and_deepspeed_config():
    shape = LrShape(warmup_steps=3, schedule="cosine", total_steps=13, min_ratio=0.1)
    assert [round(shape(s), 3) for s in range(3)] == [0.25, 0.5, 0.75]
    assert shape(3) == 1.0 and math.isclose(shape(13), 0.1)
    spec = TrainerSpec("x", TrainerConfig(zero_stage=3, grad_clip=0.5, zero3_persistence_threshold=7))
    cfg = deepspeed_config(spec, 2)
    assert cfg["managed_gradient_accumulation"] is False and cfg["train_batch_size"] == 2
    assert cfg["zero_optimization"]["stage"] == 3 and cfg["gradient_clipping"] == 0.5
    assert cfg["zero_optimization"]["stage3_param_persistence_threshold"] == 7
    assert cfg["bf16"]["enabled"] is False and "data_types" not in cfg  # CPU: fp32
    assert spec.torch_dtype == torch.float32
    gpu = deepspeed_config(TrainerSpec("x", TrainerConfig(zero_stage=2, gpus_per_rank=1.0)), 1)
    assert gpu["bf16"]["enabled"] and gpu["data_types"]["grad_accum_dtype"] == "fp32"
    assert gpu["zero_optimization"]["overlap_comm"] is True


def test_spec_from_config_reads_the_sections():
    cfg = LabrlConfig.model_validate({"seed": 5, "generation": {"temperature": 0.7},
                                      "grpo": {"num_steps": 12}, "trainer": {"lr": 2e-4}})
    spec = TrainerSpec.from_config(cfg, "/m")
    assert (spec.model_path, spec.seed, spec.temperature, spec.total_steps) == ("/m", 5, 0.7, 12)
    assert spec.trainer is cfg.trainer
    # The schedule counts optimizer steps: every pass over the batch makes num_mini_batches of them.
    several = cfg.model_copy(update={"grpo": cfg.grpo.model_copy(update={"ppo_epochs": 2, "num_mini_batches": 3})})
    assert TrainerSpec.from_config(several, "/m").total_steps == 72


def test_optimizer_and_schedule_follow_the_trainer_section():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    t = TrainerConfig(lr=0.1, weight_decay=0.01, adam_betas=(0.8, 0.9), adam_eps=1e-6, warmup_steps=1,
                      lr_schedule="linear", min_lr_ratio=0.5)
    opt = make_optimizer(model, t)
    decay, no_decay = opt.param_groups  # the matrix decays; biases and the norm do not
    assert len(decay["params"]) == 1 and decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert decay["betas"] == (0.8, 0.9) and decay["eps"] == 1e-6
    sched = make_scheduler(opt, TrainerSpec("x", t, total_steps=5))
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # warmup 0.05, then 0.1 decaying linearly to 0.05 at step 5
    assert lrs == pytest.approx([0.05, 0.1, 0.0875, 0.075, 0.0625, 0.05])
