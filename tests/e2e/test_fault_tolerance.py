"""Long-run faults: dead env and generation workers are replaced, nothing is lost, runs resume exactly."""

import json
from pathlib import Path

import pytest
import ray

from cluster.ray_cluster import connect
from launch import components as C
from configs.loading import load_config
from launch.run import BATCHES_FILE, TrainingRun
from launch.run_state import load_run_state
from launch.train import resume

TINY = ["sft.num_demos=32", "sft.steps=5", "grpo.batch_size=8", "grpo.group_size=4", "eval.num_tasks=4",
        "env.num_train_tasks=64", "env.num_heldout_tasks=4", "logging.progress_bar=false",
        "generation.max_model_len=512", "rollout.max_staleness=1", "logging.wandb_mode=disabled",
        # The untrained policy earns 0 everywhere: dynamic sampling would drop every group.
        "grpo.dynamic_sampling=false"]


@pytest.fixture(scope="module")
def cluster():
    cfg = load_config(None, TINY + ["generation.num_workers=2"])
    connect(None, C.cpus_requested(cfg) + 1)
    yield
    ray.shutdown()


def _batches(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / BATCHES_FILE).read_text().splitlines()]


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "accounting/produced" in r]


class KillWorkersAfterFirstStep:
    """An observer that kills env worker 0 and generation worker 0 after step 0 and, after the last
    step, records what the run's pool and engine fleet look like."""

    def __init__(self, run: TrainingRun, last_step: int):
        self.run, self.last_step = run, last_step

    def on_step(self, report) -> None:
        if report.step == 0:
            self.killed_env, self.killed_gen = self.run.pool.workers[0], self.run.fleet.workers[0]
            ray.kill(self.killed_env, no_restart=True)
            ray.kill(self.killed_gen, no_restart=True)
        if report.step == self.last_step:
            self.env_workers, self.gen_workers = list(self.run.pool.workers), list(self.run.fleet.workers)
            self.replaced_env = self.run.pool.replaced_workers
            self.served = ray.get([w.policy_version.remote() for w in self.gen_workers], timeout=60)


def test_killed_env_and_generation_workers_are_replaced(cluster, tmp_path):
    cfg = load_config(None, TINY + ["generation.num_workers=2", "grpo.num_steps=3",
                                    f"logging.runs_root={tmp_path}", "run_name=faults"])
    run = TrainingRun(cfg)
    faults = KillWorkersAfterFirstStep(run, last_step=2)
    run.observers.append(faults)
    summary = run.execute()
    assert "eval_grpo/pass@1" in summary
    rows = _metrics(run.run_dir)
    assert [r["policy_version"] for r in rows] == [1, 2, 3]
    assert [r["fault/generation_workers_replaced"] for r in rows] == [0, 1, 0]  # at the sync after the kill
    # Both dead workers were replaced by new actors, which serve: the engines the trained version.
    assert faults.replaced_env == 1
    assert faults.env_workers[0]._actor_id != faults.killed_env._actor_id
    assert faults.gen_workers[0]._actor_id != faults.killed_gen._actor_id
    assert faults.served == [3, 3]
    # Every trajectory of the 3 batches (8 each) was trained on or dropped with a reason; none is
    # left buffered or in flight, and none was counted twice (re-run groups replace lost ones).
    last = rows[-1]
    dropped = sum(v for k, v in last.items() if k.startswith("accounting/dropped/"))
    assert last["accounting/produced"] == 24
    assert last["accounting/trained"] + dropped == 24
    assert last["accounting/buffered"] == 0 and last["accounting/in_flight"] == 0


def test_resume_after_stop_continues_step_counter_and_task_order(cluster, tmp_path):
    # Synchronous, seeded sampling: a resumed step sees the same weights and draws the same tokens.
    # The entropy bonus makes every step a real update even when the untrained policy earns 0.
    base = TINY + [f"logging.runs_root={tmp_path}", "grpo.num_steps=3", "rollout.max_staleness=0",
                   "generation.seeded_sampling=true", "grpo.entropy_coef=0.01"]
    straight = TrainingRun(load_config(None, base + ["run_name=straight"]))
    straight.execute()

    stopped = TrainingRun(load_config(None, base + ["run_name=stopped"]))

    class StopAfterFirstStep:
        def on_step(self, report):
            if report.step == 0:
                raise KeyboardInterrupt("simulated SIGTERM")

    stopped.observers.append(StopAfterFirstStep())
    with pytest.raises(KeyboardInterrupt):
        stopped.execute()
    state = load_run_state(stopped.run_dir)
    assert state.policy_version == 1
    resume(stopped.run_dir, [])

    got, want = _batches(stopped.run_dir), _batches(straight.run_dir)
    assert [b["step"] for b in got] == [0, 1, 2]
    assert [b["task_ids"] for b in got] == [b["task_ids"] for b in want]
    assert [b["policy_version"] for b in got] == [1, 2, 3]
    resumed, uninterrupted = _metrics(stopped.run_dir), _metrics(straight.run_dir)
    assert [r["policy_version"] for r in resumed] == [1, 2, 3]
    for key in ("rollout/num_generated_tokens", "train/loss"):
        assert [r[key] for r in resumed] == pytest.approx([r[key] for r in uninterrupted], rel=1e-3, abs=1e-6), key
