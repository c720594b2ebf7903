"""Curves people would rather look at than read: reward and success from a run's metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - backend must be chosen first


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_reward_success(run_dir: Path, summary: dict[str, float] | None = None) -> Path:
    """Training reward and success per step, with held-out success after SFT and after GRPO."""
    rows = [r for r in read_metrics(run_dir) if "rollout/reward_mean" in r]
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["rollout/reward_mean"] for r in rows], label="train reward (mean)")
    ax.plot(steps, [r["rollout/success_rate"] for r in rows], label="train success rate")
    for label, color in (("sft", "tab:gray"), ("grpo", "tab:green")):
        if summary and f"eval_{label}/pass@1" in summary:
            rate, ci = summary[f"eval_{label}/pass@1"], summary[f"eval_{label}/ci95"]
            ax.axhline(rate, color=color, linestyle="--", label=f"held-out after {label}: {rate:.2f}±{ci:.2f}")
            ax.axhspan(rate - ci, rate + ci, color=color, alpha=0.12)
    ax.set_xlabel("GRPO step")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("labrl: reward and success")
    out = Path(run_dir) / "reward_success.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
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
