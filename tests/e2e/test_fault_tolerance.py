"""Long-run faults: stopped and SIGKILLed runs resume exactly. (Dead env and generation workers,
one killed inside a weight sync: tests/cluster/test_elastic_cluster.py; random kills of every kind:
test_chaos.py.)"""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from cluster.ray_cluster import connect
from launch import components as C
from configs.loading import load_config
from launch.run import BATCHES_FILE, PROFILE_FILE, TrainingRun
from launch.run_state import load_run_state
from launch.train import resume

ROOT = Path(__file__).resolve().parents[2]
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


# Synchronous, seeded sampling: a resumed step sees the same weights and draws the same tokens.
# The entropy bonus makes every step a real update even when the untrained policy earns 0.
# The start policy is profiled on 8 training tasks (curriculum order); a resume reads that profile back.
RESUMABLE = TINY + ["grpo.num_steps=4", "rollout.max_staleness=0", "generation.seeded_sampling=true",
                    "grpo.entropy_coef=0.01", "env.profile_train_tasks=8", "env.profile_samples=2",
                    "env.curriculum=easy_first"]


@pytest.fixture(scope="module")
def straight(cluster, tmp_path_factory) -> Path:
    """An uninterrupted run of RESUMABLE: what every interrupted-and-resumed run must reproduce."""
    root = tmp_path_factory.mktemp("straight")
    run = TrainingRun(load_config(None, RESUMABLE + [f"logging.runs_root={root}", "run_name=straight"]))
    run.execute()
    return run.run_dir


def _assert_same_run_as(resumed_dir: Path, straight_dir: Path, resumed_from: int) -> None:
    """Same step counter, same task order, same updates from the checkpoint on, exact accounting."""
    got, want = _batches(resumed_dir), _batches(straight_dir)
    assert [b["step"] for b in got] == [0, 1, 2, 3]
    assert [b["task_ids"] for b in got] == [b["task_ids"] for b in want]
    assert [b["policy_version"] for b in got] == [1, 2, 3, 4]
    resumed, uninterrupted = _metrics(resumed_dir), _metrics(straight_dir)
    assert [r["policy_version"] for r in resumed] == [1, 2, 3, 4]
    for key in ("rollout/num_generated_tokens", "train/loss"):
        assert [r[key] for r in resumed[resumed_from:]] == pytest.approx(
            [r[key] for r in uninterrupted[resumed_from:]], rel=1e-3, abs=1e-6), key
    last = resumed[-1]
    dropped = sum(v for k, v in last.items() if k.startswith("accounting/dropped/"))
    assert last["accounting/produced"] == last["accounting/trained"] + dropped + last["accounting/buffered"]
    assert last["accounting/in_flight"] == 0


def test_start_policy_profile_keeps_no_signal_tasks_out_of_training(straight):
    profiled = [json.loads(line) for line in (straight / PROFILE_FILE).read_text().splitlines()]
    assert len(profiled) == 8 and {p["n"] for p in profiled} == {2}
    no_signal = {p["task_id"] for p in profiled if p["zero_variance"]}
    trained = {t for b in _batches(straight) for t in b["task_ids"]}
    assert no_signal and trained and not no_signal & trained
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["profile/num_tasks"] for r in rows if "profile/num_tasks" in r] == [8.0]


def test_resume_after_stop_continues_step_counter_and_task_order(cluster, straight, tmp_path):
    stopped = TrainingRun(load_config(None, RESUMABLE + [f"logging.runs_root={tmp_path}", "run_name=stopped"]))

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
    _assert_same_run_as(stopped.run_dir, straight, resumed_from=1)


def _start_driver(args: list[str], log: Path) -> subprocess.Popen:
    """`python -m launch.train ARGS` in its own session (its local Ray with it), output to `log`."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "launch.train", *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _kill_during_checkpoint_write(proc: subprocess.Popen, runs_root: Path, timeout_s: float) -> tuple[Path, str]:
    """SIGKILL the driver the moment a checkpoint folder exists that run_state.json does not name:
    a save under way. Returns the run directory and the tag that was committed at the kill."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        run_dir = next(runs_root.glob("killed-*"), None)
        ckpt_dir = run_dir / "checkpoint" if run_dir else None
        if ckpt_dir is not None and ckpt_dir.is_dir() and (run_dir / "run_state.json").is_file():
            # Listed before the state is read: a folder seen here and not named there is being written.
            versions = [int(d.name[1:]) for d in ckpt_dir.iterdir() if re.fullmatch(r"v\d+", d.name)]
            committed = json.loads((run_dir / "run_state.json").read_text())["trainer_tag"]
            if any(v > int(committed[1:]) for v in versions):
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
                return run_dir, committed
        time.sleep(0.001)
    raise AssertionError(f"no checkpoint write seen within {timeout_s:.0f}s (driver exit code {proc.poll()})")


def test_sigkill_during_a_checkpoint_write_then_resume_finishes_the_same_run(straight, tmp_path):
    args = RESUMABLE + [f"logging.runs_root={tmp_path}", "run_name=killed", "checkpoint.every_steps=1"]
    driver = _start_driver(args, tmp_path / "killed.log")
    try:
        run_dir, committed = _kill_during_checkpoint_write(driver, tmp_path, timeout_s=900)
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever of its Ray did not die with it
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == -signal.SIGKILL
    # The save under way is not what a resume sees: run_state.json still names the previous one.
    state = load_run_state(run_dir)
    assert state.trainer_tag == committed and state.policy_version == int(committed[1:])
    assert (run_dir / "checkpoint" / f"v{state.policy_version + 1}").is_dir()

    resumed = subprocess.run([sys.executable, "-m", "launch.train", "--resume", str(run_dir)], cwd=ROOT,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run_as(run_dir, straight, resumed_from=state.policy_version)
    # The half-written folder was replaced by a complete save; only the newest two are kept.
    assert sorted(d.name for d in (run_dir / "checkpoint").iterdir() if d.is_dir()) == ["v2", "v3"]
    assert load_run_state(run_dir).trainer_tag == "v3"
