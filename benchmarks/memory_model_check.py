"""Predicted (launch/memory_model.py) against measured peak memory, role by role, for one config.

    python -m benchmarks.memory_model_check                                    # the default config
    python -m benchmarks.memory_model_check --config configs/default.yaml trainer.num_ranks=2 ...
    labrl build-model --preset qwen2.5-0.5b --out runs/q05                     # once, then:
    python -m benchmarks.memory_model_check model.path=runs/q05 trainer.num_ranks=2 trainer.zero_stage=3 \
        generation.max_model_len=512 trainer.micro_batch_tokens=1024 sft.enabled=false --roles trainer

Overrides are the CLI's (`section.field=value`). The config's model is built (or model.path used)
and the prediction is made from its real config.json. Then, on a local Ray, the roles run in a
run's order: the SFT task (`--sft-steps` steps on max_model_len demonstrations), the engines
(start-up, then `--gen-requests` long prompts each), the trainer ranks (set-up, `--steps` GRPO
steps on groups of full-length episodes, each step followed by a weight sync to the engines, as in
a run), generation on the synced weights. Measured peak = VmHWM (the kernel's high-water mark of
resident memory: a peak between two reads still counts) of each role's process plus its children
(vLLM's engine core), read before they exit; shm staging pages mapped by rank 0 and the engines
count in each, as in their predictions. `--roles` measures a subset (e.g. when trainer and engines
do not fit side by side); without both, no sync runs and the staging is left out of the prediction.

Prints predicted / measured per role and one JSON line (also results/memory_model_check.json).
Exit 1 when nothing was measured, 2 when a role's prediction is off by more than --tolerance.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.common import emit, setup_logging, start_local_ray

logger = logging.getLogger("benchmarks.memory_model_check")
ROLES = ("sft", "engine", "trainer")


def full_length_groups(cfg: Any, vocab: int, seed: int = 0) -> list[Any]:
    """A GRPO batch at the config's worst case: groups sharing a third-length prompt, every
    episode close to max_model_len, advantages non-zero (nothing is skipped)."""
    from trainers.batching import TrainSample

    rng, length = random.Random(seed), cfg.generation.max_model_len - 1
    out = []
    for _ in range(cfg.grpo.batch_size // cfg.grpo.group_size):
        prompt = [rng.randrange(2, vocab) for _ in range(length // 3)]
        for _ in range(cfg.grpo.group_size):
            n = length - len(prompt) - rng.randrange(0, 8)
            out.append(TrainSample(prompt + [rng.randrange(2, vocab) for _ in range(n)],
                                   [0] * len(prompt) + [1] * n, [-2.0] * (len(prompt) + n), rng.gauss(0, 1) or 0.5))
    return out


def demonstrations(cfg: Any, vocab: int, seed: int = 1) -> list[Any]:
    """SFT samples of max_model_len tokens (no shared prompt, so batches run padded, the worst case)."""
    from trainers.batching import TrainSample

    rng, n = random.Random(seed), cfg.generation.max_model_len
    return [TrainSample([rng.randrange(2, vocab) for _ in range(n)], [0] * (n // 3) + [1] * (n - n // 3),
                        [0.0] * n, 0.0) for _ in range(max(cfg.sft.batch_size, 1))]


def _sft_peak(policy_dir: str, out_dir: str, samples: list[Any], sft: Any, pad: int) -> int:
    from actors.process_memory import process_tree_peak_bytes
    from trainers.sft import train_sft

    train_sft(policy_dir, out_dir, samples, sft, seed=0, pad_token_id=pad, progress_bar=False)
    return process_tree_peak_bytes()


def measure_sft(cfg: Any, model_dir: str, hf: dict[str, Any], steps: int, tmp: str) -> float:
    """The SFT task in a process of its own (a fresh runtime env), as `launch.components.run_sft`."""
    import ray

    from trainers.sft import sft_process_env

    env = {**sft_process_env(cfg.sft), "LABRL_MEMORY_CHECK": uuid.uuid4().hex}  # never a reused worker
    sft = cfg.sft.model_copy(update={"steps": steps})
    task = ray.remote(num_cpus=0, max_retries=0, runtime_env={"env_vars": env})(_sft_peak)
    pad = hf.get("pad_token_id") or 0
    return ray.get(task.remote(model_dir, f"{tmp}/sft_out", demonstrations(cfg, hf["vocab_size"]), sft, pad)) / 1e9


def generate_batch(cfg: Any, engines: list[Any], vocab: int, requests: int, tokens: int) -> None:
    """`requests` long prompts on each engine at once (prefill is vLLM's activation peak)."""
    import ray

    from actors.types import SamplingSpec

    rng = random.Random(2)
    n_prompt = cfg.generation.max_model_len - tokens - 1
    spec = SamplingSpec(max_tokens=tokens, min_tokens=tokens, temperature=1.0)
    refs = [e.generate.remote([rng.randrange(2, vocab) for _ in range(n_prompt)], spec)
            for e in engines for _ in range(requests)]
    ray.get(refs)


def measure(cfg: Any, model_dir: str, hf: dict[str, Any], args: argparse.Namespace, tmp: str) -> dict[str, float]:
    """Peak GB of every role that ran: "sft", "engine" (max over engines), "trainer rank 0",
    "trainer rank 1+" (max over the other ranks)."""
    import ray

    from actors.generation import GenerationWorker
    from actors.process_memory import process_tree_peak_bytes
    from actors.types import EngineSpec
    from trainers.group import PolicyTrainerGroup
    from trainers.spec import TrainerSpec

    out: dict[str, float] = {}
    if "sft" in args.roles and cfg.sft.enabled:
        out["sft"] = measure_sft(cfg, model_dir, hf, args.sft_steps, tmp)
        logger.info("sft peak %.2f GB", out["sft"])
    engines, group = [], None
    try:
        if "engine" in args.roles:
            spec = EngineSpec.from_config(cfg, model_dir)
            engines = [GenerationWorker.as_actor(spec, name=f"gen{i}", num_cpus=cfg.generation.cpus_per_worker)
                       for i in range(cfg.generation.num_workers)]
            ray.get([e.ready.remote() for e in engines])
            generate_batch(cfg, engines, hf["vocab_size"], args.gen_requests, args.gen_tokens)
        if "trainer" in args.roles:
            group = PolicyTrainerGroup(TrainerSpec.from_config(cfg, model_dir), name="memory_check")
            samples = full_length_groups(cfg, hf["vocab_size"])
            for step in range(args.steps):  # as in a run: every step is followed by a sync
                metrics = group.train_step(samples, cfg.grpo)
                logger.info("train step %d: %.0f tokens, %.1f s", step, metrics.get("train/num_tokens", 0),
                            metrics.get("train/wall_time_s", 0))
                if engines:
                    group.sync_weights(engines, step + 1, cfg.sync)
            if engines:
                generate_batch(cfg, engines, hf["vocab_size"], 2, args.gen_tokens)
            pids = ray.get([r.__ray_call__.remote(lambda self: os.getpid()) for r in group.ranks])
            peaks = [process_tree_peak_bytes(pid) / 1e9 for pid in pids]
            out["trainer rank 0"] = peaks[0]
            if len(peaks) > 1:
                out["trainer rank 1+"] = max(peaks[1:])
        if engines:
            out["engine"] = max(ray.get([e.health.remote() for e in engines]), key=lambda h: h["peak_rss_gb"])["peak_rss_gb"]
    finally:
        if group is not None:
            group.shutdown()
        for e in engines:
            ray.get(e.shutdown.remote(), timeout=60)
    return out


def compare(pred: Any, measured: dict[str, float], tolerance: float,
            synced: bool) -> tuple[str, list[dict[str, Any]], bool]:
    """Per role: predicted (less the sync staging when no sync ran), measured, their ratio."""
    rows, ok = [], True
    lines = [f"{'role':<16} {'predicted GB':>12} {'measured GB':>12} {'pred/meas':>9}"]
    for r in pred.roles:
        if not synced:
            r = replace(r, parts={k: v for k, v in r.parts.items() if k != "sync staging"})
        got = measured.get(r.role)
        ratio = r.total / got if got else float("nan")
        within = got is None or abs(ratio - 1) <= tolerance
        ok &= within
        rows.append({"role": r.role, "predicted_gb": round(r.total, 3), "parts_gb": {k: round(v, 3) for k, v in r.parts.items()},
                     "measured_gb": None if got is None else round(got, 3), "ratio": None if got is None else round(ratio, 3)})
        shown = "-" if got is None else f"{got:.2f}"
        flag = "" if within else "  OFF"
        lines.append(f"{r.role:<16} {r.total:>12.2f} {shown:>12} {ratio:>9.2f}{flag}")
    return "\n".join(lines), rows, ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="section.field=value, as on the labrl command line")
    p.add_argument("--config", default=None, help="YAML config (default: configs/default.yaml)")
    p.add_argument("--roles", nargs="+", choices=ROLES, default=list(ROLES))
    p.add_argument("--steps", type=int, default=3, help="GRPO steps, each followed by a weight sync; the "
                   "peak stops growing at the second (the first one allocates Adam's states)")
    p.add_argument("--sft-steps", type=int, default=2)
    p.add_argument("--gen-requests", type=int, default=8, help="long prompts sent to each engine at once")
    p.add_argument("--gen-tokens", type=int, default=8, help="tokens generated per request")
    p.add_argument("--tolerance", type=float, default=0.25, help="allowed |predicted / measured - 1| per role")
    args = p.parse_args(argv)
    setup_logging()
    from configs.loading import load_config
    from launch import components as C
    from launch.memory_model import format_table, predict_memory
    from launch.preflight import host_memory_gb, preflight

    cfg = load_config(args.config, args.overrides)
    preflight(cfg, check_memory=False)  # the layout must be valid; whether it fits is measured here
    with tempfile.TemporaryDirectory(prefix="labrl_memcheck_") as tmp:
        model_dir = C.prepare_model(cfg, Path(tmp))
        hf = json.loads((Path(model_dir) / "config.json").read_text())
        pred = predict_memory(cfg, hf)
        logger.info("prediction:\n%s", format_table(pred))
        available = host_memory_gb()[0]
        if pred.node_total_gb > available:
            logger.warning("predicted %.1f GB for the whole run, %.1f GB available: measure fewer roles at once "
                           "(--roles)", pred.node_total_gb, available)
        start_local_ray(max(2, math.ceil(C.cpus_requested(cfg))))
        measured = measure(cfg, model_dir, hf, args, tmp)
    synced = {"engine", "trainer"} <= set(args.roles) and cfg.sync.transport in ("shm", "shm_inplace", "gloo")
    table, rows, ok = compare(pred, measured, args.tolerance, synced)
    emit("memory_model_check", {"config": args.config, "overrides": args.overrides, "roles": rows,
                                "node_total_predicted_gb": round(pred.node_total_gb, 3),
                                "params": pred.shape.params, "synced": synced, "within_tolerance": ok}, table)
    if not measured:
        logger.error("nothing was measured (roles %s; sft.enabled=%s)", args.roles, cfg.sft.enabled)
        return 1
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
