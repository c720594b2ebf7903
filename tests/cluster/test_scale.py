"""`labrl scale` without training: points, measurement from metrics.jsonl, reports, failure rows.
The runner is replaced by one that writes the metrics a real run would."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from launch.cli import COMMANDS
from configs.loading import ConfigError
from launch.scale import SHORT_RUN, Point, make_points, measure, parse_axes, run_sweep


def _write_metrics(path: Path, step_s: list[float], trajs: float = 8.0, tokens: float = 400.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [{"step": 0, "eval_sft/pass@1": 0.1}]  # not a GRPO step: ignored
    records += [{"step": i, "timing/step_s": s, "timing/sync_s": 0.1, "rollout/num_trajectories": trajs,
                 "rollout/num_generated_tokens": tokens, "train/tokens_per_s": 1000.0}
                for i, s in enumerate(step_s)]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_scale_is_a_labrl_command():
    assert "scale" in COMMANDS


def test_default_axes_one_at_a_time():
    points = make_points(parse_axes([]))
    assert [p.name for p in points] == [
        "num_env_workers1_num_workers1_num_ranks1", "num_env_workers2_num_workers1_num_ranks1",
        "num_env_workers4_num_workers1_num_ranks1", "num_env_workers1_num_workers2_num_ranks1",
        "num_env_workers1_num_workers1_num_ranks2"]


def test_grid_and_bad_axis():
    points = make_points(parse_axes(["rollout.num_env_workers=1,2", "generation.num_workers=1,2,3"]), grid=True)
    assert len(points) == 6 and points[-1].overrides == ["rollout.num_env_workers=2", "generation.num_workers=3"]
    with pytest.raises(ConfigError, match="section.field=v1,v2"):
        parse_axes(["workers=1,2"])


def test_measure_skips_warmup_steps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write_metrics(path, [10.0, 2.0, 2.0])
    m = measure(path, warmup_steps=1)
    assert m["steps_measured"] == 2
    assert m["trajectories_per_s"] == pytest.approx(16 / 4) and m["tokens_per_s"] == pytest.approx(800 / 4)
    assert measure(path, warmup_steps=5)["steps_measured"] == 3  # nothing left: keep all


def test_sweep_writes_table_and_plot_and_records_failures(tmp_path):
    seen: list[list[str]] = []

    def fake_runner(args: list[str], timeout_s: float) -> tuple[int, str]:
        seen.append(args)
        root = Path(next(a for a in args if a.startswith("logging.runs_root=")).split("=", 1)[1])
        workers = int(next(a for a in args if a.startswith("rollout.num_env_workers=")).split("=")[1])
        if workers == 4:
            return 1, "Traceback: boom"
        _write_metrics(root / "scale-x-1" / "metrics.jsonl", [5.0, 4.0 / workers, 4.0 / workers])
        return 0, ""

    points = make_points(parse_axes(["rollout.num_env_workers=1,2,4", "trainer.num_ranks=1,2"]))
    rows = run_sweep(None, ["grpo.num_steps=3"], points, tmp_path, runner=fake_runner)
    assert [r["status"] for r in rows] == ["ok", "ok", "failed (exit 1)", "ok"]
    assert rows[1]["trajectories_per_s"] == pytest.approx(2 * rows[0]["trajectories_per_s"])
    assert rows[0]["cpus"] == pytest.approx(2.25) and rows[3]["cpus"] == pytest.approx(3.25)  # gen 1 + ranks + env 0.25 each
    assert seen[0][: len(SHORT_RUN)] == SHORT_RUN and "grpo.num_steps=3" in seen[0]
    with open(tmp_path / "scale.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["rollout.num_env_workers"] for t in table] == ["1", "2", "4", "1"]
    assert "| point | rollout.num_env_workers | trainer.num_ranks | status" in (tmp_path / "scale.md").read_text()
    assert (tmp_path / "scale.png").stat().st_size > 1000


def test_invalid_point_fails_before_any_run(tmp_path):
    def never(args, timeout_s):
        raise AssertionError("no point may run when one point's config is invalid")

    with pytest.raises(ConfigError, match="num_ranks"):
        run_sweep(None, [], [Point({"trainer.num_ranks": "0"})], tmp_path, runner=never)
