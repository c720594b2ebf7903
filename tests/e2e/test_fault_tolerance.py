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


def test_killed_env_and_generation_workers_are_replaced(cluster, tmp_path):
    cfg = load_config(None, TINY + ["generation.num_workers=2", "grpo.num_steps=3",
                                    f"logging.runs_root={tmp_path}", "run_name=faults"])
    run = TrainingRun(cfg)

    def kill_workers(step, metrics):
        if step == 0:
            ray.kill(run.pool.workers[0], no_restart=True)
            ray.kill(run.gen_workers[0], no_restart=True)

    run.step_hooks.append(kill_workers)
    summary = run.execute()
    assert "eval_grpo/pass@1" in summary
    rows = _metrics(run.run_dir)
    assert [r["policy_version"] for r in rows] == [1, 2, 3]
    assert sum(r["fault/generation_workers_replaced"] for r in rows) == 1
    last = rows[-1]
    dropped = sum(v for k, v in last.items() if k.startswith("accounting/dropped/"))
    # every produced trajectory is trained, dropped with a reason, or still buffered / in flight
    assert last["accounting/produced"] == last["accounting/trained"] + dropped + last["accounting/buffered"]
    assert last["accounting/trained"] + dropped >= 8 * 2


def test_resume_after_stop_continues_step_counter_and_task_order(cluster, tmp_path):
    # Synchronous, seeded sampling: a resumed step sees the same weights and draws the same tokens.
    # The entropy bonus makes every step a real update even when the untrained policy earns 0.
    base = TINY + [f"logging.runs_root={tmp_path}", "grpo.num_steps=3", "rollout.max_staleness=0",
                   "generation.seeded_sampling=true", "grpo.entropy_coef=0.01"]
    straight = TrainingRun(load_config(None, base + ["run_name=straight"]))
    straight.execute()

    stopped = TrainingRun(load_config(None, base + ["run_name=stopped"]))

    def stop_after_first_step(step, metrics):
        if step == 0:
            raise KeyboardInterrupt("simulated SIGTERM")

    stopped.step_hooks.append(stop_after_first_step)
    with pytest.raises(KeyboardInterrupt):
        stopped.execute()
    state = load_run_state(stopped.run_dir)
    assert state.next_step == 1 and state.policy_version == 1
    resume(stopped.run_dir, [])

    got, want = _batches(stopped.run_dir), _batches(straight.run_dir)
    assert [b["step"] for b in got] == [0, 1, 2]
    assert [b["task_ids"] for b in got] == [b["task_ids"] for b in want]
    assert [b["policy_version"] for b in got] == [1, 2, 3]
    resumed, uninterrupted = _metrics(stopped.run_dir), _metrics(straight.run_dir)
    assert [r["policy_version"] for r in resumed] == [1, 2, 3]
    for key in ("rollout/num_generated_tokens", "train/loss"):
        assert [r[key] for r in resumed] == pytest.approx([r[key] for r in uninterrupted], rel=1e-3, abs=1e-6), key
