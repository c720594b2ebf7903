"""Scaling model on paper: from one run's timers, the best split of a GPU budget between
generation engines and trainer ranks for a model of a given size (`labrl scale --predict`).

Inputs, all from the run directory (averages over the GRPO steps after the warm-up steps):

    G   generated tokens per step, refills included:
        mean(rollout/num_generated_tokens) * accounting/produced[last] / sum(rollout/num_trajectories)
    T   trained tokens per step: mean(train/num_tokens)
    g   generation rate per engine GPU (tokens/s): G / (busy_s * E0 * K0), where busy_s is the time
        the engines had work: step_s - sync_s with max_staleness >= 1 (they generate while the
        trainer waits and while it trains), wait_rollout_s with max_staleness = 0. This is the
        engines' real rate when the run was rollout-bound (the trainer waited for rollouts, so the
        engines never ran dry) and only a lower bound when it was trainer-bound (flagged).
    r   training rate per rank at full data-parallel efficiency: T / (train_s * R0 * eff(R0))
    S   weight-sync seconds per step: mean(timing/sync_s)
    N0  the run's parameter count (its saved HF config), E0 engines of K0 = tensor_parallel_size
        GPUs, R0 trainer ranks, recompute = trainer.gradient_checkpointing

Prediction for E engines of K GPUs and R ranks (E*K + R = budget) at N parameters, s = N / N0:

    T_gen   = G * s / (g * E * K)                 generation ~2N FLOPs per token
    T_train = T * s * (f / f0) / (r * R * eff(R))  training 6N FLOPs per token, 8N with recompute
    T_sync  = S * s                               the weights to ship grow with N
    eff(R)  = 1 / (1 + c * (R - 1))               data-parallel overhead c (default 0.05)
    step    = max(T_gen, T_train) + T_sync        asynchronous (max_staleness >= 1)
    step    = T_gen + T_train + T_sync            synchronous (max_staleness = 0)

Per-token time proportional to N is a FLOP proxy. GPU decode is memory-bandwidth-bound (weights
read once per decode step for the whole batch), so real generation slows less than N grows: the
proxy is conservative for generation. Both rates scale by the same factor, so the best split
depends on the measured generation/training balance, the recompute factor and sync, not on N.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

logger = logging.getLogger("labrl.scale")

DEFAULT_DP_OVERHEAD = 0.05
ROLLOUT_BOUND_FRAC = 0.1  # the trainer waited >= 10% of the step: the engines were the bottleneck
FLOPS_PER_TOKEN_TRAIN = 6.0
FLOPS_PER_TOKEN_RECOMPUTE = 8.0
MODEL_DIRS = ("final_model", "init_model", "sft_model")


def count_params(hf: dict[str, Any]) -> int:
    """Parameters of a Qwen2/Llama-shaped decoder from its HF config dict: embeddings (an output
    head unless tied), GQA attention (q/k/v biases for Qwen2 or `attention_bias`), gate/up/down
    MLP, two RMSNorms per layer and a final one."""
    hidden, layers = int(hf["hidden_size"]), int(hf["num_hidden_layers"])
    heads = int(hf["num_attention_heads"])
    kv_heads = int(hf.get("num_key_value_heads") or heads)
    head_dim = int(hf.get("head_dim") or hidden // heads)
    vocab, inter = int(hf["vocab_size"]), int(hf["intermediate_size"])
    bias = bool(hf.get("attention_bias", hf.get("model_type") == "qwen2"))
    q, kv = heads * head_dim, kv_heads * head_dim
    attn = hidden * q + 2 * hidden * kv + q * hidden + ((q + 2 * kv) if bias else 0)
    per_layer = attn + 3 * hidden * inter + 2 * hidden
    embed = vocab * hidden * (1 if hf.get("tie_word_embeddings", False) else 2)
    return embed + layers * per_layer + hidden


def params_from_config_file(path: str | Path) -> int:
    return count_params(json.loads(Path(path).read_text()))


def run_params(run_dir: Path, cfg: dict[str, Any]) -> int:
    """The run's parameter count from a saved HF config (final, initial or SFT model, or the
    configured `model.path`)."""
    candidates = [run_dir / d / "config.json" for d in MODEL_DIRS]
    if cfg.get("model", {}).get("path"):
        candidates.append(Path(cfg["model"]["path"]) / "config.json")
    for path in candidates:
        if path.is_file():
            return params_from_config_file(path)
    raise ValueError(f"{run_dir}: no saved model config ({', '.join(MODEL_DIRS)} or model.path) "
                     "to count parameters from")


def dp_efficiency(ranks: int, overhead: float) -> float:
    return 1.0 / (1.0 + overhead * (ranks - 1))


@dataclass(frozen=True)
class MeasuredRates:
    """One run's measured rates and shape (see the module docstring for each derivation)."""

    run_dir: str
    engines: int
    gpus_per_engine: int
    ranks: int
    max_staleness: int
    params: int
    recompute: bool
    steps_measured: int
    gen_tokens_per_step: float
    train_tokens_per_step: float
    trajectories_per_step: float
    step_s: float
    wait_s: float
    train_s: float
    sync_s: float
    gen_tokens_per_s_per_gpu: float
    train_tokens_per_s_per_rank: float
    rollout_bound: bool
    dp_overhead: float = DEFAULT_DP_OVERHEAD
    device: str = "GPU"  # what the engines ran on: "CPU" when generation.gpus_per_worker == 0

    @property
    def gen_tokens_per_s_per_engine(self) -> float:
        return self.gen_tokens_per_s_per_gpu * self.gpus_per_engine

    @property
    def trajectories_per_s(self) -> float:
        return self.trajectories_per_step / self.step_s

    @property
    def gen_rate_note(self) -> str:
        if self.rollout_bound:
            return "measured (rollout-bound: engines saturated)"
        return "lower bound (trainer-bound: engines idled part of each step)"


def read_steps(metrics_path: Path) -> list[dict[str, float]]:
    if not metrics_path.is_file():
        raise ValueError(f"{metrics_path} not found: not a run directory")
    rows = (json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip())
    steps = [r for r in rows if "timing/step_s" in r]
    if not steps:
        raise ValueError(f"{metrics_path}: no GRPO step records (timing/step_s): nothing to predict from")
    return steps


def resolve_run_dir(path: str | Path) -> Path:
    """A run directory, or a folder holding run directories (the newest one with metrics)."""
    path = Path(path)
    if (path / "metrics.jsonl").is_file():
        return path
    found = sorted(path.glob("*/metrics.jsonl")) + sorted(path.glob("*/*/metrics.jsonl"))
    return found[-1].parent if found else path


def _mean(rows: list[dict[str, float]], key: str) -> float:
    return sum(r.get(key, 0.0) for r in rows) / len(rows)


def refill_factor(steps: list[dict[str, float]]) -> float:
    """Trajectories the engines produced per trajectory trained (zero-variance refills, dropped
    episodes): the last cumulative `accounting/produced` over all drawn trajectories; 1 if absent."""
    produced = steps[-1].get("accounting/produced")
    drawn = sum(r.get("rollout/num_trajectories", 0.0) for r in steps)
    return max(1.0, produced / drawn) if produced and drawn else 1.0


def measure_rates(run_dir: str | Path, warmup_steps: int = 1,
                  dp_overhead: float = DEFAULT_DP_OVERHEAD) -> MeasuredRates:
    """The rates of one run directory (config.json + metrics.jsonl); raises ValueError when it
    has no GRPO steps or no saved model config."""
    run = resolve_run_dir(run_dir)
    steps = read_steps(run / "metrics.jsonl")
    cfg = json.loads((run / "config.json").read_text())
    window = steps[warmup_steps:] or steps
    engines, ranks = int(cfg["generation"]["num_workers"]), int(cfg["trainer"]["num_ranks"])
    k0 = max(1, int(cfg["generation"].get("tensor_parallel_size", 1)))
    staleness = int(cfg["rollout"]["max_staleness"])
    step_s, wait_s = _mean(window, "timing/step_s"), _mean(window, "timing/wait_rollout_s")
    train_s, sync_s = _mean(window, "timing/train_s"), _mean(window, "timing/sync_s")
    gen_tokens = _mean(window, "rollout/num_generated_tokens") * refill_factor(steps)
    train_tokens = _mean(window, "train/num_tokens")
    if train_tokens <= 0:
        raise ValueError(f"{run}: no step trained (train/num_tokens is 0: every group flat?), "
                         "so there is no training rate to predict from")
    busy_s = step_s - sync_s if staleness >= 1 else wait_s
    if busy_s <= 0 or train_s <= 0:
        raise ValueError(f"{run}: step timers are zero (busy {busy_s:.3g} s, train {train_s:.3g} s)")
    return MeasuredRates(
        run_dir=str(run), engines=engines, gpus_per_engine=k0, ranks=ranks, max_staleness=staleness,
        params=run_params(run, cfg), recompute=bool(cfg["trainer"].get("gradient_checkpointing")),
        steps_measured=len(window), gen_tokens_per_step=gen_tokens, train_tokens_per_step=train_tokens,
        trajectories_per_step=_mean(window, "rollout/num_trajectories"), step_s=step_s, wait_s=wait_s,
        train_s=train_s, sync_s=sync_s, gen_tokens_per_s_per_gpu=gen_tokens / (busy_s * engines * k0),
        train_tokens_per_s_per_rank=train_tokens / (train_s * ranks * dp_efficiency(ranks, dp_overhead)),
        rollout_bound=staleness == 0 or wait_s >= ROLLOUT_BOUND_FRAC * step_s, dp_overhead=dp_overhead,
        device="GPU" if float(cfg["generation"].get("gpus_per_worker", 0.0)) > 0 else "CPU")


@dataclass(frozen=True)
class SplitPrediction:
    """Predicted step of one split: E engines of K GPUs and R trainer ranks."""

    engines: int
    gpus_per_engine: int
    ranks: int
    gen_s: float
    train_s: float
    sync_s: float
    step_s: float
    trajectories_per_s: float
    gen_tokens_per_s: float
    dp_efficiency: float

    @property
    def gpus(self) -> int:
        return self.engines * self.gpus_per_engine + self.ranks

    @property
    def bottleneck(self) -> str:
        return "generation" if self.gen_s >= self.train_s else "training"


def predict_point(rates: MeasuredRates, engines: int, ranks: int, gpus_per_engine: int = 1,
                  target_params: float | None = None, recompute: bool | None = None) -> SplitPrediction:
    """The formula of the module docstring for one split."""
    scale = (target_params or rates.params) / rates.params
    flops = FLOPS_PER_TOKEN_RECOMPUTE if (rates.recompute if recompute is None else recompute) \
        else FLOPS_PER_TOKEN_TRAIN
    flops0 = FLOPS_PER_TOKEN_RECOMPUTE if rates.recompute else FLOPS_PER_TOKEN_TRAIN
    eff = dp_efficiency(ranks, rates.dp_overhead)
    gen_s = rates.gen_tokens_per_step * scale / (rates.gen_tokens_per_s_per_gpu * engines * gpus_per_engine)
    train_s = rates.train_tokens_per_step * scale * flops / flops0 / (
        rates.train_tokens_per_s_per_rank * ranks * eff)
    sync_s = rates.sync_s * scale
    step_s = (max(gen_s, train_s) if rates.max_staleness >= 1 else gen_s + train_s) + sync_s
    return SplitPrediction(engines, gpus_per_engine, ranks, gen_s, train_s, sync_s, step_s,
                           rates.trajectories_per_step / step_s, rates.gen_tokens_per_step / step_s, eff)


def predict_split(rates: MeasuredRates, budget_gpus: int, target_params: float | None = None,
                  gpus_per_engine: int = 1, recompute: bool | None = None,
                  dp_overhead: float | None = None) -> list[SplitPrediction]:
    """Every split E*gpus_per_engine + R = budget_gpus (E, R >= 1), fastest step first."""
    if dp_overhead is not None and dp_overhead != rates.dp_overhead:
        rates = rescale_dp_overhead(rates, dp_overhead)
    splits = [(e, budget_gpus - e * gpus_per_engine) for e in range(1, budget_gpus // gpus_per_engine + 1)]
    preds = [predict_point(rates, e, r, gpus_per_engine, target_params, recompute) for e, r in splits if r >= 1]
    if not preds:
        raise ValueError(f"{budget_gpus} GPUs cannot hold one engine of {gpus_per_engine} GPU(s) "
                         "and one trainer rank")
    return sorted(preds, key=lambda p: (p.step_s, -p.engines))


def rescale_dp_overhead(rates: MeasuredRates, overhead: float) -> MeasuredRates:
    """The same run read with another data-parallel overhead c (changes r when R0 > 1)."""
    total = rates.train_tokens_per_s_per_rank * rates.ranks * dp_efficiency(rates.ranks, rates.dp_overhead)
    per_rank = total / (rates.ranks * dp_efficiency(rates.ranks, overhead))
    return replace(rates, train_tokens_per_s_per_rank=per_rank, dp_overhead=overhead)


def fit_dp_overhead(runs: list[MeasuredRates]) -> float | None:
    """c from runs of the same model at different rank counts: with a = fewest ranks and
    q = train rate(b) / train rate(a), c = (b/a - q) / (q(b-1) - (b/a)(a-1)); mean over b, >= 0."""
    if len({r.ranks for r in runs}) < 2:
        return None
    base = min(runs, key=lambda r: r.ranks)
    rate = {id(r): r.train_tokens_per_step / r.train_s for r in runs}
    fits = []
    for run in (r for r in runs if r.ranks > base.ranks):
        a, b, q = base.ranks, run.ranks, rate[id(run)] / rate[id(base)]
        denom = q * (b - 1) - (b / a) * (a - 1)
        if denom > 0:
            fits.append(max(0.0, (b / a - q) / denom))
    return sum(fits) / len(fits) if fits else None


@dataclass(frozen=True)
class ComparisonRow:
    run: str
    engines: int
    ranks: int
    predicted: SplitPrediction
    measured_step_s: float
    measured_trajectories_per_s: float
    measured_bottleneck: str

    @property
    def step_error_pct(self) -> float:
        return 100.0 * (self.predicted.step_s - self.measured_step_s) / self.measured_step_s

    @property
    def throughput_error_pct(self) -> float:
        measured = self.measured_trajectories_per_s
        return 100.0 * (self.predicted.trajectories_per_s - measured) / measured


def compare(reference: MeasuredRates, runs: list[MeasuredRates]) -> list[ComparisonRow]:
    """Predict each measured run's shape (engines, ranks, its model size) from `reference`."""
    rows = []
    for run in runs:
        pred = predict_point(reference, run.engines, run.ranks, run.gpus_per_engine, run.params, run.recompute)
        rows.append(ComparisonRow(Path(run.run_dir).name, run.engines, run.ranks, pred, run.step_s,
                                  run.trajectories_per_s, _measured_bottleneck(run)))
    return rows


def _measured_bottleneck(run: MeasuredRates) -> str:
    if run.max_staleness == 0:
        return "n/a (synchronous)"
    return "generation" if run.rollout_bound else "training"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


def rates_lines(rates: MeasuredRates) -> list[str]:
    return [
        (f"Measured from `{rates.run_dir}` ({rates.steps_measured} steps, on {rates.device}): "
         f"{rates.engines} engine(s) x {rates.gpus_per_engine} device(s), {rates.ranks} trainer rank(s), "
         f"max_staleness {rates.max_staleness}, {rates.params:,} parameters."),
        (f"- generated tokens/step G = {rates.gen_tokens_per_step:.0f}, trained tokens/step T = "
         f"{rates.train_tokens_per_step:.0f}, trajectories/step = {rates.trajectories_per_step:.0f}"),
        (f"- step {rates.step_s:.3g} s = wait {rates.wait_s:.3g} + train {rates.train_s:.3g} + sync "
         f"{rates.sync_s:.3g} s"),
        f"- generation g = {rates.gen_tokens_per_s_per_gpu:.4g} tokens/s per engine GPU: {rates.gen_rate_note}",
        f"- training r = {rates.train_tokens_per_s_per_rank:.4g} tokens/s per rank (c = {rates.dp_overhead:g})",
    ]


def format_predictions(preds: list[SplitPrediction]) -> list[str]:
    header = ["engines", "GPUs/engine", "ranks", "T_gen s", "T_train s", "T_sync s", "step s",
              "trajectories/s", "bottleneck"]
    return _table(header, [[str(p.engines), str(p.gpus_per_engine), str(p.ranks), f"{p.gen_s:.3g}",
                            f"{p.train_s:.3g}", f"{p.sync_s:.3g}", f"{p.step_s:.3g}",
                            f"{p.trajectories_per_s:.3g}", p.bottleneck] for p in preds])


def format_comparison(rows: list[ComparisonRow]) -> list[str]:
    header = ["run", "engines", "ranks", "step s pred", "step s meas", "step err %", "traj/s pred",
              "traj/s meas", "traj/s err %", "bottleneck pred / meas"]
    return _table(header, [[r.run, str(r.engines), str(r.ranks), f"{r.predicted.step_s:.3g}",
                            f"{r.measured_step_s:.3g}", f"{r.step_error_pct:+.0f}",
                            f"{r.predicted.trajectories_per_s:.3g}", f"{r.measured_trajectories_per_s:.3g}",
                            f"{r.throughput_error_pct:+.0f}",
                            f"{r.predicted.bottleneck} / {r.measured_bottleneck}"] for r in rows])


@dataclass(frozen=True)
class PredictRequest:
    """`labrl scale --predict` arguments."""

    run_dir: str
    gpus: int = 8
    params: float | None = None
    model_config: str | None = None
    gpus_per_engine: int = 1
    compare: tuple[str, ...] = ()
    recompute: bool | None = None
    dp_overhead: float = DEFAULT_DP_OVERHEAD
    warmup_steps: int = 1


def prediction_report(req: PredictRequest) -> str:
    """The markdown report: measured rates, the splits best first, and the comparison."""
    rates = measure_rates(req.run_dir, req.warmup_steps, req.dp_overhead)
    target = params_from_config_file(req.model_config) if req.model_config else (req.params or rates.params)
    preds = predict_split(rates, req.gpus, target, req.gpus_per_engine, req.recompute)
    lines = ["# Scaling model prediction", "", *rates_lines(rates), "",
             f"## {req.gpus} GPUs, {target:,.0f} parameters (x{target / rates.params:.4g} the measured size)",
             "", *format_predictions(preds), "",
             (f"Seconds carry the speed of the measured {rates.device}; the order of the splits carries "
              "over to hardware that speeds generation and training up by the same factor."), "",
             (f"Best split: {preds[0].engines} engine(s) x {preds[0].gpus_per_engine} GPU + "
              f"{preds[0].ranks} trainer rank(s), step {preds[0].step_s:.3g} s ({preds[0].bottleneck}-bound).")]
    if req.compare:
        runs = [measure_rates(d, req.warmup_steps, req.dp_overhead) for d in req.compare]
        fitted = fit_dp_overhead([rates, *runs])
        lines += ["", "## Predicted vs measured (each run's own shape and size, rates from the reference)",
                  "", *format_comparison(compare(rates, runs))]
        if fitted is not None:
            lines += ["", (f"Data-parallel overhead fitted from these runs: c = {fitted:.3g} "
                           f"(used: {rates.dp_overhead:g}).")]
    return "\n".join(lines) + "\n"


def write_prediction(req: PredictRequest, out: str | Path) -> Path:
    """Write the report to `out` (a .md file, or a folder for scale_prediction.md) and log it."""
    report = prediction_report(req)
    path = Path(out)
    path = path if path.suffix == ".md" else path / "scale_prediction.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report)
    logger.info("scaling prediction:\n%s", report)
    return path
