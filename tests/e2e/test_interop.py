"""GRPO end to end (real Ray, vLLM, DeepSpeed) on environments written for other frameworks and
served by their own packages: the molar-mass lab written with NeMo Gym's API (examples/nemo_gym_lab,
in NeMo Gym's own Python; then profiled with `labrl profile`) and the dilution lab written with
Aviary's API behind Aviary's TaskDatasetServer (examples/aviary_lab)."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
import ray

from configs.loading import load_config
from envs.adapters.nemo_gym.process import nemo_gym_server
from examples.aviary_lab.env import lab_server
from examples.nemo_gym_lab.tasks import write_rows
from envs.registry import get_env_spec
from launch import profile
from launch.components import make_dataset
from launch.train import train

TINY = ["sft.num_demos=32", "sft.steps=10", "grpo.num_steps=2", "grpo.batch_size=16", "grpo.group_size=4",
        "eval.num_tasks=4", "env.num_train_tasks=64", "env.num_heldout_tasks=8", "env.difficulties=[1]",
        "logging.progress_bar=false", "generation.max_model_len=512", "trainer.zero_stage=1",
        "checkpoint.every_steps=0", "grpo.dynamic_sampling=false", "grpo.entropy_coef=0.01"]


def assert_complete_run_directory(run_dir: Path, cfg, summary: dict) -> None:
    """What `labrl train` leaves behind, whatever the environment: weights, plot, metrics, paired
    held-out results before and after GRPO, the summary, offline W&B files."""
    assert (run_dir / "final_model" / "config.json").is_file()
    assert (run_dir / "reward_success.png").stat().st_size > 0
    for key in ("eval_sft/pass@1", "eval_grpo/pass@1", "eval_sft/ci95", "grpo/improvement_ci95"):
        assert key in summary
    before, after = (json.loads((run_dir / f"eval_{label}_tasks.json").read_text()) for label in ("sft", "grpo"))
    assert [r["task_id"] for r in before] == [r["task_id"] for r in after] and len(before) == cfg.eval.num_tasks
    assert summary["grpo/improvement"] == pytest.approx(
        sum(a["success_rate"] - b["success_rate"] for a, b in zip(after, before)) / len(before))
    assert json.loads((run_dir / "summary.json").read_text())["eval_grpo/pass@1"] == summary["eval_grpo/pass@1"]
    assert list((run_dir / "wandb").glob("offline-run-*")), "W&B offline files missing"


def test_grpo_on_a_nemo_gym_resources_server(tmp_path):
    tasks = tmp_path / "lab.jsonl"
    write_rows(tasks, rows=120, seed=0, fault_fraction=0.5)  # half the rows: an instrument fault (masked)
    if ray.is_initialized():
        ray.shutdown()
    with nemo_gym_server("examples.nemo_gym_lab.app:MolarMassLab") as server:
        env = ["env.name=nemo_gym", f"env.options.url={server.url}", f"env.options.tasks={tasks}",
               "env.options.reference=examples.nemo_gym_lab.tasks:reference_policy"]
        cfg = load_config(None, TINY + env + [f"logging.runs_root={tmp_path / 'runs'}", "run_name=nemo-gym"])
        summary = train(cfg)
        run_dir = next((tmp_path / "runs").iterdir())
        assert_complete_run_directory(run_dir, cfg, summary)
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in rows if "rollout/reward_mean" in r]
        assert [r["policy_version"] for r in steps] == [1.0, 2.0]
        for r in steps:  # every step trained on verifier rewards; the books balance with masked drops
            assert r["rollout/num_trajectories"] > 0 and "train/loss" in r
            produced = r["accounting/produced"]
            dropped = sum(v for k, v in r.items() if k.startswith("accounting/dropped/"))
            assert produced == r["accounting/trained"] + dropped + r["accounting/buffered"]
        assert steps[-1]["accounting/dropped/masked_by_env"] > 0
        assert "eval_grpo/pass@1" in summary and "eval_grpo/masked" in summary

        out = tmp_path / "profile"
        assert profile.main(["-k", "4", "--num-tasks", "6", "--out", str(out), "--checkpoint",
                             str(run_dir / "final_model"), *TINY, *env]) == 0
    profiled = {p["task_id"]: p for p in map(json.loads, (out / profile.PROFILE_FILE).read_text().splitlines())}
    first_six = make_dataset(cfg, get_env_spec(cfg.env.name, cfg.env.options)).tasks("train")[:6]
    faulty = {t.id for t in first_six if t.data["row"]["instrument_fault"]}
    assert 0 < len(faulty) < 6 and set(profiled) <= {t.id for t in first_six}
    for task_id in {t.id for t in first_six} - faulty:  # always judged: all 4 samples profiled
        assert profiled[task_id]["n"] == 4 and 0.0 <= profiled[task_id]["mean"] <= 1.0
    # a faulty row's samples that reached /verify were masked and left out of its profile
    assert all(profiled[t]["n"] <= 4 for t in faulty & set(profiled))


def test_grpo_through_aviarys_task_dataset_server(tmp_path, monkeypatch):
    """The dilution lab written with Aviary's API, served by Aviary's own TaskDatasetServer with an
    API key, trained through `env.name=aviary_http`: demonstrations by its reference solver, GRPO
    steps on the server's rewards, held-out evaluation, every trajectory accounted for."""
    key = secrets.token_hex(8)
    monkeypatch.setenv("LABRL_E2E_AVIARY_KEY", key)  # the env workers (local Ray) inherit it
    if ray.is_initialized():
        ray.shutdown()
    with lab_server(size=80, api_key=key) as server:
        cfg = load_config(None, TINY + [
            "env.name=aviary_http", f"env.options.url={server.url}", "env.options.api_key_env=LABRL_E2E_AVIARY_KEY",
            "env.options.reference_policy=examples.aviary_lab.env:reference_policy",
            f"logging.runs_root={tmp_path}", "run_name=aviary", "logging.wandb_mode=disabled"])
        summary = train(cfg)
    rows = [json.loads(line) for line in next(tmp_path.iterdir()).joinpath("metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "rollout/reward_mean" in r]
    assert [r["policy_version"] for r in steps] == [1.0, 2.0]
    for r in steps:
        assert r["rollout/num_trajectories"] > 0 and "train/loss" in r and r["sync/version"] == r["policy_version"]
        assert not any(k.startswith("rollout/reason/env_error") for k in r)  # every episode reached the server
        dropped = sum(v for k, v in r.items() if k.startswith("accounting/dropped/"))
        assert r["accounting/produced"] == r["accounting/trained"] + dropped + r["accounting/buffered"]
    assert summary["eval_sft/pass@1"] >= 0.0 and "eval_grpo/pass@1" in summary
