"""How far `benchmarks.trl_compare`'s runs are from the arithmetic they must do (its second table).

A decoder with P matmul parameters costs 2P FLOP per position run forward (generation: every prompt
position prefilled, every new token decoded) and 6P per position trained (forward + backward).
Attention scores are left out (< 2% at these 70-token contexts). The floor of a piece of work is its
FLOP at this machine's fp32 GEMM rate, measured here with the model's own layer shapes: one thread
for labrl's roles (its engine and its trainer rank each compute on one core), both threads for a
TRL step. "x floor" is measured time / floor: 1.0 would be every cycle spent in peak-rate GEMMs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ratio


def matmul_params(model_dir: str) -> float:
    """P: the weights of every GEMM a position goes through (attention and MLP projections, head)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    head_dim = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * head_dim, cfg["num_key_value_heads"] * head_dim
    per_layer = h * (q + 2 * kv) + q * h + 3 * h * inter
    return float(layers * per_layer + cfg["vocab_size"] * h)


def gemm_gflops(model_dir: str, threads: int, rows: int = 2048, seconds: float = 2.0) -> float:
    """fp32 GEMM rate (GFLOP/s) on `threads` threads, for the model's MLP up-projection shape."""
    import torch

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(rows, cfg["hidden_size"])
        b = torch.randn(cfg["hidden_size"], cfg["intermediate_size"])
        a @ b  # warm-up: first call allocates and picks kernels
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            n += 1
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
    return 2.0 * rows * cfg["hidden_size"] * cfg["intermediate_size"] * n / elapsed / 1e9


def floor_row(run: dict[str, Any], p: float, gflops_1t: float, gflops_2t: float,
              prompts_per_step: int, completions_per_prompt: int) -> dict[str, Any]:
    """One run's measured cost per position against its floor. labrl: generation (a batch's
    latency, its groups' prompts prefilled once) and training (a step over the positions the model
    ran) apart; TRL: its whole step (padded prompts + completions trained, every prompt prefilled)."""
    batch = prompts_per_step * completions_per_prompt
    completion = run.get("completion_len_mean", float("nan"))
    prompt = ratio(run.get("batch_tokens", float("nan")), batch) - completion
    out = {"size": run["size"], "label": run["label"], "params_m": p / 1e6}
    if run["side"].startswith("labrl"):
        generated = batch * completion
        prefilled = prompts_per_step * prompt
        gen_flop = 2 * p * (prefilled + generated)
        out["gen_ms_per_token"] = 1e3 * ratio(run.get("generation_s_mean", float("nan")), generated)
        out["gen_floor_ms"] = 1e3 * gen_flop / generated / (gflops_1t * 1e9)
        positions = run.get("num_model_tokens", float("nan"))
        out["train_ms_per_position"] = 1e3 * ratio(run.get("step_time_s", float("nan")), positions)
        out["train_floor_ms"] = 1e3 * 6 * p / (gflops_1t * 1e9)
    else:
        step_flop = 2 * p * batch * (prompt + completion) + 6 * p * batch * (prompt + completion)
        out["step_floor_s"] = step_flop / (gflops_2t * 1e9)
        out["step_s"] = run.get("step_s_median", float("nan"))
    for measured, floor in (("gen_ms_per_token", "gen_floor_ms"), ("train_ms_per_position", "train_floor_ms"),
                            ("step_s", "step_floor_s")):
        if measured in out:
            out[f"{measured}_x_floor"] = ratio(out[measured], out[floor])
    return out


FLOOR_COLUMNS = [
    ("model", "size", ""), ("params M", "params_m", ".1f"), ("run", "label", ""),
    ("gen ms/token", lambda r: r.get("gen_ms_per_token", float("nan")), ".2f"),
    ("gen floor ms", lambda r: r.get("gen_floor_ms", float("nan")), ".2f"),
    ("gen x floor", lambda r: r.get("gen_ms_per_token_x_floor", float("nan")), ".1f"),
    ("train ms/position", lambda r: r.get("train_ms_per_position", float("nan")), ".2f"),
    ("train floor ms", lambda r: r.get("train_floor_ms", float("nan")), ".2f"),
    ("train x floor", lambda r: r.get("train_ms_per_position_x_floor", float("nan")), ".1f"),
    ("step s", lambda r: r.get("step_s", float("nan")), ".2f"),
    ("step floor s", lambda r: r.get("step_floor_s", float("nan")), ".2f"),
    ("step x floor", lambda r: r.get("step_s_x_floor", float("nan")), ".1f"),
]
