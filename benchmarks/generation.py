"""vLLM (CPU build) against Hugging Face `generate`: tokens/s across model sizes and batch sizes.

    python -m benchmarks.generation                          # ~1M, ~10M, ~50M params x batch 1, 8, 64
    python -m benchmarks.generation --sizes 1M --batches 1 64 --new-tokens 16

Per model size, one random Qwen2 (the tiny character-level policy's architecture, built locally) is
loaded by both engines in this process; then for every batch size both generate the same random
prompts with plain sampling (temperature 1, no top-k/top-p) and exactly `--new-tokens` new tokens
each (EOS ignored), `--repeats` times, the engine that goes first alternating between repeats.
Reported: generated tokens per second (median), the ratio vLLM / HF, and per model size the
crossover, the smallest batch at which vLLM is faster. vLLM's engine start-up is reported apart.
Threads: vLLM-CPU keeps one core for its front end and computes on the others (1 here, as in labrl's
generation workers); HF gets the same number of torch threads unless `--hf-threads` says otherwise.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from monitor.text_table import format_table
from benchmarks.common import emit, median, ratio, setup_logging

logger = logging.getLogger("benchmarks.generation")

# name -> (hidden, intermediate, layers, heads, kv heads) of the character-level Qwen2.
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "1M": (128, 512, 4, 4, 2),
    "10M": (384, 1536, 5, 6, 2),
    "50M": (768, 3072, 7, 12, 4),
}
FIRST_PLAIN_TOKEN = 7  # ids below are the tokenizer's special and markup tokens


def build(size: str, out_dir: Path) -> tuple[str, int]:
    """Save the model; returns (path, vocabulary size)."""
    from models.tiny import TinyModelSpec, save_tiny_model
    from transformers import AutoConfig

    hidden, inter, layers, heads, kv = SIZES[size]
    path = save_tiny_model(out_dir / size, TinyModelSpec(hidden_size=hidden, intermediate_size=inter,
                                                         num_layers=layers, num_heads=heads, num_kv_heads=kv))
    return str(path), AutoConfig.from_pretrained(path).vocab_size


def prompts(batch: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(FIRST_PLAIN_TOKEN, vocab) for _ in range(length)] for _ in range(batch)]


class HFEngine:
    def __init__(self, path: str):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def generate(self, batch: list[list[int]], new_tokens: int) -> int:
        torch = self.torch
        ids = torch.tensor(batch, dtype=torch.long)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                      temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new_tokens,
                                      min_new_tokens=new_tokens, pad_token_id=0)
        return int((out.shape[1] - ids.shape[1]) * out.shape[0])

    def close(self) -> None:
        del self.model


class VLLMEngine:
    def __init__(self, path: str, max_model_len: int, kv_cache_gb: float):
        from vllm import LLM

        start = time.perf_counter()
        self.llm = LLM(model=path, skip_tokenizer_init=True, dtype="float32", enforce_eager=True,
                       max_model_len=max_model_len, kv_cache_memory_bytes=int(kv_cache_gb * 2**30),
                       seed=0, disable_log_stats=True)
        self.startup_s = time.perf_counter() - start

    def generate(self, batch: list[list[int]], new_tokens: int) -> int:
        from vllm import SamplingParams

        params = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_tokens=new_tokens, ignore_eos=True,
                                detokenize=False)
        outs = self.llm.generate([{"prompt_token_ids": p} for p in batch], params, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outs)

    def close(self) -> None:
        try:
            self.llm.llm_engine.engine_core.shutdown()
        except Exception as err:  # noqa: BLE001 - best effort; the process exit cleans up anyway
            logger.warning("vLLM shutdown: %s", err)
        del self.llm


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = fn()
    return time.perf_counter() - start, tokens


def bench_size(size: str, tmp: Path, batches: list[int], prompt_len: int, new_tokens: int, repeats: int,
               kv_cache_gb: float) -> list[dict[str, Any]]:
    path, vocab = build(size, tmp)
    hf = HFEngine(path)
    n_params = sum(p.numel() for p in hf.model.parameters())
    logger.info("model %s: %.1fM parameters", size, n_params / 1e6)
    vllm = VLLMEngine(path, prompt_len + new_tokens + 16, kv_cache_gb)
    logger.info("model %s: vLLM engine started in %.1f s", size, vllm.startup_s)
    engines = {"vllm": vllm, "hf": hf}
    rows = []
    try:
        warm = prompts(2, prompt_len, vocab, seed=-1)
        for engine in engines.values():  # first calls pay for lazy initialisation
            engine.generate(warm, 4)
        for b in batches:
            batch = prompts(b, prompt_len, vocab, seed=b)
            rates: dict[str, list[float]] = {"vllm": [], "hf": []}
            for r in range(repeats):
                order = ["vllm", "hf"] if (r + batches.index(b)) % 2 == 0 else ["hf", "vllm"]
                for name in order:
                    wall, tokens = timed(lambda e=engines[name]: e.generate(batch, new_tokens))
                    if tokens != b * new_tokens:
                        raise AssertionError(f"{name} generated {tokens} tokens, expected {b * new_tokens}")
                    rates[name].append(tokens / wall)
            row = {"size": size, "params_m": n_params / 1e6, "batch": b, "new_tokens": new_tokens,
                   "vllm_tokens_per_s": median(rates["vllm"]), "hf_tokens_per_s": median(rates["hf"]),
                   "vllm_runs": rates["vllm"], "hf_runs": rates["hf"], "vllm_startup_s": vllm.startup_s}
            row["vllm_over_hf"] = ratio(row["vllm_tokens_per_s"], row["hf_tokens_per_s"])
            logger.info("%s batch %d: vLLM %.0f tok/s, HF %.0f tok/s (x%.2f)", size, b,
                        row["vllm_tokens_per_s"], row["hf_tokens_per_s"], row["vllm_over_hf"])
            rows.append(row)
    finally:
        vllm.close()
        hf.close()
        gc.collect()
    return rows


def crossovers(rows: list[dict[str, Any]]) -> dict[str, int | None]:
    """Per model size: the smallest batch at which vLLM generated more tokens/s than HF."""
    out: dict[str, int | None] = {}
    for row in rows:
        out.setdefault(row["size"], None)
        if out[row["size"]] is None and row["vllm_over_hf"] > 1.0:
            out[row["size"]] = row["batch"]
    return out


COLUMNS = [("model", "size", ""), ("params M", "params_m", ".1f"), ("batch", "batch", "d"),
           ("vLLM tok/s", "vllm_tokens_per_s", ".0f"), ("HF tok/s", "hf_tokens_per_s", ".0f"),
           ("vLLM/HF", "vllm_over_hf", ".2f"), ("vLLM start s", "vllm_startup_s", ".0f")]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--kv-cache-gb", type=float, default=1.0)
    p.add_argument("--vllm-all-cores", action="store_true",
                   help="VLLM_CPU_NUM_OF_RESERVED_CPU=0: vLLM computes on every core (by default it keeps "
                        "one core for its front end, i.e. computes on 1 of 2 cores here, as labrl's workers do)")
    p.add_argument("--hf-threads", type=int, default=None,
                   help="torch threads for HF (default: as many cores as vLLM computes on: 1, or 2 with "
                        "--vllm-all-cores). 2 threads ran 10-20x slower than 1 on this oversubscribed machine")
    p.add_argument("--full", action="store_true", help="64 new tokens, batch 256 too, 3 repeats")
    args = p.parse_args(argv)
    if args.full:
        args.new_tokens, args.repeats = 64, 3
        args.batches = sorted(set(args.batches) | {256})
    setup_logging()
    # SIGTERM unwinds through `finally`, so the vLLM engine processes are shut down, not orphaned.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    # vLLM logs to stdout by default; stdout here is the table and the JSON line only.
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    if args.vllm_all_cores:
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    import torch

    if args.hf_threads is None:
        args.hf_threads = (os.cpu_count() or 1) if args.vllm_all_cores else max(1, (os.cpu_count() or 2) - 1)
    torch.set_num_threads(args.hf_threads)
    with tempfile.TemporaryDirectory(prefix="labrl_bench_gen_") as tmp:
        rows = [row for size in args.sizes for row in bench_size(size, Path(tmp), args.batches, args.prompt_len,
                                                                 args.new_tokens, args.repeats, args.kv_cache_gb)]
    cross = crossovers(rows)
    table = format_table(rows, COLUMNS) + "\n\ncrossover (smallest batch where vLLM wins): " + ", ".join(
        f"{size}: {b if b is not None else 'none up to ' + str(max(args.batches))}" for size, b in cross.items())
    threads = {"hf_torch_threads": torch.get_num_threads(),
               "vllm_reserved_cpus": os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "vLLM default (1 on CPU)")}
    table += f"\nthreads: HF torch {threads['hf_torch_threads']}; vLLM reserved CPUs: {threads['vllm_reserved_cpus']}"
    emit("generation", {"config": vars(args), "threads": threads, "results": rows, "crossover_batch": cross}, table)
    return {"results": rows, "crossover_batch": cross}


if __name__ == "__main__":
    main()
