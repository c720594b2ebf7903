"""The real stack end to end: Ray + vLLM (CPU) generation workers + env workers + DeepSpeed trainer.

No mocks: episodes are played by vLLM through env-worker actors, GRPO steps run in DeepSpeed, and
the weights are pushed to every generation worker after every step.
"""

import json

import pytest
import ray

from cluster.ray_cluster import connect
from configs.loading import load_config
from envs.registry import get_env_spec
from launch import components as C
from launch.fleet import EngineFleet, FleetPublisher, TrainerStep
from launch.train import train
from monitor.rollout_metrics import rollout_metrics
from rollout.pipeline import GRPOPipeline, TaskStream
from tests.rollout.pipeline_fakes import Reports

SMALL = ["sft.num_demos=48", "sft.steps=10", "grpo.num_steps=2", "grpo.batch_size=16",
         "grpo.group_size=4", "eval.num_tasks=8", "env.num_train_tasks=64", "env.num_heldout_tasks=8",
         "logging.progress_bar=false", "generation.max_model_len=512", "trainer.zero_stage=1",
         # An untrained policy earns reward 0 everywhere, so group advantages are all zero; the
         # entropy bonus keeps the optimizer steps real (weights must move for the sync checks),
         # and dynamic sampling, which drops zero-variance groups, must not throw them away.
         "grpo.entropy_coef=0.01", "grpo.dynamic_sampling=false",
         # vLLM prompt logprobs are those of the raw model (temperature 1); compare like with like.
         "generation.temperature=1.0"]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return load_config(None, SMALL + [f"logging.runs_root={root}", "run_name=e2e"])


@pytest.fixture(scope="module")
def cluster(cfg):
    if ray.is_initialized():  # a Ray left by another test module: size our own
        ray.shutdown()
    connect(None, C.cpus_requested(cfg) + 1)  # one more engine than the config: the first test runs two
    yield
    ray.shutdown()


def _probe_tokens(cfg, model_dir):
    from models.loading import load_tokenizer

    tok = load_tokenizer(model_dir)
    text = "<|im_start|>user\nMolar mass of NaCl in g/mol?<|im_end|>\n<|im_start|>assistant\n"
    return tok.encode(text, add_special_tokens=False)


def test_grpo_steps_sync_weights_to_generation_workers(cfg, cluster, tmp_path):
    model_dir = C.prepare_model(cfg, tmp_path)
    spec = get_env_spec(cfg.env.name)
    dataset = spec.make_dataset(64, 8, cfg.env.difficulties, 0)
    two_engines = cfg.model_copy(update={"generation": cfg.generation.model_copy(update={"num_workers": 2})})
    fleet = EngineFleet(two_engines, model_dir)
    gen = fleet.workers
    trainer = C.make_trainer(cfg, model_dir)
    fleet.wait_ready()
    pool = C.make_env_pool(cfg, model_dir, fleet.router())
    pool.wait_ready()
    probe = _probe_tokens(cfg, model_dir)
    before = ray.get(gen[0].prompt_logprobs.remote(probe))

    reports = Reports()
    pipeline = GRPOPipeline(cfg.grpo.model_copy(update={"num_steps": 2, "batch_size": 16, "group_size": 4}), 1,
                            pool, TaskStream(dataset.tasks("train"), 0), TrainerStep(two_engines, trainer, fleet),
                            FleetPublisher(two_engines, trainer, fleet, pool), [reports])
    pipeline.run()
    logged = [{**rollout_metrics([t for g in r.drawn for t in g], current_version=r.trained_version), **r.metrics}
              for r in reports.reports]

    assert [ray.get(w.policy_version.remote()) for w in gen] == [2, 2]
    after = [ray.get(w.prompt_logprobs.remote(probe)) for w in gen]
    trainer_lp = trainer.compute_logprobs([probe])[0]
    assert max(abs(a - b) for a, b in zip(before[1:], after[0][1:])) > 1e-4, "served weights did not change"
    for served in after:  # both engines serve the trainer's weights
        assert max(abs(a - b) for a, b in zip(served[1:], trainer_lp[1:])) <= 1e-3
    for m in logged:
        assert m["rollout/num_trajectories"] == 16
        assert m["rollout/staleness_max"] <= 1
        assert m["sync/bytes"] > 0 and "train/loss" in m
    assert logged[-1]["policy_version"] == 2
    acc = pipeline.buffer.accounting
    assert acc.produced == acc.trained == 32 and not acc.dropped
    pool.shutdown()
    fleet.stop()

    # The exported HF checkpoint is the trained policy: a fresh vLLM engine loading it from disk
    # serves the trainer's logprobs (names, shapes and tied weights all survive the export).
    exported = trainer.export_hf(str(tmp_path / "exported"))
    fresh = EngineFleet(cfg, exported)
    fresh.wait_ready("engine on the exported weights")
    served = ray.get(fresh.workers[0].prompt_logprobs.remote(probe))
    assert max(abs(a - b) for a, b in zip(served[1:], trainer_lp[1:])) <= 1e-3
    trainer.shutdown()
    fresh.stop()


def test_colocated_engines_sleep_through_each_trainer_step(cfg, cluster):
    """placement.mode=colocated with generation.sleep_level=1: every step puts the engine to
    sleep before the trainer runs, wakes its weights for the sync, then its KV cache. (On CPU vLLM
    keeps its memory; the protocol and its ordering are what runs here.)"""
    colocated = load_config(None, SMALL + [f"logging.runs_root={cfg.logging.runs_root}/colocated",
                                           "run_name=e2e-colocated", "sft.enabled=false",
                                           "placement.mode=colocated", "generation.sleep_level=1",
                                           "rollout.max_staleness=0"])
    train(colocated)
    run_dir = next(p for p in __import__("pathlib").Path(colocated.logging.runs_root).iterdir())
    steps = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
             if "timing/step_s" in r]
    assert [r["policy_version"] for r in steps] == [1.0, 2.0]
    for r in steps:
        assert "train/loss" in r and r["sync/version"] == r["policy_version"]
        assert r["colocate/sleep_s"] >= 0 and r["colocate/wake_weights_s"] >= 0
        # generation stayed closed from the sleep until the KV cache woke: through the whole step
        assert r["colocate/generation_paused_s"] >= r["train/wall_time_s"]
        assert r["rollout/staleness_max"] == 0
