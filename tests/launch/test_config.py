"""Bad configs fail before Ray starts, with the offending field named."""

import json
import logging
from pathlib import Path

import pytest
import ray

from configs.loading import ConfigError, load_config
from configs.schema import LabrlConfig
from launch.preflight import novice_fraction, preflight
from launch.run_state import CONFIG_FILE
from launch.train import main
from models.loading import ModelNotFoundError, resolve_model_path


def test_default_config_loads_and_is_consistent():
    cfg = load_config()
    assert isinstance(cfg, LabrlConfig)
    assert cfg.grpo.batch_size % cfg.grpo.group_size == 0
    assert cfg.model.path is None and cfg.env.num_heldout_tasks >= 200


@pytest.mark.parametrize("name", ["default", "long-cpu", "chat-cpu"])
def test_bundled_cpu_recipes_pass_preflight(name):
    """A bundled CPU recipe loads and its environment, difficulties and solvers check out before Ray."""
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml")
    preflight(cfg)
    assert cfg.model.path is None and cfg.eval.curve_tasks <= cfg.eval.num_tasks <= cfg.env.num_heldout_tasks


def test_heads_vllm_cannot_run_fail_before_ray():
    with pytest.raises(ConfigError, match="heads under 32 dimensions"):
        load_config(None, ["model.hidden_size=64", "model.num_heads=4", "model.num_kv_heads=2"])


def test_dotted_overrides_are_typed():
    cfg = load_config(None, ["trainer.lr=1e-4", "rollout.max_staleness=0", "env.difficulties=[1,2]"])
    assert cfg.trainer.lr == pytest.approx(1e-4)
    assert cfg.rollout.max_staleness == 0
    assert cfg.env.difficulties == [1, 2]


@pytest.mark.parametrize("override, field", [
    ("trainer.lrr=1e-4", "trainer.lrr"),
    ("trainer.zero_stage=7", "trainer.zero_stage"),
    ("grpo.batch_size=many", "grpo.batch_size"),
    ("generation.temperature=-1", "generation.temperature"),
    ("nonsense.key=1", "nonsense"),
])
def test_invalid_field_is_named(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert field in str(err.value)


def test_batch_not_divisible_by_group():
    with pytest.raises(ConfigError, match=r"grpo.batch_size \(60\) must be divisible by grpo.group_size \(8\)"):
        load_config(None, ["grpo.batch_size=60"])


GPU_ROLES = ["generation.gpus_per_worker=1", "trainer.gpus_per_rank=1"]


@pytest.mark.parametrize("overrides, message", [
    (["sync.transport=nccl"], "sync.transport=nccl moves GPU tensors"),
    (["sync.transport=cuda_ipc", *GPU_ROLES], "cuda_ipc .* needs placement.mode=colocated"),
    (["sync.transport=tcp"], "sync.transport"),
    (["sync.transport=shm", "trainer.num_nodes=2", "trainer.num_ranks=2"], "keeps the trainer and engines on one node"),
    (["sync.transport=gloo", *GPU_ROLES], "GPU engines take sync.transport=nccl"),
])
def test_weight_sync_transport_must_fit_the_layout(overrides, message, caplog):
    with pytest.raises(ConfigError, match=message):
        preflight(load_config(None, overrides))
    assert main(overrides) == 2  # the CLI refuses it before Ray starts
    assert not ray.is_initialized()


def test_advantage_estimator_typo_fails_before_ray(caplog):
    assert main(["grpo.advantage_estimator=grp0"]) == 2
    assert not ray.is_initialized()
    assert "grpo.advantage_estimator='grp0' is not registered" in caplog.text and "rloo" in caplog.text


@pytest.mark.parametrize("overrides, message", [
    (["generation.sleep_level=1", "rollout.max_staleness=0"], "sleep_level=1 .* needs placement.mode=colocated"),
    (["generation.sleep_level=2", "placement.mode=colocated", "rollout.max_staleness=1"],
     "set rollout.max_staleness=0"),
    (["generation.sleep_level=3", "placement.mode=colocated", "rollout.max_staleness=0"], "sleep_level"),
])
def test_engine_sleep_needs_colocation_and_a_synchronous_loop(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
    ok = load_config(None, ["generation.sleep_level=2", "placement.mode=colocated", "rollout.max_staleness=0"])
    assert ok.generation.sleep_level == 2


def test_min_new_tokens_within_max_new_tokens():
    with pytest.raises(ConfigError, match=r"generation.min_new_tokens \(33\) must be at most"):
        load_config(None, ["generation.max_new_tokens=32", "generation.min_new_tokens=33"])
    ok = load_config(None, ["generation.max_new_tokens=32", "generation.min_new_tokens=32"])
    assert ok.generation.min_new_tokens == 32


def test_zero0_is_refused_in_bf16_on_gpu():
    """DeepSpeed 0.19.8 stage 0 in bf16 failed at initialize on an H200 (benchmarks/gpu_check.py)."""
    with pytest.raises(ConfigError, match="trainer.zero_stage=0 cannot train in bf16"):
        load_config(None, ["trainer.gpus_per_rank=1", "trainer.zero_stage=0"])
    with pytest.raises(ConfigError, match="trainer.zero_stage=0 cannot train in bf16"):
        load_config(None, ["trainer.dtype=bfloat16", "trainer.zero_stage=0"])
    assert not load_config(None, ["trainer.zero_stage=0"]).trainer.uses_bf16  # CPU, fp32: fine


def test_env_without_a_novice_solver_runs_the_default_config(caplog):
    """The default config asks for novice demonstrations; an env without a novice solver plays all
    of them with the reference solver, after one warning."""
    cfg = load_config(None, ["env.name=hidden_law"])
    assert cfg.sft.novice_fraction > 0
    with caplog.at_level(logging.WARNING):
        spec = preflight(cfg)
    assert novice_fraction(cfg, spec) == 0.0
    warnings = [r for r in caplog.records if "has no novice solver" in r.getMessage()]
    assert len(warnings) == 1 and "hidden_law" in warnings[0].getMessage()
    assert novice_fraction(load_config(), preflight(load_config())) == 0.5  # stoichiometry has one


def test_resume_with_a_bad_override_is_a_one_line_config_error(tmp_path, caplog):
    (tmp_path / CONFIG_FILE).write_text(json.dumps(load_config().model_dump()))
    assert main(["--resume", str(tmp_path), "trainer.lr=bad"]) == 2
    assert not ray.is_initialized()
    assert "invalid config:\n  trainer.lr:" in caplog.text
    assert "Traceback" not in caplog.text and "pydantic" not in caplog.text


def test_knobs_that_were_code_only_are_settable():
    cfg = load_config(None, ["trainer.lr_schedule=cosine", "trainer.min_lr_ratio=0.1", "grpo.dual_clip=3.0",
                             "grpo.kl_estimator=k2", "grpo.is_cap=5", "trainer.share_prefix_tokens=0",
                             "grpo.ppo_epochs=2", "grpo.num_mini_batches=2", "trainer.adam_betas=[0.9, 0.95]"])
    assert (cfg.trainer.lr_schedule, cfg.trainer.min_lr_ratio, cfg.trainer.share_prefix_tokens) == ("cosine", 0.1, 0)
    assert (cfg.grpo.dual_clip, cfg.grpo.kl_estimator, cfg.grpo.is_cap) == (3.0, "k2", 5.0)
    assert cfg.trainer.adam_betas == (0.9, 0.95)
    for bad in ("grpo.dual_clip=1.0", "grpo.kl_estimator=k4", "grpo.clip_low=1.0", "grpo.seq_mask_threshold=0.5"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, [bad])


def test_nccl_sync_lets_the_trainer_span_nodes():
    cfg = load_config(None, ["sync.transport=nccl", *GPU_ROLES, "trainer.num_nodes=2", "trainer.num_ranks=2"])
    assert cfg.sync.transport == "nccl"


def test_malformed_override():
    with pytest.raises(ConfigError, match="section.field=value"):
        load_config(None, ["trainer.lr"])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_rejects_bad_config_before_ray_starts(caplog):
    assert main(["grpo.group_size=7"]) == 2
    assert not ray.is_initialized()
    assert "grpo.batch_size (64) must be divisible by grpo.group_size (7)" in caplog.text


def test_missing_model_path_is_a_clear_error(tmp_path, caplog):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        resolve_model_path(str(missing))
    assert main([f"model.path={missing}"]) == 2
    assert not ray.is_initialized()
    assert "no-such-model" in caplog.text


def test_unknown_environment_fails_before_ray(caplog):
    assert main(["env.name=alchemy"]) == 2
    assert not ray.is_initialized()
    assert "env.name" in caplog.text
    assert "alchemy" in caplog.text


def test_an_agent_program_with_sft_is_refused_before_ray():
    overrides = ["env.name=examples.openai_agent_lab.agent:SPEC"]
    with pytest.raises(ConfigError, match="is an agent program, which has no scripted solver"):
        preflight(load_config(None, overrides))
    assert main(overrides) == 2 and not ray.is_initialized()
    preflight(load_config(None, [*overrides, "sft.enabled=false"]))


@pytest.mark.parametrize("overrides, message", [
    (["rollout.autoscale.min_engines=3", "rollout.autoscale.max_engines=2"], r"min_engines \(3\) > max_engines \(2\)"),
    (["rollout.autoscale.wait_low=0.3"], r"wait_low \(0.3\) must be below wait_high"),
    (["rollout.autoscale.enabled=true", "placement.mode=colocated", "trainer.num_ranks=1"],
     "colocated binds each engine to a trainer rank's GPU"),
])
def test_autoscale_settings_that_cannot_work_fail_before_ray(overrides, message):
    with pytest.raises(ConfigError, match=message):
        preflight(load_config(None, overrides))
    assert main(overrides) == 2
    assert not ray.is_initialized()


def test_oversampling_without_dynamic_sampling_is_refused():
    with pytest.raises(ConfigError, match=r"grpo.oversample_groups \(4\) draws groups.*dynamic_sampling=true"):
        load_config(None, ["grpo.dynamic_sampling=false", "grpo.oversample_groups=4"])
    assert load_config(None, ["grpo.oversample_groups=4"]).grpo.oversample_groups == 4
