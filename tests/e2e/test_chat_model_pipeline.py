"""The whole pipeline on a model-kit chat model given as `model.path` (issue 21): nothing in it is
special-cased for the character-level tiny policy.

One kit directory (test preset: byte-level BPE tokenizer, Hermes-style tool template, random Qwen2
weights) is built for the module, as `labrl build-model` builds it, and used like any Hugging Face
checkpoint a user points `model.path` at. On one Ray cluster:

* a short training run (the run `launch.train.train` executes: SFT warm start on reference demos,
  two asynchronous GRPO steps with a weight sync after each, held-out evaluations after SFT and GRPO)
  whose trainer, after its last optimizer step, scores a multi-turn tool-calling chat rendered with
  the kit's template;
* the run's exported `final_model/`, reloaded by transformers (AutoTokenizer + AutoModelForCausalLM)
  and by a fresh vLLM engine, gives that trainer's logprobs (and neither the initial nor the SFT
  weights do);
* `labrl eval` and `labrl profile` sample the export, and `labrl report` renders the run directory.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
import torch

from cluster.ray_cluster import connect
from configs.loading import load_config
from envs.registry import get_env_spec
from launch import components as C
from launch.cli import main as labrl
from launch.fleet import EngineFleet
from launch.model_kit import build_chat_policy
from launch.run import TrainingRun
from models.chat_kit import CHAT_KIT_MARKER
from models.chat_template import render_chat
from models.loading import load_tokenizer
from monitor.run_logger import read_jsonl
from rollout.pipeline import StepReport

NUM_STEPS = 2
HELDOUT = 4
# Tiny numbers for a 2-core CPU. The kit template's system turn (three tool schemas) is ~280 BPE
# tokens; a reference episode is 4 turns (two masses, calc, submit), ~430 tokens, its longest turn
# ~35 (scripted turns are cut at max_new_tokens too); 4 random turns of 48 fit in 768 positions.
RUN = ["sft.num_demos=16", "sft.steps=10", "sft.batch_size=8", "sft.novice_fraction=0",
       f"grpo.num_steps={NUM_STEPS}", "grpo.batch_size=8", "grpo.group_size=4", "rollout.max_staleness=1",
       "env.num_train_tasks=32", f"env.num_heldout_tasks={HELDOUT}", f"eval.num_tasks={HELDOUT}",
       "eval.samples_per_task=2", "env.max_turns=4", "generation.max_new_tokens=48",
       "generation.max_model_len=768", "logging.wandb_mode=disabled", "logging.progress_bar=false",
       "logging.sample_every=1",
       # An untrained policy earns reward 0 everywhere: the entropy bonus keeps the optimizer steps
       # real (the weights must move), and dynamic sampling must not drop the all-zero groups.
       "grpo.entropy_coef=0.01", "grpo.dynamic_sampling=false",
       # vLLM's prompt logprobs are the raw model's (temperature 1): the trainer scores at the same.
       "generation.temperature=1.0"]
STOICH = get_env_spec("stoichiometry")


def _chat() -> tuple[list[dict], list[dict]]:
    """A multi-turn tool-calling conversation, ending on an assistant turn: system, user, two calls
    answered by tool results, a final call."""
    task = STOICH.make_dataset(4, 1, [1], 0).tasks("train")[0]
    tools = [t.schema for t in STOICH.make_env(task).tools]
    call = lambda name, args: {"type": "function", "function": {"name": name, "arguments": args}}  # noqa: E731
    messages = [{"role": "system", "content": "You are a careful chemist."},
                {"role": "user", "content": "Molar mass of Na2S in g/mol?"},
                {"role": "assistant", "content": "", "tool_calls": [call("mass", {"el": "Na"})]},
                {"role": "tool", "content": "22.99"},
                {"role": "assistant", "content": "Now sulfur.", "tool_calls": [call("mass", {"el": "S"})]},
                {"role": "tool", "content": "32.06"},
                {"role": "assistant", "content": "", "tool_calls": [call("submit", {"answer": 78.04})]}]
    return messages, tools


def _probe_ids(model_dir: str) -> list[int]:
    """The conversation rendered by the directory's own chat template (transformers), as ids."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    messages, tools = _chat()
    text = tok.apply_chat_template(messages, tools=tools, tokenize=False)
    assert text == render_chat(messages, tools)  # the saved template is the kit's
    return tok.encode(text, add_special_tokens=False)


def _hf_logprobs(model_dir: str, ids: list[int]) -> list[float]:
    """Logprob of each token given its prefix, by transformers' own model (first token: 0.0)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    return [0.0] + lp.tolist()


def _max_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a[1:], b[1:]))


@pytest.fixture(scope="module")
def kit_dir(tmp_path_factory) -> str:
    return build_chat_policy(tmp_path_factory.mktemp("kit") / "model", "test", vocab_size=2000, seed=0)


@pytest.fixture(scope="module")
def overrides(kit_dir, tmp_path_factory) -> list[str]:
    return RUN + [f"model.path={kit_dir}", f"logging.runs_root={tmp_path_factory.mktemp('runs')}", "run_name=kit"]


@pytest.fixture(scope="module")
def cluster(overrides):
    if ray.is_initialized():  # a Ray left by another test module: size our own
        ray.shutdown()
    cfg = load_config(None, overrides)
    # The run's roles, and a spare CPU for the exported-weights engine beside them.
    connect(None, C.cpus_requested(cfg) + 1)
    yield
    ray.shutdown()


class _TrainerLogprobs:
    """After the last GRPO step (no optimizer step follows it), the run's own trainer scores `ids`."""

    def __init__(self, run: TrainingRun, ids: list[int]):
        self.run, self.ids, self.logprobs, self.versions = run, ids, None, []

    def on_step(self, report: StepReport) -> None:
        self.versions.append(report.trained_version + 1)
        if report.step == self.run.cfg.grpo.num_steps - 1:
            self.logprobs = self.run.trainer.compute_logprobs([self.ids])[0]


@dataclass
class Run:
    dir: Path
    summary: dict[str, float]
    probe: list[int]
    trainer_logprobs: list[float]
    versions: list[int]


@pytest.fixture(scope="module")
def run(overrides, kit_dir, cluster) -> Run:
    """`launch.train.train(cfg)` is `TrainingRun(cfg).execute()`; the run is built here only to add
    an observer (a run's documented hook for extra monitoring) that reads the trainer's logprobs."""
    cfg = load_config(None, overrides)
    probe = _probe_ids(kit_dir)
    training = TrainingRun(cfg)
    scorer = _TrainerLogprobs(training, probe)
    training.observers.append(scorer)
    summary = training.execute()
    return Run(training.run_dir, summary, probe, scorer.logprobs, scorer.versions)


def test_training_run_on_a_kit_model_given_as_model_path(run, kit_dir):
    """SFT, then two asynchronous GRPO steps, each synced to the engine, then the held-out eval."""
    config = json.loads((run.dir / "config.json").read_text())
    assert config["model"]["path"] == kit_dir and not (run.dir / "init_model").exists()
    # SFT trained on all 16 reference demos (a demo cut short by the BPE turn budget would be
    # dropped), and its policy is what GRPO started from.
    assert run.summary["sft/num_demos"] == 16 and math.isfinite(run.summary["sft/final_loss"])
    assert (run.dir / "sft_model" / CHAT_KIT_MARKER).is_file()  # the kit's files travel with the weights
    rows = read_jsonl(run.dir / "metrics.jsonl")
    steps = [r for r in rows if "timing/step_s" in r]
    assert [r["policy_version"] for r in steps] == [1.0, 2.0] and run.versions == [1, 2]
    for r in steps:
        assert r["sync/version"] == r["policy_version"] and r["sync/bytes"] > 0
        assert r["rollout/num_trajectories"] == 8 and r["rollout/staleness_max"] <= 1
        assert math.isfinite(r["train/loss"]) and r["rollout/num_generated_tokens"] > 0
    assert steps[-1]["accounting/trained"] == NUM_STEPS * 8
    assert not any(k.startswith("accounting/dropped/") and v for k, v in steps[-1].items())
    # Both held-out evaluations measured the policy (an all-failed one raises instead).
    for label in ("sft", "grpo"):
        assert run.summary[f"eval_{label}/num_trajectories"] == HELDOUT * 2
        assert 0.0 <= run.summary[f"eval_{label}/pass@1"] <= 1.0
        assert len(json.loads((run.dir / f"eval_{label}_tasks.json").read_text())) == HELDOUT
    assert "grpo/improvement" in run.summary
    assert json.loads((run.dir / "summary.json").read_text())["eval_grpo/pass@1"] == run.summary["eval_grpo/pass@1"]
    # Sample trajectories of every step were recorded (the report shows them).
    samples = read_jsonl(run.dir / "samples.jsonl")
    assert {s["step"] for s in samples} == {0, 1} and all("Molar mass of" in s["prompt"] for s in samples)


def test_exported_model_reloads_with_the_trainers_logprobs(run, kit_dir, overrides):
    """transformers and a fresh vLLM engine, each loading `final_model/` from disk, give the logprobs
    the run's trainer gave after its last step; the initial and the SFT weights do not."""
    export = str(run.dir / "final_model")
    # The export carries the kit's tokenizer and template: the same ids for the same conversation.
    assert _probe_ids(export) == run.probe and (Path(export) / CHAT_KIT_MARKER).is_file()
    tok = load_tokenizer(export)  # what the run's env workers load: AutoTokenizer for a kit directory
    assert len(tok) > 1000 and tok.eos_token == "<|im_end|>"  # byte-level BPE, not characters
    text = tok.decode(run.probe)
    assert text.count('<tool_call>{"name": "') == 3 and "<tool_response>32.06</tool_response>" in text
    assert text.count('{"name": "mass", "description"') == 1  # the tools block, in the system turn

    trainer = run.trainer_logprobs
    assert trainer is not None and len(trainer) == len(run.probe)
    hf = _hf_logprobs(export, run.probe)
    assert _max_diff(hf, trainer) <= 1e-3

    cfg = load_config(None, overrides)
    fresh = EngineFleet(cfg, export)
    try:
        fresh.wait_ready("engine on the exported weights")
        served = ray.get(fresh.workers[0].prompt_logprobs.remote(run.probe))
    finally:
        fresh.stop()
    assert _max_diff(served, trainer) <= 1e-3 and _max_diff(served, hf) <= 1e-3

    # The comparisons can fail: the weights the run started from, and those GRPO started from, differ.
    init, sft = _hf_logprobs(kit_dir, run.probe), _hf_logprobs(str(run.dir / "sft_model"), run.probe)
    assert _max_diff(init, trainer) > 1e-2 and _max_diff(sft, trainer) > 1e-2  # measured: 1.7 and 0.3
    assert sum(sft) > sum(init)  # the SFT warm start made a tool-calling conversation more likely


def test_eval_profile_and_report_commands_on_the_run(run, overrides, tmp_path):
    export = str(run.dir / "final_model")
    heldout_ids = [t["task_id"] for t in json.loads((run.dir / "eval_grpo_tasks.json").read_text())]

    # labrl eval --checkpoint RUN/final_model: the run's held-out tasks, k samples each.
    out = tmp_path / "eval"
    assert labrl(["eval", "--checkpoint", export, "-k", "2", "--out", str(out), *overrides]) == 0
    metrics = json.loads((out / "eval_summary.json").read_text())
    assert metrics["eval/num_tasks"] == HELDOUT and metrics["eval/num_trajectories"] == HELDOUT * 2
    assert 0.0 <= metrics["eval/pass@1"] <= metrics["eval/pass@2"] <= 1.0
    assert metrics["eval/num_generated_tokens"] > 0
    per_task = read_jsonl(out / "eval.jsonl")
    assert [t["task_id"] for t in per_task] == heldout_ids and all(t["n"] == 2 for t in per_task)
    assert read_jsonl(out / "metrics.jsonl")[0]["eval/pass@1"] == metrics["eval/pass@1"]
    assert json.loads((out / "config.json").read_text())["checkpoint"] == export

    # labrl profile with model.path= the export: per-task reward statistics of training tasks.
    out = tmp_path / "profile"
    assert labrl(["profile", "-k", "3", "--num-tasks", "4", "--out", str(out), *overrides,
                  f"model.path={export}"]) == 0
    profiles = read_jsonl(out / "profile.jsonl")
    assert len(profiles) == 4 and all(p["n"] == 3 and sum(p["reasons"].values()) == 3 for p in profiles)
    assert all(p["task_id"].startswith("stoichiometry/train/") for p in profiles)
    summary = json.loads((out / "profile_summary.json").read_text())["summary"]
    assert 0.0 <= summary["profile/zero_variance_frac"] <= 1.0
    assert (out / "profile_hist.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "config.json").read_text())["checkpoint"] == export

    # labrl report RUN_DIR: curves and one page from the run directory alone.
    assert labrl(["report", str(run.dir)]) == 0
    report = run.dir / "report"
    for name in ("reward", "success", "length", "entropy", "reasons", "timing", "overview"):
        assert (report / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
    page = (report / "report.html").read_text()
    assert "2 training steps logged (last step 1)" in page and "eval_grpo/pass@1" in page
    assert "Molar mass of" in page  # the sampled trajectories
