"""`python -m launch.train [--config FILE] [section.field=value ...]`: the labrl training run.

Also the Ray job entrypoint (`ray job submit --working-dir . -- python -m launch.train ...`).
Flow: validate config (before Ray starts) -> policy (tiny or `model.path`) -> behaviour cloning on
reference demonstrations -> held-out eval -> GRPO with async rollouts and per-step weight sync ->
held-out eval -> final HF weights, metrics.jsonl, curves and summary.json in the run directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import ray

from actors.router import GenerationRouter
from cluster.ray_cluster import check_resources, connect
from envs.registry import UnknownEnvironmentError, get_env_spec
from launch import components as C
from launch.config import ConfigError, LabrlConfig, load_config
from launch.curriculum import training_stream
from models.loading import ModelNotFoundError, load_tokenizer, resolve_model_path
from monitor.health import HealthMonitor, HealthStop
from monitor.plots import plot_reward_success
from monitor.run_logger import RunLogger
from monitor.samples import SampleRecorder, TappedPool
from monitor.step_monitor import StepMonitor
from rollout.evaluation import evaluate, run_tasks
from rollout.pipeline import GRPOPipeline, PipelineSettings
from trainers.sft import SFTSettings, train_sft

logger = logging.getLogger("labrl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="labrl train", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="YAML config (default: configs/default.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.lr=1e-4")
    return p.parse_args(argv)


def make_run_dir(cfg: LabrlConfig) -> Path:
    run_dir = Path(cfg.logging.runs_root) / f"{cfg.run_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=False)
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return run_dir


def behaviour_cloning(cfg: LabrlConfig, pool, dataset, model_dir: str, run_dir: Path) -> tuple[str, dict]:
    """Reference-solver demonstrations through the env workers, then SFT. Returns the new policy dir."""
    train_tasks = dataset.tasks("train")[: cfg.sft.num_demos]
    demos = run_tasks(pool, train_tasks, reference=True, desc="demos", progress=cfg.logging.progress_bar)
    usable = [t for t in demos if t.success]
    logger.info("%d/%d reference demonstrations succeeded", len(usable), len(demos))
    pad_id = load_tokenizer(model_dir).pad_token_id
    settings = SFTSettings(steps=cfg.sft.steps, batch_size=cfg.sft.batch_size, lr=cfg.sft.lr,
                           seed=cfg.seed, progress_bar=cfg.logging.progress_bar)
    out_dir = run_dir / "sft_model"
    metrics = train_sft(model_dir, out_dir, usable, settings, pad_id)
    return str(out_dir), metrics


def train(cfg: LabrlConfig) -> dict[str, float]:
    spec = get_env_spec(cfg.env.name)  # an unknown environment fails before Ray starts
    if cfg.model.path is not None:
        resolve_model_path(cfg.model.path)  # so does a missing model
    run_dir = make_run_dir(cfg)
    model_dir = C.prepare_model(cfg, run_dir)
    dataset = spec.make_dataset(cfg.env.num_train_tasks, max(cfg.env.num_heldout_tasks, cfg.eval.num_tasks),
                                cfg.env.difficulties, cfg.seed)
    connect(cfg.cluster.address, C.cpus_requested(cfg), cfg.cluster.num_cpus)
    check_resources({"CPU": C.cpus_requested(cfg), "GPU": C.gpus_requested(cfg)})
    run_log = RunLogger(run_dir, cfg.model_dump(), cfg.logging.wandb_project, cfg.logging.wandb_mode,
                        f"{cfg.run_name}-{run_dir.name}", group=cfg.logging.group)
    summary: dict[str, float] = {}
    pool = C.make_env_pool(cfg, model_dir, router=None)
    pool.wait_ready()
    if cfg.sft.enabled:
        model_dir, sft_metrics = behaviour_cloning(cfg, pool, dataset, model_dir, run_dir)
        summary.update(sft_metrics)
    gen_workers = C.make_generation_workers(cfg, model_dir)
    trainer = C.make_trainer(cfg, model_dir)
    C.wait_ready(gen_workers, "generation workers", timeout_s=600)
    pool.set_router(GenerationRouter(gen_workers))
    heldout = dataset.tasks("heldout")[: cfg.eval.num_tasks]
    summary.update(evaluate(pool, heldout, "sft", progress=cfg.logging.progress_bar))
    run_log.log({k: v for k, v in summary.items()}, step=0)

    recorder = SampleRecorder(cfg.logging.sample_every, cfg.logging.num_samples)
    pipeline = GRPOPipeline(
        PipelineSettings(num_steps=cfg.grpo.num_steps, batch_size=cfg.grpo.batch_size,
                         group_size=cfg.grpo.group_size, max_staleness=cfg.rollout.max_staleness,
                         advantage_estimator=cfg.grpo.advantage_estimator),
        TappedPool(pool, recorder), training_stream(dataset.tasks("train"), cfg),
        train_fn=lambda samples: trainer.train_step(samples, C.loss_config(cfg)),
        sync_fn=lambda version: C.sync_weights(trainer, gen_workers, version, cfg),
        log_fn=StepMonitor(run_log, HealthMonitor(cfg.monitor), recorder))
    try:
        _run_with_progress(pipeline, cfg)
        summary.update(evaluate(pool, heldout, "grpo", progress=cfg.logging.progress_bar))
        summary["grpo/improvement"] = summary["eval_grpo/pass@1"] - summary["eval_sft/pass@1"]
    except HealthStop as stop:  # unhealthy run: keep its weights and metrics, skip the final eval
        logger.error("health alarm stopped the run: %s", stop)
        summary.update({"health/stopped": 1.0, "health/stopped_at_step": float(stop.alarms[0].step)})
        trainer.save_checkpoint(str(run_dir / "checkpoint"))
    final_dir = run_dir / "final_model"
    trainer.export_hf(str(final_dir))
    run_log.log(summary, step=cfg.grpo.num_steps)
    plot_reward_success(run_dir, summary)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    run_log.finish()
    trainer.shutdown()
    pool.shutdown()
    _report(summary, run_dir)
    return summary


def _run_with_progress(pipeline: GRPOPipeline, cfg: LabrlConfig) -> None:
    from tqdm import tqdm

    with tqdm(total=cfg.grpo.num_steps, desc="grpo", disable=not cfg.logging.progress_bar) as bar:
        def on_step(step: int, m: dict[str, float]) -> None:
            bar.set_postfix(reward=f"{m.get('rollout/reward_mean', 0):.2f}",
                            succ=f"{m.get('rollout/success_rate', 0):.2f}")
            bar.update(1)
        pipeline.run(on_step)


def _report(summary: dict[str, float], run_dir: Path) -> None:
    logger.info("held-out success after SFT:  %.3f +- %.3f", summary["eval_sft/pass@1"], summary["eval_sft/ci95"])
    if "eval_grpo/pass@1" in summary:
        logger.info("held-out success after GRPO: %.3f +- %.3f", summary["eval_grpo/pass@1"], summary["eval_grpo/ci95"])
    logger.info("run directory: %s", run_dir)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        logger.error("%s", err)
        return 2
    try:
        summary = train(cfg)
    except (ModelNotFoundError, UnknownEnvironmentError) as err:
        logger.error("%s", err)
        return 2
    finally:
        if ray.is_initialized():
            ray.shutdown()
    return 3 if summary.get("health/stopped") else 0  # 3: stopped cleanly by a health alarm


if __name__ == "__main__":
    raise SystemExit(main())
