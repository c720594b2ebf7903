"""`labrl report` renders PNGs and an HTML page from a saved run directory alone."""

from __future__ import annotations

import pytest

from launch.cli import COMMANDS
from launch.report import main as report_main
from monitor.report import build_report
from tests.monitor.synthetic import write_run_dir


def test_report_renders_from_run_dir(tmp_path):
    run_dir = write_run_dir(tmp_path / "default-20260101-000000")
    page = build_report(run_dir)
    out = run_dir / "report"
    for name in ("reward", "success", "length", "entropy", "reasons", "timing"):
        png = out / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG", name
        assert f"src='{name}.png'" in page.read_text()
    html = page.read_text()
    assert "eval_grpo/pass@1" in html and "too long &lt;b&gt;" in html and "How &lt;many&gt;?" in html


def test_report_of_early_dead_run_skips_missing_figures(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 0, "rollout/reward_mean": 0.1}\n')
    page = build_report(run_dir, tmp_path / "out")
    assert (tmp_path / "out" / "reward.png").is_file() and not (tmp_path / "out" / "entropy.png").exists()
    assert "entropy: no data" in page.read_text()


def test_report_cli(tmp_path):
    assert COMMANDS["report"] == report_main.__module__ and {"train", "profile", "eval", "report"} <= set(COMMANDS)
    assert report_main([str(write_run_dir(tmp_path / "r"))]) == 0
    assert (tmp_path / "r" / "report" / "report.html").is_file()
    assert report_main([str(tmp_path / "missing")]) == 2


def test_profile_and_eval_parsers():
    from launch.evaluate import parser as eval_parser
    from launch.profile import parser as profile_parser
    a = profile_parser().parse_args(["--config", "c.yaml", "--samples-per-task", "8", "--split", "heldout",
                                     "--num-tasks", "20", "--checkpoint", "m", "generation.temperature=0.7"])
    assert (a.samples_per_task, a.split, a.num_tasks, a.checkpoint, a.overrides) == (
        8, "heldout", 20, "m", ["generation.temperature=0.7"])
    b = eval_parser().parse_args(["-k", "4"])
    assert b.samples_per_task == 4 and b.checkpoint is None
    with pytest.raises(SystemExit):
        profile_parser().parse_args(["--split", "test"])
