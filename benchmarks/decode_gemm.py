"""Why CPU engines compute through packed weights: a decoder layer's GEMMs at decode batch sizes.

    python -m benchmarks.decode_gemm                      # trl_compare's 30M shapes, 64 rows, 1 thread
    python -m benchmarks.decode_gemm --sizes tiny 30M 100M --rows 1 64 128
    python -m benchmarks.decode_gemm --rows 64 128 256 --whole-model   # every layer, as an engine

For each size (trl_compare's models: hidden, intermediate, heads) and row count, the four matrices
of one Qwen2 layer (q/k/v, o, gate/up, down) are timed after warm-up (one layer's weights stay in
cache; `--whole-model` runs every layer's, distinct, in turn, so each decode step streams the whole
model from memory, as an engine's does, and reports the time per layer), through `F.linear` on
the plain weight (labrl's `generation.cpu_gemm=plain`: MKL packs the weight again inside every
call), vLLM's oneDNN handle (`cpu_gemm=packed`; the kind vLLM builds by default) and MKL's packed
GEMM (packed for one row count: other counts fall back to plain speed). Prints ms per layer and
GFLOP/s; exits 1 when this vLLM build has no oneDNN kernels (nothing to compare).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import emit, setup_logging
from benchmarks.trl_compare import SIZES


def layer_shapes(size: str) -> list[tuple[int, int]]:
    """(out, in) of one layer's matrices: fused q/k/v, o, fused gate/up, down."""
    hidden, inter, _, heads, kv = SIZES[size]
    head_dim = hidden // heads
    return [(hidden + 2 * kv * head_dim, hidden), (hidden, hidden), (2 * inter, hidden), (hidden, inter)]


def seconds_per_call(fn: Callable[[], Any], min_s: float = 0.3) -> float:
    for _ in range(10):
        fn()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_s:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls


def time_layer(size: str, rows: int, layers: int = 1) -> dict[str, float]:
    """Seconds per layer through each kernel, running `layers` layers' distinct weights in turn."""
    import torch
    from vllm import _custom_ops as ops

    from actors.vllm_plugin import ONEDNN_CACHE

    mats = [(torch.randn(rows, k), torch.randn(n, k)) for _ in range(layers) for n, k in layer_shapes(size)]
    onednn = [(x, ops.create_onednn_mm(w.t(), ONEDNN_CACHE)) for x, w in mats]
    mkl = [(x, torch.ops.mkl._mkl_reorder_linear_weight(w, rows), w) for x, w in mats]
    kernels: dict[str, Callable[[], Any]] = {
        "F.linear": lambda: [torch.nn.functional.linear(x, w) for x, w in mats],
        "oneDNN": lambda: [ops.onednn_mm(handle, x, None) for x, handle in onednn],
        "MKL packed": lambda: [torch.ops.mkl._mkl_linear(x, p, w, None, rows) for x, p, w in mkl],
    }
    return {name: seconds_per_call(run) / layers for name, run in kernels.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    from actors.vllm_plugin import packing_available

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["30M"], choices=list(SIZES))
    p.add_argument("--rows", type=int, nargs="+", default=[64], help="decode batch sizes (sequences in flight)")
    p.add_argument("--threads", type=int, default=1, help="an engine computes on one core by default")
    p.add_argument("--whole-model", action="store_true",
                   help="every layer's weights in turn (streamed from memory), not one layer's (cached)")
    args = p.parse_args(argv)
    setup_logging()
    if not packing_available():
        raise SystemExit("decode_gemm: this vLLM build has no oneDNN GEMM kernels; nothing to compare")
    torch.set_num_threads(args.threads)
    rows, lines = [], []
    for size in args.sizes:
        flop = sum(2 * n * k for n, k in layer_shapes(size))
        layers = SIZES[size][2] if args.whole_model else 1
        for m in args.rows:
            secs = time_layer(size, m, layers)
            rows.append({"size": size, "rows": m, "layers": layers,
                         "ms_per_layer": {k: v * 1e3 for k, v in secs.items()},
                         "gflops": {k: flop * m / v / 1e9 for k, v in secs.items()},
                         "plain_over_onednn": secs["F.linear"] / secs["oneDNN"]})
            lines.append(f"{size:>5} {m:>5} " + " ".join(f"{v * 1e3:>10.3f} ({flop * m / v / 1e9:>4.0f})"
                                                        for v in secs.values())
                         + f" {secs['F.linear'] / secs['oneDNN']:>9.2f}x")
    header = f"{'size':>5} {'rows':>5} " + " ".join(f"{k + ' ms':>17}" for k in rows[0]["ms_per_layer"])
    scope = "every layer's weights in turn" if args.whole_model else "one layer's weights"
    table = "\n".join([header + " plain/oneDNN", *lines, f"(ms per layer over {scope}, GFLOP/s in brackets)"])
    emit("decode_gemm", {"threads": args.threads, "whole_model": args.whole_model, "rows": rows}, table)
    return {"rows": rows}


if __name__ == "__main__":
    main()
