"""The run logger: W&B offline files in the run dir, samples/alarms files, and no secret anywhere."""

from __future__ import annotations

import json
import logging
import math

import pytest

from configs.schema import MonitorConfig
from configs.loading import load_config
from monitor.health import HealthMonitor, HealthStop
from monitor.run_logger import RunLogger, read_jsonl
from monitor.samples import SampleRecorder, trajectory_sample
from monitor.secrets import Scrubber, is_secret_key, redact, secret_values
from monitor.step_monitor import StepMonitor
from rollout.pipeline import StepReport
from tests.monitor.synthetic import healthy_step, traj

SECRETS = ("secret123", "hunter2-config-value")


def grep_secrets(run_dir) -> list[str]:
    return [str(p) for p in run_dir.rglob("*") if p.is_file()
            and any(s.encode() in p.read_bytes() for s in SECRETS)]


@pytest.mark.parametrize("name, secret", [("api_key", True), ("WANDB_API_KEY", True), ("hf_token", True),
                                          ("apiKey", True), ("password", True), ("client_secret", True),
                                          ("max_new_tokens", False), ("stop_token_ids", False),
                                          ("micro_batch_tokens", False), ("key_path", False)])
def test_secret_key_names(name, secret):
    assert is_secret_key(name) is secret


def test_redact_and_scrub():
    cfg = {"logging": {"api_key": "hunter2-config-value", "max_new_tokens": 96}, "list": [{"token": "abcdefg"}]}
    assert redact(cfg) == {"logging": {"api_key": "<redacted>", "max_new_tokens": 96},
                           "list": [{"token": "<redacted>"}]}
    values = secret_values(cfg, environ={"WANDB_API_KEY": "secret123", "HOME": "/root", "HF_TOKEN": "x"})
    assert values == {"hunter2-config-value", "secret123", "abcdefg"}  # too-short values are not scrubbed
    assert Scrubber(values).text("key=secret123!") == "key=<redacted>!"


def test_wandb_offline_files_and_no_secret_written(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "secret123")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_dir = tmp_path / "run"
    cfg = load_config(None, ["logging.group=ablation-a"]).model_dump()
    cfg["logging"]["api_key"] = "hunter2-config-value"  # a credential a user put into the config
    handler = logging.FileHandler(tmp_path / "train.log")
    logging.getLogger().addHandler(handler)
    try:
        run_log = RunLogger(run_dir, cfg, "labrl-test", "offline", "unit", group="ablation-a")
        logging.getLogger("labrl").warning("connecting with key secret123 and hunter2-config-value")
        monitor = StepMonitor(run_log, HealthMonitor(MonitorConfig()), SampleRecorder(every=1, num=2))
        groups = [[traj(1.0, answer="secret123"), traj(0.0, answer=2)]]
        monitor.on_step(StepReport(0, 0, groups, ["t0"], {**healthy_step(0), "train/entropy": 0.0}))
        run_log.alert("alert with secret123", "text with hunter2-config-value")
        run_log.finish()
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline and list(offline[0].glob("*.wandb")), "W&B offline run files missing"
    assert json.loads((run_dir / "config.json").read_text())["logging"]["api_key"] == "<redacted>"
    assert json.loads((run_dir / "config.json").read_text())["logging"]["group"] == "ablation-a"
    assert (run_dir / "samples.jsonl").is_file() and (run_dir / "alarms.jsonl").is_file()
    assert grep_secrets(run_dir) == []
    assert grep_secrets(tmp_path) == []  # train.log beside it too
    assert "<redacted>" in (tmp_path / "train.log").read_text()


def test_step_monitor_writes_samples_alarms_and_stops_after_logging(tmp_path):
    run_log = RunLogger(tmp_path, {"run_name": "x"}, "p", "disabled", "n")
    recorder = SampleRecorder(every=2, num=3)
    monitor = StepMonitor(run_log, HealthMonitor(MonitorConfig(stop_on=["nonfinite_loss"],
                                                               nonfinite_loss_max_consecutive=2)), recorder)
    def step(k: int, metrics: dict) -> None:
        group = [traj(1.0, task_id=f"t{k}"), traj(0.0, task_id=f"t{k}"), traj(0.5, task_id=f"t{k}")]
        monitor.on_step(StepReport(k, k, [group], [f"t{k}"], metrics))

    for k in range(3):
        step(k, healthy_step(k))
    step(3, {**healthy_step(3), "train/loss": math.nan})
    with pytest.raises(HealthStop) as stop:
        step(4, {**healthy_step(4), "train/loss": math.inf})
    assert stop.value.alarms[0].check == "nonfinite_loss"
    run_log.finish()
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]  # the stopping step is on disk
    assert rows[4]["health/nonfinite_loss_consecutive"] == 2 and "timing/idle_s" not in rows[0]
    samples = read_jsonl(tmp_path / "samples.jsonl")
    # Best and worst of each sampled batch; the stopping step's samples are on disk too.
    assert [s["step"] for s in samples] == [0, 0, 2, 2, 4, 4]
    assert [s["reward"] for s in samples] == [1.0, 0.0] * 3
    assert [a["stop"] for a in read_jsonl(tmp_path / "alarms.jsonl")] == [False, True]


def test_trajectory_sample_columns():
    s = trajectory_sample(traj(1.0, answer=4.2), step=7)
    assert s["step"] == 7 and s["reward"] == 1.0 and s["reason"] == "correct"
    assert "[user] How many grams?" in s["prompt"] and 'submit({"answer": 4.2})' in s["tool_calls"]
    assert "submitted" in s["observations"]


def test_sample_recorder_picks_best_and_worst_of_each_group_on_its_steps():
    recorder = SampleRecorder(every=2, num=3)
    groups = [[traj(0.5, task_id="a"), traj(1.0, task_id="a"), traj(0.0, task_id="a")], [traj(1.0, task_id="b")]]
    assert recorder.pick(1, groups) == []
    picked = recorder.pick(2, groups)
    assert [(t.task_id, t.reward) for t in picked] == [("a", 1.0), ("a", 0.0), ("b", 1.0)]
    assert SampleRecorder(every=0, num=3).pick(0, groups) == []
