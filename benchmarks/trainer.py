"""Trainer throughput and peak memory versus ZeRO stage and number of data-parallel ranks.

    python -m benchmarks.trainer                       # stages 0-3 x ranks 1,2, ~28M-param Qwen2
    python -m benchmarks.trainer --stages 0 3 --ranks 2 --steps 3

A Qwen2 is built locally (random weights, no downloads); every layout trains on the same batch of
synthetic GRPO samples, so the numbers compare layouts, not models. Reported per layout: real
(unpadded) tokens per second of a whole `train_step` (driver wall time, median over the timed
steps, after warm-up steps), the max over ranks of peak memory (RSS on CPU; max allocated on GPU),
and set-up time. Output: a table, then one JSON line (`{"benchmark": "trainer", ...}`).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from monitor.run_logger import LOG_FORMAT
from monitor.text_table import format_table

logger = logging.getLogger("benchmarks.trainer")


def build_model(out_dir: Path, hidden: int, layers: int, vocab: int) -> tuple[str, int]:
    """Save a random Qwen2 (config + safetensors) and return its path and parameter count."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    heads = max(1, hidden // 64)
    config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 2.75),
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=max(1, heads // 2), max_position_embeddings=4096,
                         tie_word_embeddings=True, pad_token_id=0, eos_token_id=1)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out_dir)
    return str(out_dir), sum(p.numel() for p in model.parameters())


def make_batch(n: int, min_len: int, max_len: int, vocab: int, seed: int = 0) -> list[Any]:
    """GRPO-like samples: a prompt without loss, a response with loss, varied lengths."""
    from trainers.batching import TrainSample

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(min_len, max_len)
        prompt = length // 3
        out.append(TrainSample(token_ids=[rng.randrange(2, vocab) for _ in range(length)],
                               loss_mask=[0] * prompt + [1] * (length - prompt),
                               sampler_logprobs=[-9.0] * length, advantage=rng.gauss(0, 1)))
    return out


def bench_layout(model_path: str, stage: int, ranks: int, samples: list[Any], steps: int,
                 warmup: int, micro_batch_tokens: int, cpus_per_rank: float,
                 gpus_per_rank: float) -> dict[str, Any]:
    from configs.schema import GRPOConfig, TrainerConfig
    from trainers.group import PolicyTrainerGroup
    from trainers.spec import TrainerSpec

    t0 = time.perf_counter()
    trainer = TrainerConfig(num_ranks=ranks, zero_stage=stage, lr=1e-6,
                            micro_batch_tokens=micro_batch_tokens, cpus_per_rank=cpus_per_rank,
                            gpus_per_rank=gpus_per_rank, log_entropy=False)
    group = PolicyTrainerGroup(TrainerSpec(model_path, trainer), name=f"bench_z{stage}_r{ranks}")
    setup_s = time.perf_counter() - t0
    try:
        # The numbers in benchmarks/README.md were taken with this loss: symmetric clip, no IS.
        cfg = GRPOConfig(clip_high=0.2, importance_sampling="none")
        rates, peaks, step_s = [], [], []
        for k in range(warmup + steps):
            m = group.train_step(samples, cfg)
            if k >= warmup:
                rates.append(m["train/tokens_per_s"])
                step_s.append(m["train/wall_time_s"])
            peaks.append(m["train/peak_memory_gb"])
        return {"zero_stage": stage, "ranks": ranks, "tokens_per_s": statistics.median(rates),
                "step_s": statistics.median(step_s), "peak_memory_gb": max(peaks),
                "setup_s": setup_s, "micro_batches": m["train/num_micro_batches"],
                "padding_frac": m["train/padding_frac"]}
    finally:
        group.shutdown()


COLUMNS = [("ZeRO", "zero_stage", ""), ("ranks", "ranks", ""), ("tokens/s", "tokens_per_s", ".0f"),
           ("step s", "step_s", ".2f"), ("peak GB/rank", "peak_memory_gb", ".2f"), ("setup s", "setup_s", ".1f")]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--min-len", type=int, default=64)
    p.add_argument("--max-len", type=int, default=192)
    p.add_argument("--micro-batch-tokens", type=int, default=1024)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--cpus-per-rank", type=float, default=1.0)
    p.add_argument("--gpus-per-rank", type=float, default=0.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)

    from cluster.ray_cluster import connect

    connect(None, num_cpus_needed=max(args.ranks) * args.cpus_per_rank)
    with tempfile.TemporaryDirectory(prefix="labrl_bench_") as tmp:
        model_path, n_params = build_model(Path(tmp) / "model", args.hidden, args.layers, args.vocab)
        logger.info("benchmark model: %.1fM parameters", n_params / 1e6)
        samples = make_batch(args.samples, args.min_len, args.max_len, args.vocab)
        rows = []
        for ranks in args.ranks:
            for stage in args.stages:
                logger.info("layout: ZeRO-%d, %d rank(s)", stage, ranks)
                rows.append(bench_layout(model_path, stage, ranks, samples, args.steps, args.warmup,
                                         args.micro_batch_tokens, args.cpus_per_rank,
                                         args.gpus_per_rank))
                logger.info("%s", rows[-1])
    result = {"benchmark": "trainer", "num_params": n_params,
              "tokens_per_batch": sum(len(s.token_ids) for s in samples),
              "config": vars(args), "results": rows}
    sys.stdout.write(format_table(rows, COLUMNS) + "\n" + json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
