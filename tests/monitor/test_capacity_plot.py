"""capacity.png: engines and env workers per step with scale events, and the trainer's wait share."""

from __future__ import annotations

import json
from pathlib import Path

from monitor.plots import plot_capacity
from monitor.report import build_report


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def elastic_rows(n: int) -> list[dict]:
    rows = []
    for step in range(n):
        engines, env_workers = (1, 2) if step < 3 else (2, 2) if step < 6 else (2, 4)
        rows.append({"step": step, "elastic/engines": engines, "elastic/env_workers": env_workers,
                     "timing/step_s": 10.0, "timing/wait_rollout_s": 4.0 if step < 6 else 1.0})
    return rows


def test_capacity_plot_with_events_and_thresholds(tmp_path: Path) -> None:
    # An evaluation row (no step) and a step row without timers must not break the chart.
    write_jsonl(tmp_path / "metrics.jsonl", [{"eval_sft/pass@1": 0.3}, *elastic_rows(10),
                                             {"step": 10, "elastic/engines": 2}])
    write_jsonl(tmp_path / "scale_events.jsonl", [
        {"step": 2, "source": "cli", "engines": 1, "env_workers": 0, "reason": "manual", "engines_after": 2,
         "env_workers_after": 2, "outcome": "applied"},
        {"step": 5, "source": "autoscale", "engines": 0, "env_workers": 2, "reason": "env share 80%",
         "engines_after": 2, "env_workers_after": 4, "outcome": "env workers +2 starting"},
        {"step": 7, "source": "autoscale", "engines": 1, "env_workers": 0, "reason": "slow generation",
         "engines_after": 2, "env_workers_after": 4, "outcome": "refused: placement.mode=colocated ..."}])
    (tmp_path / "config.json").write_text(json.dumps({"rollout": {"autoscale": {"wait_high": 0.25,
                                                                                "wait_low": 0.05}}}))
    out = plot_capacity(tmp_path)
    assert out == tmp_path / "capacity.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 20_000


def test_capacity_plot_without_events_or_config(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "metrics.jsonl", elastic_rows(4))
    out = plot_capacity(tmp_path)
    assert out is not None and out.stat().st_size > 10_000


def test_no_elastic_rows_writes_nothing(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "metrics.jsonl", [{"step": 0, "timing/step_s": 10.0, "timing/wait_rollout_s": 1.0}])
    assert plot_capacity(tmp_path) is None
    assert not (tmp_path / "capacity.png").exists()


def test_the_run_report_shows_the_capacity_chart_and_the_changes(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "metrics.jsonl", elastic_rows(6))
    write_jsonl(tmp_path / "scale_events.jsonl", [
        {"step": 2, "source": "cli", "engines": 1, "env_workers": 0, "reason": "more engines please",
         "engines_after": 2, "env_workers_after": 2, "outcome": "engines +1 starting"}])
    page = build_report(tmp_path).read_text()
    assert "capacity.png" in page and (tmp_path / "report" / "capacity.png").is_file()
    assert "Capacity changes (1)" in page and "more engines please" in page
