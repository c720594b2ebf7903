"""Benchmark: trainer -> GenerationWorker weight sync (shm, gloo broadcast) vs the memcpy floor.

For each model size a random Qwen2 is built and saved locally (no downloads), one GenerationWorker
(vLLM) serves it, and the driver (standing in for the trainer's rank 0) syncs perturbed weights
several times. The floor is `bytes / memcpy bandwidth`, with memcpy measured in the same run on a
warm 256 MiB buffer right before every sync (the load on this shared VM drifts; each sync is
compared with the floor measured next to it, then the median is taken). Correctness is checked on
every size (vLLM prompt logprobs vs HF).

    .venv/bin/python benchmarks/weight_sync.py --sizes 10M,100M,500M --repeats 5 --transports shm,shm_inplace,gloo

Prints a table and one JSON line and writes results/weight_sync.json (`benchmarks.common.emit`).
Timings on a shared 2-core VM drift a lot: compare numbers from one run only.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from actors.generation import GenerationWorker
from actors.types import EngineSpec, SamplingSpec
from actors.weight_sync import make_sender
from benchmarks.common import emit, setup_logging
from configs.schema import GenerationConfig
from monitor.text_table import format_table

logger = logging.getLogger("benchmarks.weight_sync")

# hidden, intermediate, layers, heads, kv_heads, vocab  (tied embeddings, fp32)
SHAPES = {
    "10M": (256, 1024, 8, 4, 2, 8192),
    "100M": (768, 3072, 10, 12, 4, 16384),
    "500M": (1280, 5120, 19, 20, 4, 32000),
}


def build_model(size: str, path: Path) -> int:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hidden, inter, layers, heads, kv, vocab = SHAPES[size]
    config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=512,
                         tie_word_embeddings=True, torch_dtype="float32")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    del model
    return n


class Memcpy:
    """memcpy bandwidth between two warm 256 MiB buffers (far beyond any cache, so the same
    bandwidth as a model-sized copy without allocating two more model copies)."""

    def __init__(self, nbytes: int = 256 << 20) -> None:
        self.src = torch.ones(nbytes // 4)
        self.dst = torch.zeros_like(self.src)
        self.dst.copy_(self.src)
        self.nbytes = nbytes

    def gbps(self, repeats: int = 3) -> tuple[float, float]:
        """(best, median) GB/s of `repeats` copies; torch's multi-threaded copy, i.e. the floor."""
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            self.dst.copy_(self.src)
            times.append(time.perf_counter() - t)
        return self.nbytes / min(times) / 1e9, self.nbytes / statistics.median(times) / 1e9


def run_size(size: str, repeats: int, bucket_mb: int, kv_gb: float, gen: bool, direct: bool,
             transports: list[str]) -> list[dict]:
    from transformers import Qwen2ForCausalLM

    workdir = Path(tempfile.mkdtemp(prefix=f"labrl-bench-{size}-"))
    try:
        n_params = build_model(size, workdir)
        t = time.perf_counter()
        spec = EngineSpec(str(workdir), GenerationConfig(max_model_len=128, kv_cache_gb=kv_gb))
        worker = GenerationWorker.as_actor(spec, name=f"bench-{size}", cpu_direct_reload=direct)
        ray.get(worker.ready.remote(), timeout=900)
        startup_s = time.perf_counter() - t
        info = ray.get(worker.describe.remote())
        result = {"size": size, "mode": "direct" if direct else "layerwise", "params": n_params, "startup_s": round(startup_s, 1),
                  "engine_build_s": round(info["startup_s"], 1)}
        if gen:
            sampling = SamplingSpec(max_tokens=64)
            ray.get([worker.generate.remote([1, 2, 3, 4], sampling) for _ in range(8)])
            t = time.perf_counter()
            outs = ray.get([worker.generate.remote([1, 2, 3, 4 + i], sampling) for i in range(64)])
            result["gen_tokens_per_s"] = round(sum(len(o.token_ids) for o in outs) / (time.perf_counter() - t))
        model = Qwen2ForCausalLM.from_pretrained(workdir, dtype=torch.float32).eval()
        rows, version = [], 0
        for transport in transports:  # one engine, each transport in turn (versions keep rising)
            sender = make_sender(transport, [worker], bucket_bytes=bucket_mb << 20, timeout_s=600)
            rows.append({**result, "transport": transport, **measure(sender, worker, model, version, repeats)})
            version += repeats
            sender.close()
        ray.get(worker.shutdown.remote(), timeout=120)
        ray.kill(worker)
        del model
        return rows
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def measure(sender, worker, model, first_version: int, repeats: int) -> dict:
    """`repeats` syncs of perturbed weights (versions after `first_version`), each against the
    memcpy floor measured just before it."""
    memcpy = Memcpy()
    stats, floors = [], []
    for version in range(first_version + 1, first_version + repeats + 1):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.001)
        floors.append(memcpy.gbps())  # measured right before each sync: the load here drifts
        stats.append(sender.send(model.named_parameters(), version=version))
    ids = [1, 5, 9, 2, 7, 3, 8, 6]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    want = [0.0] + [logp[i, t].item() for i, t in enumerate(ids[1:])]
    got = ray.get(worker.prompt_logprobs.remote(ids))
    total = stats[0].bytes
    steady = list(zip(stats, floors))[1:] or list(zip(stats, floors))
    med = statistics.median(s.seconds for s, _ in steady)
    best_gbps = statistics.median(f[0] for _, f in steady)
    # per sync: its time over the floor measured just before it (best-of-3 memcpy), then median
    ratio = statistics.median(s.seconds / (total / (f[0] * 1e9)) for s, f in steady)
    ratio_med = statistics.median(s.seconds / (total / (f[1] * 1e9)) for s, f in steady)
    return {"bytes": total, "buckets": stats[0].num_buckets, "memcpy_gbps": round(best_gbps, 2),
            "floor_s": round(total / best_gbps / 1e9, 3), "first_sync_s": round(stats[0].seconds, 3),
            "sync_s": round(med, 3), "stage_s": round(statistics.median(s.stage_s for s, _ in steady), 3),
            "apply_s": round(statistics.median(s.apply_s for s, _ in steady), 3),
            "pause_s": round(statistics.median(s.generation_pause_s for s, _ in steady), 3),
            "sync_gbps": round(total / med / 1e9, 2), "ratio_vs_floor": round(ratio, 2),
            "ratio_vs_median_memcpy": round(ratio_med, 2),
            "max_logprob_err": float(max(abs(a - b) for a, b in zip(got, want)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10M,100M,500M")
    parser.add_argument("--repeats", type=int, default=5, help="syncs per size; the first one maps fresh pages")
    parser.add_argument("--bucket-mb", type=int, default=256)
    parser.add_argument("--kv-gb", type=float, default=1.0)
    parser.add_argument("--gen", action="store_true", help="also measure generation tokens/s (64 x 64 tokens)")
    parser.add_argument("--modes", default="direct",
                        help="comma list of CPU reload modes: direct (plain weights, default) and/or layerwise "
                             "(vLLM's in-place reload with oneDNN repacking)")
    parser.add_argument("--transports", default="shm", help="comma list of transports: shm, shm_inplace, gloo")
    args = parser.parse_args()
    setup_logging()
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    rows = []
    for size in args.sizes.split(","):
        for mode in args.modes.split(","):
            rows.extend(run_size(size.strip(), args.repeats, args.bucket_mb, args.kv_gb, args.gen,
                                 mode.strip() == "direct", args.transports.split(",")))
            logger.info("done %s %s: %s", size, mode, rows[-1])
    ray.shutdown()
    cols = ["size", "transport", "mode", "params", "bytes", "buckets", "startup_s", "first_sync_s", "sync_s",
            "stage_s", "apply_s", "pause_s", "memcpy_gbps", "floor_s", "sync_gbps", "ratio_vs_floor",
            "ratio_vs_median_memcpy", "max_logprob_err"]
    if args.gen:
        cols.insert(6, "gen_tokens_per_s")
    emit("weight_sync", {"config": vars(args), "results": rows}, format_table(rows, [(c, c, "") for c in cols]))

if __name__ == "__main__":
    main()
