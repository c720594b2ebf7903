"""Run reports from the run directory alone: curves as PNGs and one self-contained HTML page.

Inputs are the files every run writes (metrics.jsonl, summary.json, config.json; alarms.jsonl and
samples.jsonl when present), never W&B: a report must work offline, on a copied run directory, and
after the cluster is gone. Missing metrics skip their figure with a note instead of failing, so a
report also renders for a run that died early (that is when one is needed most).
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - backend must be chosen first

from monitor.plots import (SCALE_EVENTS_FILE, draw_heldout_curve, plot_capacity, plot_reward_success,  # noqa: E402
                           plot_run_overview)
from monitor.run_logger import read_json, read_jsonl  # noqa: E402

logger = logging.getLogger(__name__)

REPORT_DIR = "report"
REASON_PREFIX = "rollout/reason/"
EVAL_LABELS = (("sft", "tab:gray"), ("grpo", "tab:green"))


@dataclass
class RunData:
    run_dir: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    config: dict[str, Any]
    alarms: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of the training steps that logged `key`."""
        pts = [(r["step"], float(r[key])) for r in self.rows if key in r and _is_train_row(r)]
        return [p[0] for p in pts], [p[1] for p in pts]


def _is_train_row(row: dict[str, Any]) -> bool:
    return "rollout/reward_mean" in row or any(k.startswith("train/") for k in row)


def load_run(run_dir: str | Path) -> RunData:
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise FileNotFoundError(f"{run_dir} is not a labrl run directory (no metrics.jsonl)")
    return RunData(run_dir=run_dir, rows=read_jsonl(run_dir / "metrics.jsonl"),
                   summary=read_json(run_dir / "summary.json"), config=read_json(run_dir / "config.json"),
                   alarms=read_jsonl(run_dir / "alarms.jsonl"), samples=read_jsonl(run_dir / "samples.jsonl"))


def _eval_lines(ax: Any, summary: dict[str, Any]) -> None:
    for label, color in EVAL_LABELS:
        rate = summary.get(f"eval_{label}/pass@1")
        if rate is not None:
            ci = summary.get(f"eval_{label}/ci95", 0.0)
            ax.axhline(rate, color=color, linestyle="--", label=f"held-out after {label}: {rate:.2f}±{ci:.2f}")


def _line_figure(run: RunData, out: Path, title: str, ylabel: str, series: Sequence[tuple[str, str]],
                 band: tuple[str, str] | None = None, eval_lines: bool = False,
                 right: tuple[str, str] | None = None) -> Path | None:
    """Lines for `series` [(key, label)], an optional min/max band and right-axis series."""
    plotted = [(run.series(key), label) for key, label in series]
    plotted = [(s, label) for s, label in plotted if s[0]]
    if not plotted:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for (steps, values), label in plotted:
        ax.plot(steps, values, label=label)
    if band is not None:
        (lo_steps, lo), (hi_steps, hi) = run.series(band[0]), run.series(band[1])
        if lo_steps and lo_steps == hi_steps:
            ax.fill_between(lo_steps, lo, hi, alpha=0.15, label="min..max")
    if eval_lines and not draw_heldout_curve(ax, run.rows):
        _eval_lines(ax, run.summary)
    if right is not None and run.series(right[0])[0]:
        ax2 = ax.twinx()
        ax2.plot(*run.series(right[0]), color="tab:red", alpha=0.6, label=right[1])
        ax2.set_ylabel(right[1], color="tab:red")
        ax2.set_ylim(-0.02, 1.02)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _reason_figure(run: RunData, out: Path) -> Path | None:
    """Share of each reward reason per step (stacked), and its total count over the run."""
    reasons = sorted({k[len(REASON_PREFIX):] for r in run.rows if _is_train_row(r) for k in r
                      if k.startswith(REASON_PREFIX)})
    rows = [r for r in run.rows if _is_train_row(r) and any(f"{REASON_PREFIX}{x}" in r for x in reasons)]
    if not reasons or not rows:
        return None
    steps = [r["step"] for r in rows]
    counts = [[float(r.get(f"{REASON_PREFIX}{x}", 0.0)) for r in rows] for x in reasons]
    totals = [sum(col) or 1.0 for col in zip(*counts)]
    fractions = [[c / t for c, t in zip(row, totals)] for row in counts]
    fig, (ax, ax_bar) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    ax.stackplot(steps, fractions, labels=reasons, alpha=0.85)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("share of trajectories")
    ax.set_ylim(0, 1)
    ax.set_title("reward reasons per step")
    ax.legend(loc="upper left", fontsize=7)
    ax_bar.barh(reasons, [sum(row) for row in counts], color="tab:blue")
    ax_bar.set_title("total over the run")
    ax_bar.set_xlabel("trajectories")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def render_figures(run: RunData, out_dir: Path) -> dict[str, Path | None]:
    """Every figure of the report; a value of None means its metrics were not in the run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        # Training reward (raw and smoothed) beside the held-out curve: where learning shows.
        "learning": (plot_reward_success(run.run_dir, run.summary, out_dir / "reward_success.png")
                     if run.series("rollout/reward_mean")[0] else None),
        # Per-difficulty held-out curves, entropy, truncation and mismatch on one page.
        "overview": (plot_run_overview(run.run_dir, out_dir / "overview.png")
                     if any("eval/updates" in r for r in run.rows) else None),
        "reward": _line_figure(run, out_dir / "reward.png", "training reward", "reward",
                               [("rollout/reward_mean", "mean"), ("rollout/reward_std", "std")],
                               band=("rollout/reward_min", "rollout/reward_max")),
        "success": _line_figure(run, out_dir / "success.png", "success rate", "success rate",
                                [("rollout/success_rate", "train success rate")], eval_lines=True),
        "length": _line_figure(run, out_dir / "length.png", "response length (generated tokens/episode)",
                               "tokens", [("rollout/response_length_mean", "mean"),
                                          ("rollout/response_length_max", "max")],
                               right=("rollout/truncation_rate", "truncation rate")),
        "entropy": _line_figure(run, out_dir / "entropy.png", "policy entropy", "nats/token",
                                [("train/entropy", "entropy")]),
        "reasons": _reason_figure(run, out_dir / "reasons.png"),
        "timing": _line_figure(run, out_dir / "timing.png", "step time", "seconds",
                               [("timing/step_s", "step"), ("timing/wait_rollout_s", "waiting for rollouts"),
                                ("timing/train_s", "training"), ("timing/sync_s", "weight sync")]),
        # Only runs whose capacity changed (labrl scale-run, rollout.autoscale) have the chart.
        "capacity": (plot_capacity(run.run_dir, out_dir / "capacity.png")
                     if (run.run_dir / SCALE_EVENTS_FILE).is_file() else None),
    }


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def render_html(run: RunData, figures: dict[str, Path | None], out: Path, max_samples: int = 6) -> Path:
    parts = [f"<h1>labrl run report: {html.escape(run.run_dir.name)}</h1>"]
    if run.summary:
        parts.append("<h2>Summary</h2>" + _table([{"metric": k, "value": v} for k, v in sorted(run.summary.items())],
                                                 ["metric", "value"]))
    steps = [r["step"] for r in run.rows if _is_train_row(r)]
    parts.append(f"<p>{len(steps)} training steps logged"
                 + (f" (last step {max(steps)})" if steps else "") + ".</p>")
    parts.append("<h2>Curves</h2>")
    for name, path in figures.items():
        if path is None:
            parts.append(f"<p class='missing'>{html.escape(name)}: no data in this run.</p>")
        else:
            parts.append(f"<figure><img src='{html.escape(path.name)}' alt='{html.escape(name)}'>"
                         f"<figcaption>{html.escape(name)}</figcaption></figure>")
    events = read_jsonl(run.run_dir / SCALE_EVENTS_FILE)
    if events:
        parts.append(f"<h2>Capacity changes ({len(events)})</h2>"
                     + _table(events, ["step", "source", "engines", "env_workers", "outcome", "reason"]))
    parts.append(f"<h2>Health alarms ({len(run.alarms)})</h2>")
    parts.append(_table(run.alarms, ["step", "check", "message", "stop"]) if run.alarms else "<p>none</p>")
    if run.samples:
        parts.append(f"<h2>Sample trajectories (last {min(max_samples, len(run.samples))})</h2>")
        for s in run.samples[-max_samples:]:
            head = (f"step {s.get('step')} · {s.get('task_id')} · reward {_fmt(s.get('reward'))} "
                    f"({s.get('reason')}, {s.get('finish_reason')})")
            body = "\n\n".join(f"## {k}\n{s.get(k, '')}" for k in ("prompt", "actions", "tool_calls", "observations"))
            parts.append(f"<details><summary>{html.escape(head)}</summary><pre>{html.escape(body)}</pre></details>")
    parts.append("<h2>Config</h2><pre>" + html.escape(json.dumps(run.config, indent=2)) + "</pre>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}"
             ".missing{color:#888}pre{background:#f6f6f6;padding:8px;overflow-x:auto}")
    out.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>labrl report "
                   f"{html.escape(run.run_dir.name)}</title><style>{style}</style></head><body>"
                   + "\n".join(parts) + "</body></html>")
    return out


def build_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Render the report of `run_dir` into `out_dir` (default RUN_DIR/report); returns the HTML path."""
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.run_dir / REPORT_DIR
    figures = render_figures(run, out)
    return render_html(run, figures, out / "report.html")
