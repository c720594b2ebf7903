"""`labrl profile` and `labrl eval` end to end with the sampling replaced by synthetic trajectories.

The real commands differ from this only in `sampling_run` (Ray, env workers, vLLM), which they
share with each other; here it yields a fake pool so the outputs can be checked without a model.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest

import launch.evaluate as evaluate_cmd
import launch.profile as profile_cmd
import monitor.evaluation
from envs.dataset import Task
from launch.policy_session import SamplingRun
from monitor.profiling import read_profiles
from monitor.run_logger import RunLogger, read_jsonl
from tests.monitor.synthetic import traj


class Dataset:
    def tasks(self, split):
        return [Task(id=f"{split}-{i}", env_name="stoich", split=split, difficulty=1, seed=i) for i in range(4)]


def fake_session(seen: dict):
    @contextmanager
    def sampling_run(cfg, command, checkpoint, out):
        seen["cfg"] = cfg
        run_log = RunLogger(Path(out), cfg.model_dump(), "p", "disabled", command)
        try:
            yield SamplingRun(cfg, Dataset(), pool=None, out_dir=Path(out), run_log=run_log, model_dir="m")
        finally:
            run_log.finish()
    return sampling_run


def fake_run_tasks(pool, tasks, samples_per_task=1, **kwargs):
    """Task i of the split: i of the k samples correct, answering 1 when correct and 2 otherwise."""
    return [traj(1.0 if j < i else 0.0, task_id=t.id, answer=1 if j < i else 2)
            for i, t in enumerate(tasks) for j in range(samples_per_task)]


@pytest.fixture
def patched(monkeypatch):
    seen: dict = {}
    for module in (profile_cmd, evaluate_cmd):
        monkeypatch.setattr(module, "sampling_run", fake_session(seen))
    for module in (profile_cmd, monitor.evaluation):  # eval samples through monitor.evaluation
        monkeypatch.setattr(module, "run_tasks", fake_run_tasks)
    return seen


def test_profile_command_outputs(tmp_path, patched):
    out = tmp_path / "prof"
    assert profile_cmd.main(["-k", "3", "--num-tasks", "4", "--split", "heldout", "--out", str(out)]) == 0
    profiles = read_profiles(out / "profile.jsonl")
    assert [p.task_id for p in profiles] == [f"heldout-{i}" for i in range(4)]
    assert [p.num_correct for p in profiles] == [0, 1, 2, 3]
    assert [p.zero_variance for p in profiles] == [True, False, False, True]
    summary = json.loads((out / "profile_summary.json").read_text())["summary"]
    assert summary["profile/zero_variance_frac"] == pytest.approx(0.5)
    assert (out / "profile_hist.png").read_bytes()[:4] == b"\x89PNG"
    assert read_jsonl(out / "metrics.jsonl")[0]["profile/pass@1"] == pytest.approx(0.5)


def test_eval_command_outputs(tmp_path, patched):
    out = tmp_path / "ev"
    assert evaluate_cmd.main(["-k", "4", "--out", str(out), "eval.temperature=0.25", "eval.num_tasks=3"]) == 0
    assert patched["cfg"].generation.temperature == 0.25  # eval samples at eval.temperature
    metrics = json.loads((out / "eval_summary.json").read_text())
    assert metrics["eval/num_tasks"] == 3
    assert metrics["eval/pass@1"] == pytest.approx((0 + 0.25 + 0.5) / 3)
    assert metrics["eval/pass@4"] == pytest.approx(2 / 3)
    assert metrics["eval/maj@4"] == pytest.approx((0 + 0 + 0.5) / 3)  # task 2: a 2-2 tie
    assert len(read_jsonl(out / "eval.jsonl")) == 3


def test_bad_config_is_exit_code_2(tmp_path, patched):
    assert evaluate_cmd.main(["--out", str(tmp_path), "trainer.lrr=1"]) == 2
