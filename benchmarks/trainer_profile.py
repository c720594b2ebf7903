"""Where one policy-trainer step goes on this CPU: the trainer rank alone, in this process, on 1 and 2 threads.

    python -m benchmarks.trainer_profile                  # 30M (trl_compare's model), 4 groups x 8
    python -m benchmarks.trainer_profile --size 100M --groups 8

The batch has trl_compare's shape: groups of 8 samples sharing a 36-token prompt, 32 sampled
tokens each, every advantage non-zero (so every sample runs). The rank is the real one
(`trainers.policy_trainer.PolicyTrainerRank`, ZeRO-0, fp32, prompt cache on), built without Ray.
After warm-up steps, one step runs under torch.profiler; its operators are grouped (GEMM,
attention, element-wise, optimizer, other) and the GEMM rate is set against the fp32 GEMM rate
measured with the model's MLP shape (`benchmarks.flop_floor`). Prints a table and writes
results/trainer_profile.json. Profiler times are each operator's own CPU time, summed over threads'
wall time as torch.profiler reports it on the calling thread.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from typing import Any

from benchmarks.common import emit, median, setup_logging
from benchmarks.flop_floor import gemm_gflops, matmul_params
from monitor.text_table import format_table

logger = logging.getLogger("benchmarks.trainer_profile")

PROMPT_TOKENS, COMPLETION_TOKENS, GROUP_SIZE = 36, 32, 8
CATEGORIES = {  # operator -> category (anything else: "other")
    "aten::mm": "GEMM", "aten::addmm": "GEMM", "aten::bmm": "GEMM",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward": "attention",
    "aten::_fused_adamw_": "optimizer", "aten::linalg_vector_norm": "optimizer",
    **{f"aten::{op}": "element-wise" for op in (
        "mul", "mul_", "add", "add_", "sub", "div", "neg", "pow", "rsqrt", "silu", "silu_backward", "exp",
        "where", "sum", "mean", "_log_softmax", "_log_softmax_backward_data", "fill_", "copy_", "cat")},
}


CATEGORIES_ORDER = ("GEMM", "attention", "element-wise", "optimizer", "other")


def batch(groups: int, vocab: int, seed: int = 0) -> list[Any]:
    from trainers.batching import TrainSample

    rng = random.Random(seed)
    samples = []
    for _ in range(groups):
        prompt = [rng.randrange(3, vocab) for _ in range(PROMPT_TOKENS)]
        for _ in range(GROUP_SIZE):
            completion = [rng.randrange(3, vocab) for _ in range(COMPLETION_TOKENS)]
            samples.append(TrainSample(prompt + completion, [0] * PROMPT_TOKENS + [1] * COMPLETION_TOKENS,
                                       [0.0] * PROMPT_TOKENS + [-3.0] * COMPLETION_TOKENS, rng.choice([-1.0, 1.0])))
    return samples


def make_rank(model_dir: str, port: int) -> tuple[Any, Any]:
    from configs.loading import load_config
    from trainers.policy_trainer import PolicyTrainerRank
    from trainers.spec import TrainerSpec

    # No board outside Ray: nothing is lent, the thread count set here holds.
    cfg = load_config(None, [f"model.path={model_dir}", "trainer.zero_stage=0", "grpo.kl_coef=0.0"])
    rank = PolicyTrainerRank(TrainerSpec.from_config(cfg, model_dir), 0, 1)
    rank.setup("127.0.0.1", port)
    return rank, cfg


def profile_threads(rank: Any, cfg: Any, samples: list[Any], threads: int, warmup: int) -> dict[str, Any]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from trainers.batching import plan_train_step

    torch.set_num_threads(threads)
    plan = plan_train_step(samples, 1, 1, cfg.trainer.micro_batch_tokens, skip_zero_advantage=True)[0]
    step_s = []
    for _ in range(warmup):
        start = time.perf_counter()
        rank.train_step(plan, cfg.grpo)
        step_s.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        metrics = rank.train_step(plan, cfg.grpo).result()
        profiled_s = time.perf_counter() - start
    by_category: dict[str, float] = {}
    for event in prof.key_averages():
        category = CATEGORIES.get(event.key, "other")
        by_category[category] = by_category.get(category, 0.0) + event.self_cpu_time_total / 1e6
    positions = int(metrics["train/num_model_tokens"])
    return {"threads": threads, "step_s": median(step_s[1:] or step_s),
            "profiled_s": profiled_s, "positions": positions, "seconds": by_category}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from benchmarks.trl_compare import SIZES, build_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="30M", choices=list(SIZES))
    p.add_argument("--groups", type=int, default=4, help="groups of 8 samples (trl_compare skips about half)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--port", type=int, default=29533)
    args = p.parse_args(argv)
    setup_logging()
    model_dir = build_model(args.size)
    rank, cfg = make_rank(model_dir, args.port)
    samples = batch(args.groups, rank.engine.module.config.vocab_size)
    params = matmul_params(model_dir)
    rows = []
    for threads in args.threads:
        r = profile_threads(rank, cfg, samples, threads, args.warmup)
        r["gemm_peak_gflops"] = gemm_gflops(model_dir, threads)
        # Training FLOP of the step's GEMMs: 6 P per position (forward 2P, backward 4P).
        r["gemm_gflops"] = 6 * params * r["positions"] / 1e9 / max(r["seconds"].get("GEMM", 0.0), 1e-9)
        r["floor_s"] = 6 * params * r["positions"] / 1e9 / r["gemm_peak_gflops"]
        rows.append(r)
    if not all(r["positions"] and r["seconds"].get("GEMM") for r in rows):
        raise SystemExit("trainer_profile: a profiled step ran no GEMM; nothing was measured")
    flat = [{**r, **{f"{c} s": r["seconds"].get(c, 0.0) for c in CATEGORIES_ORDER},
             "x floor": r["step_s"] / r["floor_s"]} for r in rows]
    table = format_table(flat, [
        ("threads", "threads", ""), ("step s", "step_s", ".2f"), ("floor s", "floor_s", ".2f"),
        ("x floor", "x floor", ".2f"), ("positions", "positions", ""),
        *[(f"{c} s", f"{c} s", ".3f") for c in CATEGORIES_ORDER],
        ("GEMM GFLOP/s", "gemm_gflops", ".0f"), ("GEMM peak", "gemm_peak_gflops", ".0f")])
    emit("trainer_profile", {"size": args.size, "groups": args.groups, "matmul_params": params, "rows": rows},
         table)
    return {"size": args.size, "rows": rows}


if __name__ == "__main__":
    main()
