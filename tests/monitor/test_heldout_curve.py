"""The held-out curve (`eval.every_steps`): per-difficulty breakdown, the curve read back from
metrics.jsonl, and drawn in the run plot and the report beside the training reward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from configs.schema import GRPOConfig
from envs.dataset import Task
from monitor.eval_stats import TaskEval
from monitor.evaluation import HeldoutCurve, NothingMeasured, difficulty_breakdown, summarize
from monitor.plots import difficulty_curves, heldout_curve, plot_reward_success, plot_run_overview, smoothed
from monitor.report import build_report
from rollout.pipeline import GRPOPipeline, TaskStream
from tests.monitor.synthetic import traj
from tests.rollout.pipeline_fakes import NullPublisher, RecordingTrainer, ScriptedPool, tasks


def _task(difficulty: int, rate: float) -> TaskEval:
    return TaskEval(task_id=f"t{difficulty}-{rate}", env_name="e", difficulty=difficulty, n=2,
                    num_correct=int(2 * rate), pass_at_1=rate, pass_at_k=rate, majority=rate,
                    majority_answer=None, num_submitted=2)


def test_difficulty_breakdown_has_each_difficultys_rate_and_interval():
    out = difficulty_breakdown([_task(1, 1.0), _task(1, 0.5), _task(2, 0.0), _task(2, 0.0)], "eval")
    assert out["eval/difficulty/1/pass@1"] == 0.75 and out["eval/difficulty/1/num_tasks"] == 2
    assert out["eval/difficulty/2/pass@1"] == 0.0 and out["eval/difficulty/2/ci95"] == 0.0
    assert out["eval/difficulty/1/ci95"] > 0


def test_an_evaluation_whose_every_episode_failed_is_not_a_zero_success_rate():
    failed = [traj(0.0, task_id=f"t{i}") for i in range(4)]
    for t in failed:
        t.finish_reason, t.reward_reason = "error", "env_error"
    with pytest.raises(NothingMeasured, match="held-out eval_sft: all 4 episodes failed"):
        summarize(failed, "eval_sft", 1)
    played = failed[:3] + [traj(1.0, task_id="t3")]
    metrics, _ = summarize(played, "eval_sft", 1)  # some failures: counted as failures, reported
    assert metrics["eval_sft/pass@1"] == 0.25 and metrics["eval_sft/finish/error"] == 3


def _write_run(run_dir: Path) -> None:
    rows = [{"step": 0, "eval/pass@1": 0.2, "eval/ci95": 0.05, "eval/updates": 0.0}]
    for step in range(6):
        rows.append({"step": step, "rollout/reward_mean": 0.3 + 0.05 * step, "rollout/success_rate": 0.2})
        if step % 2 == 1:
            rows.append({"step": step, "eval/pass@1": 0.2 + 0.05 * step, "eval/ci95": 0.05,
                         "eval/updates": float(step + 1)})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_curve_is_read_in_update_order_and_drawn_in_the_plot_and_the_report(tmp_path: Path):
    _write_run(tmp_path)
    updates, rate, ci = heldout_curve(json.loads(line) for line in (tmp_path / "metrics.jsonl").open())
    assert updates == [0.0, 2.0, 4.0, 6.0] and rate == pytest.approx([0.2, 0.25, 0.35, 0.45])
    assert ci == [0.05] * 4
    out = plot_reward_success(tmp_path)
    assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 20_000
    page = build_report(tmp_path).read_text()
    assert "reward_success.png" in page and (tmp_path / "report" / "reward_success.png").is_file()


def test_per_difficulty_curves_and_the_overview_page(tmp_path: Path):
    rows = [{"step": s, "eval/updates": float(u), "eval/pass@1": 0.3,
             "eval/difficulty/1/pass@1": 0.5 + u / 100, "eval/difficulty/1/ci95": 0.1,
             "eval/difficulty/2/pass@1": u / 100, "eval/difficulty/2/ci95": 0.05} for s, u in ((9, 10), (0, 0))]
    rows += [{"step": s, "rollout/reward_mean": 0.3, "rollout/success_rate": 0.3, "train/entropy": 0.01,
              "rollout/truncation_rate": 0.0, "train/token_mult_prob_error": 1.0, "train/is_ratio_max": 1.2}
             for s in range(10)]
    curves = difficulty_curves(rows)
    assert sorted(curves) == [1, 2]
    assert curves[2] == ([0.0, 10.0], [0.0, 0.1], [0.05, 0.05])
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = plot_run_overview(tmp_path)
    assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 40_000
    assert "overview.png" in build_report(tmp_path).read_text()


def test_smoothing_is_a_trailing_mean():
    assert smoothed([1.0, 3.0, 5.0, 7.0], window=2) == [1.0, 2.0, 4.0, 6.0]


class _Log:
    def __init__(self):
        self.rows: list[tuple[int, dict]] = []

    def log(self, metrics, step):
        self.rows.append((step, metrics))


def test_curve_points_between_steps_leave_the_in_flight_training_groups_alone():
    """The real pipeline (max_staleness 1: the next batch is in flight while a step ends) with the
    curve every 2 of 5 steps: points after 2 and 4 updates, each on its own 3 tasks only, and every
    training batch still trained whole. The end points come from the run's own evaluations, whose
    episodes of other tasks the curve leaves out."""
    heldout = [Task(id=f"h{i}", env_name="stoich", split="heldout", difficulty=1 + i % 2, seed=i) for i in range(3)]

    def play(job):
        success = job.task.split == "heldout"
        version = job.tags.get("batch_index", 0)  # fresh: played by the version its batch trains
        return [traj(float(success), task_id=job.task.id, difficulty=job.task.difficulty, version=version)
                for _ in range(job.group_size)]

    pool, trainer, log = ScriptedPool(play), RecordingTrainer(), _Log()
    curve = HeldoutCurve(pool, heldout, every_steps=2, num_steps=5, samples_per_task=2, run_log=log)
    grpo = GRPOConfig(num_steps=5, batch_size=8, group_size=4)
    curve.point(0, 0)
    GRPOPipeline(grpo, 1, pool, TaskStream(tasks(12), 0), trainer, NullPublisher(), [curve]).run()
    final_eval = [traj(1.0, task_id=t.id, difficulty=t.difficulty) for t in heldout for _ in range(2)]
    final_eval += [traj(0.0, task_id=f"other{i}") for i in range(4)]
    curve.log_point(final_eval, 4, 5)
    assert [(step, m["eval/updates"]) for step, m in log.rows] == [(0, 0.0), (1, 2.0), (3, 4.0), (4, 5.0)]
    assert all(m["eval/pass@1"] == 1.0 and m["eval/num_tasks"] == 3 for _, m in log.rows)
    assert log.rows[0][1]["eval/difficulty/2/num_tasks"] == 1.0
    assert [len(batch) for batch in trainer.batches] == [8] * 5  # no training group was taken by an eval
