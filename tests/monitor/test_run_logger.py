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
from monitor.samples import SampleRecorder, TappedPool, trajectory_sample
from monitor.secrets import Scrubber, is_secret_key, redact, secret_values
from monitor.step_monitor import StepMonitor
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
        monitor.recorder.observe(0, [traj(1.0, answer="secret123"), traj(0.0, answer=2)])
        monitor({**healthy_step(0), "train/entropy": 0.0}, 0)
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
    for step in range(3):
        recorder.observe(step, [traj(1.0, task_id=f"t{step}"), traj(0.0, task_id=f"t{step}"), traj(0.5)])
        monitor(healthy_step(step), step)
    monitor({**healthy_step(3), "train/loss": math.nan}, 3)
    with pytest.raises(HealthStop) as stop:
        monitor({**healthy_step(4), "train/loss": math.inf}, 4)
    assert stop.value.alarms[0].check == "nonfinite_loss"
    run_log.finish()
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]  # the stopping step is on disk
    assert rows[4]["health/nonfinite_loss_consecutive"] == 2 and "timing/idle_s" not in rows[0]
    samples = read_jsonl(tmp_path / "samples.jsonl")
    assert [s["step"] for s in samples] == [0, 0, 2, 2]  # best and worst of each sampled batch
    assert [s["reward"] for s in samples] == [1.0, 0.0, 1.0, 0.0]
    assert [a["stop"] for a in read_jsonl(tmp_path / "alarms.jsonl")] == [False, True]


def test_trajectory_sample_columns():
    s = trajectory_sample(traj(1.0, answer=4.2), step=7)
    assert s["step"] == 7 and s["reward"] == 1.0 and s["reason"] == "correct"
    assert "[user] How many grams?" in s["prompt"] and 'submit({"answer": 4.2})' in s["tool_calls"]
    assert "submitted" in s["observations"]


def test_tapped_pool_feeds_recorder_and_forwards():
    class Job:
        def __init__(self, batch_index):
            self.tags = {"batch_index": batch_index} if batch_index is not None else {}

    class Pool:
        jobs = {"x": 1}

        def collect(self, timeout_s, num_returns=1):
            return [(Job(0), [traj(1.0)]), (Job(None), [traj(0.0)]), (Job(1), [traj(0.0)])]

    recorder = SampleRecorder(every=1, num=4)
    tapped = TappedPool(Pool(), recorder)
    assert len(tapped.collect(timeout_s=1.0)) == 3 and tapped.jobs == {"x": 1}
    assert len(recorder.pop(0)) == 1 and len(recorder.pop(1)) == 1 and recorder.pop(2) == []
