"""Curves people would rather look at than read: reward and success from a run's metrics.jsonl."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import matplotlib

from monitor.run_logger import read_json, read_jsonl

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - backend must be chosen first

SCALE_EVENTS_FILE = "scale_events.jsonl"  # one row per capacity change (written by launch/elastic.py)


def read_metrics(run_dir: Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


def heldout_curve(rows: Iterable[dict]) -> tuple[list[float], list[float], list[float]]:
    """The held-out curve (`eval.every_steps`): optimizer updates behind each point, pass@1, ci95."""
    points = sorted((r["eval/updates"], r["eval/pass@1"], r.get("eval/ci95", 0.0)) for r in rows
                    if "eval/pass@1" in r and "eval/updates" in r)
    return [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]


def draw_heldout_curve(ax, rows: list[dict]) -> bool:
    """The held-out curve with its 95% band on `ax`; False when the run has none."""
    updates, rate, ci = heldout_curve(rows)
    if not updates:
        return False
    ax.plot(updates, rate, "o-", color="tab:green", label="held-out success (eval/pass@1)")
    ax.fill_between(updates, [r - c for r, c in zip(rate, ci)], [r + c for r, c in zip(rate, ci)],
                    color="tab:green", alpha=0.15, label="95% interval (tasks)")
    return True


def smoothed(values: list[float], window: int = 5) -> list[float]:
    """Trailing mean over up to `window` points: the trend of a noisy per-step series."""
    return [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
            for i in range(len(values))]


def plot_reward_success(run_dir: Path, summary: dict[str, float] | None = None, out: Path | None = None) -> Path:
    """Training reward and success per step (raw points and their trailing mean), the held-out
    curve when the run had one (`eval.every_steps`), and held-out success after SFT and after GRPO.
    The x axis is the policy version: step k trains on version k; a held-out point after u updates
    measured version u."""
    all_rows = read_metrics(run_dir)
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label, color in (("rollout/reward_mean", "train reward", "tab:blue"),
                              ("rollout/success_rate", "train success", "tab:orange")):
        steps, values = [r["step"] for r in all_rows if key in r], [r[key] for r in all_rows if key in r]
        ax.plot(steps, values, ".", color=color, alpha=0.35)
        ax.plot(steps, smoothed(values), color=color, label=f"{label} (mean of last 5 steps; dots: each step)")
    has_curve = draw_heldout_curve(ax, all_rows)
    for label, color in (("sft", "tab:gray"), ("grpo", "tab:green")):
        if summary and f"eval_{label}/pass@1" in summary and not has_curve:
            rate, ci = summary[f"eval_{label}/pass@1"], summary[f"eval_{label}/ci95"]
            ax.axhline(rate, color=color, linestyle="--", label=f"held-out after {label}: {rate:.2f}±{ci:.2f}")
            ax.axhspan(rate - ci, rate + ci, color=color, alpha=0.12)
    ax.set_xlabel("policy version (GRPO updates)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title("labrl: reward and success")
    out = Path(out) if out is not None else Path(run_dir) / "reward_success.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def difficulty_curves(rows: Iterable[dict]) -> dict[int, tuple[list[float], list[float], list[float]]]:
    """Per difficulty: the held-out curve's updates, pass@1 and ci95 (`eval/difficulty/<d>/...`)."""
    curves: dict[int, list[tuple[float, float, float]]] = {}
    for r in rows:
        for key in r:
            if key.startswith("eval/difficulty/") and key.endswith("/pass@1") and "eval/updates" in r:
                d = int(key.split("/")[2])
                curves.setdefault(d, []).append((r["eval/updates"], r[key], r.get(f"eval/difficulty/{d}/ci95", 0.0)))
    return {d: tuple(map(list, zip(*sorted(points)))) for d, points in sorted(curves.items())}


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    pairs = [(r["step"], r[key]) for r in rows if key in r and "step" in r]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_run_overview(run_dir: Path, out: Path | None = None) -> Path:
    """Four panels for a long run: the held-out curve per difficulty (with bands), training reward
    and success, entropy with the truncation rate, and the sampler/trainer mismatch."""
    rows = read_metrics(run_dir)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0][0]
    for d, (updates, rate, ci) in difficulty_curves(rows).items():
        line, = ax.plot(updates, rate, "o-", ms=3, label=f"difficulty {d}")
        ax.fill_between(updates, [r - c for r, c in zip(rate, ci)], [r + c for r, c in zip(rate, ci)],
                        color=line.get_color(), alpha=0.12)
    updates, rate, _ = heldout_curve(rows)
    ax.plot(updates, rate, "k--", lw=1, label="all curve tasks")
    ax.set(title="held-out success by difficulty (95% bands)", xlabel="GRPO updates", ylim=(-0.02, 1.02))
    ax.legend(fontsize=7)
    ax = axes[0][1]
    for key, label in (("rollout/reward_mean", "train reward"), ("rollout/success_rate", "train success")):
        steps, values = _series(rows, key)
        line, = ax.plot(steps, smoothed(values, 10), label=f"{label} (mean of last 10)")
        ax.plot(steps, values, ".", color=line.get_color(), alpha=0.25)
    ax.set(title="training batches", xlabel="GRPO step", ylim=(-0.02, 1.02))
    ax.legend(fontsize=7)
    ax = axes[1][0]
    ax.plot(*_series(rows, "train/entropy"), color="tab:purple", label="entropy (nats/token)")
    ax.set(title="entropy and truncation", xlabel="GRPO step", ylabel="nats/token")
    twin = ax.twinx()
    twin.plot(*_series(rows, "rollout/truncation_rate"), color="tab:red", alpha=0.7, label="truncation rate")
    twin.set(ylabel="truncation rate", ylim=(-0.02, 1.02))
    ax.legend(loc="upper left", fontsize=7)
    twin.legend(loc="upper right", fontsize=7)
    ax = axes[1][1]
    ax.plot(*_series(rows, "train/token_mult_prob_error"), label="token_mult_prob_error (healthy < 1.05)")
    ax.plot(*_series(rows, "train/is_ratio_max"), alpha=0.6, label="max importance ratio")
    ax.set(title="sampler vs trainer mismatch", xlabel="GRPO step")
    ax.legend(fontsize=7)
    fig.suptitle(f"labrl run {Path(run_dir).name}")
    out = Path(out) if out is not None else Path(run_dir) / "overview.png"
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_profile_histogram(profiles: list, out: Path) -> Path:
    """Per-task reward mean, reward std and pass@1 histograms of a reward profile (`TaskProfile`s).

    The std panel is the one that matters for GRPO: the bar at 0 is the tasks that give no signal.
    """
    panels = (("reward mean per task", [p.mean for p in profiles]),
              ("reward std per task (0 = no GRPO signal)", [p.std for p in profiles]),
              ("pass@1 per task", [p.pass_at_1 for p in profiles]))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (title, values) in zip(axes, panels):
        ax.hist(values, bins=20, color="tab:blue", alpha=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("tasks")
    n = profiles[0].n if profiles else 0
    fig.suptitle(f"reward profile: {len(profiles)} tasks x {n} samples", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def _event_label(event: dict) -> str:
    """E.g. "cli +1 eng", "autoscale -2 env"; a refusal is appended."""
    parts = [str(event.get("source", "?"))]
    for key, short in (("engines", "eng"), ("env_workers", "env")):
        if event.get(key):
            parts.append(f"{int(event[key]):+d} {short}")
    if _refused(event):
        parts.append("(refused)")
    return " ".join(parts)


def plot_capacity(run_dir: Path, out: Path | None = None) -> Path | None:
    """Engines and env workers per step with each scale event marked (top), and the share of the step
    the trainer waited for rollouts, with the autoscale thresholds when configured (bottom).

    None (nothing written) when the run logged no `elastic/engines`, i.e. had no elastic controller.
    `out`: where to write (default RUN_DIR/capacity.png).
    """
    run_dir = Path(run_dir)
    rows = [r for r in read_metrics(run_dir) if "step" in r and "elastic/engines" in r]
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(3, 2))
    top.step(steps, [r["elastic/engines"] for r in rows], where="post", label="vLLM engines", color="tab:blue")
    env = [(r["step"], r["elastic/env_workers"]) for r in rows if "elastic/env_workers" in r]
    if env:
        top.step(*zip(*env), where="post", label="env workers", color="tab:orange")
    for event in read_jsonl(run_dir / SCALE_EVENTS_FILE):
        # The controller applies a change after `step`, so it shows from the next step on.
        x = event["step"] + 0.5
        applied = not _refused(event)
        color = "tab:purple" if event.get("source") == "autoscale" else "tab:green"
        top.axvline(x, color=color, linestyle="-" if applied else ":", alpha=0.6)
        top.annotate(_event_label(event), (x, 0.97), xycoords=("data", "axes fraction"), rotation=90,
                     va="top", ha="right", fontsize=7, color=color)
    top.set_ylabel("count")
    # Head room above the highest count for the event labels; counts are whole numbers.
    highest = max([r["elastic/engines"] for r in rows] + [n for _, n in env])
    top.set_ylim(0, highest * 1.4 + 0.5)
    top.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    top.legend(loc="lower right", fontsize=8)  # upper left would hide the first event label
    top.set_title("labrl: rollout capacity")
    timed = [r for r in rows if r.get("timing/step_s")]
    bottom.plot([r["step"] for r in timed], [r.get("timing/wait_rollout_s", 0.0) / r["timing/step_s"] for r in timed],
                marker=".", color="tab:red", label="trainer wait share (wait_rollout_s / step_s)")
    autoscale = read_json(run_dir / "config.json").get("rollout", {}).get("autoscale") or {}
    for key, style in (("wait_high", "--"), ("wait_low", ":")):
        if key in autoscale:
            bottom.axhline(autoscale[key], color="tab:gray", linestyle=style, label=f"{key} {autoscale[key]:.0%}")
    bottom.set_ylim(-0.02, 1.02)
    bottom.set_xlabel("GRPO step")
    bottom.set_ylabel("share of step")
    bottom.legend(loc="upper right", fontsize=8)
    out = Path(out) if out is not None else run_dir / "capacity.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _refused(event: dict) -> bool:
    return str(event.get("outcome", "")).startswith("refused")
