"""The Qwen2.5-0.5B shape through a whole GRPO run on this CPU: peak memory per role, time per
phase, weight-sync time against the memcpy floor, and the memory model's prediction beside each.

    labrl build-model --preset qwen2.5-0.5b --out runs/q05     # once (random weights, kit BPE)
    python -m benchmarks.qwen05b_cpu --model-dir runs/q05 [--zero-stage 2|3] [section.field=value ...]

The run is `labrl train --config configs/qwen2.5-0.5b-1gpu.yaml` plus `CPU_OVERRIDES` (each one a
difference from the GPU run, listed with its reason in the printed table), in a subprocess. A
sampler reads every process of the run's tree once a second: each process's VmHWM (the kernel's
high-water mark of its resident memory, so a peak between two reads still counts), grouped by role
from the process title Ray gives each actor (the engine with its vLLM engine-core child). Phase
times come from the run's own log and metrics.jsonl; the memcpy floor is measured here after the
run, on a buffer of the synced size's order (benchmarks/weight_sync.Memcpy).

Exits 1 when the run failed or trained no step, or a role was never seen.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from actors.process_memory import process_peak_bytes
from benchmarks.common import REPO_ROOT, emit, setup_logging

logger = logging.getLogger("benchmarks.qwen05b_cpu")
GPU_CONFIG = "configs/qwen2.5-0.5b-1gpu.yaml"

# (override, why the CPU run differs from the GPU config here)
CPU_OVERRIDES: list[tuple[str, str]] = [
    ("model.dtype=float32", "bf16 matmuls are emulated on this AVX2 CPU; vLLM CPU runs fp32 here"),
    ("generation.gpus_per_worker=0", "no GPU"),
    ("generation.cpus_per_worker=1", "2 cores for the whole run"),
    ("generation.kv_cache_gb=1", "CPU KV cache (VLLM_CPU_KVCACHE_SPACE) instead of gpu_memory_utilization"),
    ("generation.max_new_tokens=32", "time: a random-weight model rarely stops; 512 tokens x turns on 2 cores"),
    ("generation.max_model_len=512", "time (the GPU config: 4096)"),
    ("generation.enforce_eager=true", "vLLM CPU: no CUDA graphs"),
    ("generation.cpu_gemm=plain", "memory: no packed copy of the 2 GB of weights beside two ranks in 23.5 GB"),
    ("trainer.gpus_per_rank=0", "no GPU"),
    ("trainer.cpus_per_rank=1", "2 cores for the whole run"),
    ("trainer.num_ranks=2", "the issue's 2-rank ZeRO layout (the GPU config: 1 rank)"),
    ("trainer.micro_batch_tokens=2048", "memory: half the GPU config's activations on shared host RAM"),
    ("placement.mode=disaggregated", "colocated placement shares GPUs; on CPU the roles share RAM anyway"),
    ("rollout.num_env_workers=1", "2 cores"),
    ("rollout.max_concurrent_episodes=8", "one batch in flight"),
    ("grpo.num_steps=2", "the issue: at least 2 GRPO steps"),
    ("grpo.batch_size=8", "time (the GPU config: 128)"),
    ("grpo.group_size=4", "time (the GPU config: 8)"),
    ("grpo.dynamic_sampling=false", "a random-weight policy earns reward 0: every group would be dropped"),
    ("grpo.entropy_coef=0.01", "with all-zero advantages, the entropy term keeps the steps real"),
    ("env.max_turns=2", "time (the GPU config: 6)"),
    ("env.num_train_tasks=64", "time: 16 are drawn"),
    ("env.num_heldout_tasks=4", "time"),
    ("eval.num_tasks=4", "time"),
    ("logging.wandb_mode=disabled", "no W&B files for a benchmark"),
    ("logging.progress_bar=false", "log lines, not bars, in the captured output"),
]

# Role of a process, from its title (Ray names actor processes "ray::Class.method").
ROLE_PATTERNS = [("trainer rank", "ray::PolicyTrainerRank"), ("engine", "ray::GenerationWorker"),
                 ("env worker", "ray::EnvWorker"), ("driver", "launch.train")]
# Log lines that open each phase of the run (launch/run.py and friends), in order.
PHASES = [("ray + placement", r"started a local Ray"), ("trainer ranks ready", r"rank\(s\) ready"),
          ("held-out eval before", r"held-out eval_sft"), ("grpo steps", r"step 2/|held-out eval_grpo"),
          ("export + finish", r"run finished|summary")]


def process_title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class PeakSampler(threading.Thread):
    """Every `period_s`: the VmHWM of every process under `root` whose title names a role, and of
    the children of engines (vLLM's engine core), kept per process."""

    def __init__(self, root: int, period_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.root, self.period_s = root, period_s
        self.peaks: dict[int, tuple[str, int, int]] = {}  # pid -> (role, owner pid, peak bytes)
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            try:
                tree = [psutil.Process(self.root), *psutil.Process(self.root).children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for proc in tree:
                try:
                    owner = self._owner(proc)
                except psutil.NoSuchProcess:  # exited since it was listed
                    continue
                if owner:
                    old = self.peaks.get(proc.pid, (*owner, 0))[2]
                    self.peaks[proc.pid] = (*owner, max(old, process_peak_bytes(proc.pid)))
            self.stop.wait(self.period_s)

    @staticmethod
    def _owner(proc: Any) -> tuple[str, int] | None:
        """(role, pid of the role's process): its own title's role, or an engine ancestor's."""
        for role, pattern in ROLE_PATTERNS:
            if pattern in process_title(proc.pid):
                return role, proc.pid
        for parent in proc.parents():
            if ROLE_PATTERNS[1][1] in process_title(parent.pid):
                return "engine", parent.pid
        return None  # Ray's own processes (raylet, GCS, dashboard)

    def by_role(self) -> dict[str, list[float]]:
        """Role -> each instance's peak GB, largest first (an engine: actor plus engine core)."""
        per_owner: dict[tuple[str, int], int] = defaultdict(int)
        for role, owner, peak in self.peaks.values():
            per_owner[(role, owner)] += peak
        out: dict[str, list[float]] = defaultdict(list)
        for (role, _), peak in per_owner.items():
            out[role].append(peak / 1e9)
        return {k: sorted(v, reverse=True) for k, v in out.items()}


def phase_times(log: str) -> list[tuple[str, float]]:
    """Seconds from the run's first log line to each phase's first line, as phase durations."""
    stamps = [(m.group(1), line) for line in log.splitlines()
              if (m := re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+", line))]
    if not stamps:
        return []
    seconds = lambda s: time.mktime(time.strptime(s, "%Y-%m-%d %H:%M:%S"))  # noqa: E731
    marks = [("start", seconds(stamps[0][0]))]
    for name, pattern in PHASES:
        hit = next((seconds(s) for s, line in stamps if re.search(pattern, line)), None)
        if hit is not None:
            marks.append((name, hit))
    marks.append(("end", seconds(stamps[-1][0])))
    return [(marks[i + 1][0], marks[i + 1][1] - marks[i][1]) for i in range(len(marks) - 1)]


def run_dir_of(runs_root: Path) -> Path:
    dirs = sorted(p for p in runs_root.iterdir() if p.is_dir())
    if not dirs:
        raise SystemExit(f"no run directory under {runs_root}: the run did not start")
    return dirs[-1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, required=True, help="a kit 0.5B directory (labrl build-model)")
    p.add_argument("--zero-stage", type=int, default=2, choices=[2, 3])
    p.add_argument("--runs-root", type=Path, default=REPO_ROOT / "runs" / "bench-qwen05b")
    p.add_argument("overrides", nargs="*", help="more section.field=value overrides")
    args = p.parse_args(argv)
    setup_logging()
    from configs.loading import load_config
    from launch.memory_model import predict_memory

    overrides = [o for o, _ in CPU_OVERRIDES] + [f"model.path={args.model_dir}", f"trainer.zero_stage={args.zero_stage}",
                                                 f"logging.runs_root={args.runs_root}", *args.overrides]
    cfg = load_config(GPU_CONFIG, overrides)
    predicted = predict_memory(cfg)
    args.runs_root.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "launch.train", "--config", GPU_CONFIG, *overrides]
    logger.info("running: %s", " ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    sampler = PeakSampler(proc.pid)
    sampler.start()
    log = proc.communicate()[0]
    wall_s = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    run_dir = run_dir_of(args.runs_root)
    (run_dir / "benchmark_stdout.log").write_text(log)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip()] if (run_dir / "metrics.jsonl").exists() else []
    steps = [r for r in rows if "timing/step_s" in r]
    if proc.returncode or not steps:
        logger.error("the run failed (exit %s) or trained no step; its output: %s", proc.returncode,
                     run_dir / "benchmark_stdout.log")
        return 1
    measured = sampler.by_role()
    missing = [r for r in ("trainer rank", "engine", "driver") if r not in measured]
    if missing:
        logger.error("never saw a process of role(s) %s", missing)
        return 1
    return report(cfg, predicted, measured, steps, log, wall_s, run_dir)


def report(cfg: Any, predicted: Any, measured: dict[str, list[float]], steps: list[dict[str, Any]], log: str,
           wall_s: float, run_dir: Path) -> int:
    from benchmarks.weight_sync import Memcpy

    sync_bytes = steps[-1]["sync/bytes"]
    floor_gbps = Memcpy().gbps()[1]
    pred = {"trainer rank": [predicted.role("trainer rank 0").total, predicted.role("trainer rank 1+").total],
            "engine": [predicted.role("engine").total], "driver": [predicted.role("driver").total],
            "env worker": [predicted.role("env worker").total]}
    mem_rows = []
    for role, peaks in measured.items():
        for i, gb in enumerate(peaks):
            guess = pred.get(role, [float("nan")])[min(i, len(pred.get(role, [0])) - 1)]
            mem_rows.append({"role": f"{role} {i}" if len(peaks) > 1 else role, "measured_gb": round(gb, 2),
                             "predicted_gb": round(guess, 2), "ratio": round(guess / gb, 3)})
    step_rows = [{"step": s["step"], "step_s": round(s["timing/step_s"], 1), "train_s": round(s["timing/train_s"], 1),
                  "wait_rollout_s": round(s["timing/wait_rollout_s"], 1), "sync_s": round(s["sync/seconds"], 2),
                  "sync_floor_s": round(s["sync/bytes"] / (floor_gbps * 1e9), 2),
                  "sync_vs_floor": round(s["sync/seconds"] * floor_gbps * 1e9 / s["sync/bytes"], 1),
                  "trained_tokens": s.get("train/num_tokens"), "version": s.get("sync/version")}
                 for s in steps]
    lines = [f"Qwen2.5-0.5B shape on CPU, ZeRO-{cfg.trainer.zero_stage} x {cfg.trainer.num_ranks} ranks, "
             f"{predicted.shape.params / 1e6:.1f}M params (vocab {predicted.shape.vocab}); run {run_dir.name}, "
             f"wall {wall_s:.0f} s", "", "| role | measured peak GB | predicted GB | predicted/measured |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {r['role']} | {r['measured_gb']} | {r['predicted_gb']} | {r['ratio']} |" for r in mem_rows]
    lines += ["", "| phase | seconds |", "| --- | --- |"] + [f"| {n} | {s:.0f} |" for n, s in phase_times(log)]
    lines += ["", f"weight sync: {sync_bytes / 1e9:.2f} GB per step; memcpy floor {floor_gbps:.1f} GB/s (median)",
              "| step | step s | train s | wait rollout s | sync s | floor s | sync/floor | trained tokens | version |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(str(r[k]) for k in ("step", "step_s", "train_s", "wait_rollout_s", "sync_s",
                                                      "sync_floor_s", "sync_vs_floor", "trained_tokens", "version"))
              + " |" for r in step_rows]
    lines += ["", "differences from the GPU config:"] + [f"- `{o}`: {why}" for o, why in CPU_OVERRIDES]
    emit("qwen05b_cpu", {"run_dir": str(run_dir), "wall_s": round(wall_s, 1), "memory": mem_rows,
                         "steps": step_rows, "phases": phase_times(log), "memcpy_gbps": floor_gbps,
                         "zero_stage": cfg.trainer.zero_stage, "ranks": cfg.trainer.num_ranks},
         "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
