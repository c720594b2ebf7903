"""One training run, phase by phase: set-up, behaviour cloning, GRPO, final evaluation, clean-up.

A run owns its directory (metrics, samples, checkpoints, weights) and its actors. It can be
stopped between any two steps (SIGTERM from a scheduler, Ctrl-C, a health alarm): the trainer state
is checkpointed, W&B is finished and the actors are stopped; `labrl train --resume RUN_DIR` then
continues with the same step counter, policy version and task order.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from actors.router import GenerationRouter
from cluster.placement import build_placement
from cluster.ray_cluster import check_resources, connect
from envs.registry import get_env_spec
from launch import components as C
from configs.schema import LabrlConfig
from configs.loading import ConfigError
from launch.curriculum import training_stream
from launch.run_state import CHECKPOINT_DIR, CONFIG_FILE, RunState, save_run_state, write_atomic
from models.loading import load_tokenizer, resolve_model_path
from monitor.health import HealthMonitor, HealthStop
from monitor.plots import plot_reward_success
from monitor.rollout_metrics import mean_interval
from monitor.run_logger import RunLogger
from monitor.samples import SampleRecorder, TappedPool
from monitor.step_monitor import StepMonitor
from rollout.evaluation import evaluate, run_tasks
from rollout.pipeline import GRPOPipeline, PipelineSettings
from trainers.sft import SFTSettings, train_sft

logger = logging.getLogger("labrl")
BATCHES_FILE = "batches.jsonl"


def make_run_dir(cfg: LabrlConfig) -> Path:
    run_dir = Path(cfg.logging.runs_root) / f"{cfg.run_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def log_to_file(run_dir: Path) -> None:
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


class TrainingRun:
    """Phases of a run; `execute()` runs them all (or the remaining ones, when resuming)."""

    def __init__(self, cfg: LabrlConfig, run_dir: Path | None = None, resume: RunState | None = None):
        self.cfg, self.resume = cfg, resume
        self.spec = get_env_spec(cfg.env.name)  # an unknown environment fails before Ray starts
        if cfg.sft.enabled and cfg.sft.novice_fraction > 0 and self.spec.novice_policy is None:
            raise ConfigError(f"sft.novice_fraction={cfg.sft.novice_fraction:g}: environment "
                              f"{cfg.env.name!r} has no novice solver")
        if cfg.model.path is not None:
            resolve_model_path(cfg.model.path)  # so does a missing model
        self.run_dir = run_dir or make_run_dir(cfg)
        self.summary: dict[str, float] = dict(resume.summary) if resume else {}
        self.pool = self.trainer = self.run_log = self.placement = None
        self.gen_workers: list = []
        self._sleeping: list[int] = []  # engines asleep for the trainer step (colocated mode)
        self.version = resume.policy_version if resume else 0
        # Called after every GRPO step with (step, metrics): periodic work and fault-injection tests.
        self.step_hooks: list = []

    # ---- phases -------------------------------------------------------------------------------
    def execute(self) -> dict[str, float]:
        try:
            return self._phases()
        except BaseException:
            self.close()  # failed or stopped: release actors and placement for whoever is next
            raise

    def _phases(self) -> dict[str, float]:
        cfg = self.cfg
        log_to_file(self.run_dir)
        write_atomic(self.run_dir / CONFIG_FILE, json.dumps(cfg.model_dump(), indent=2))
        policy_dir = self.resume.policy_dir if self.resume else C.prepare_model(cfg, self.run_dir)
        self.dataset = self.spec.make_dataset(cfg.env.num_train_tasks,
                                              max(cfg.env.num_heldout_tasks, cfg.eval.num_tasks),
                                              cfg.env.difficulties, cfg.seed)
        self.heldout = self.dataset.tasks("heldout")[: cfg.eval.num_tasks]
        connect(cfg.cluster.address, C.cpus_requested(cfg), cfg.cluster.num_cpus)
        check_resources({"CPU": C.cpus_requested(cfg), "GPU": C.gpus_requested(cfg)})
        self.run_log = RunLogger(self.run_dir, cfg.model_dump(), cfg.logging.wandb_project,
                                 cfg.logging.wandb_mode, f"{cfg.run_name}-{self.run_dir.name}",
                                 group=cfg.logging.group)
        self.pool = C.make_env_pool(cfg, policy_dir, router=None)
        self.pool.wait_ready()
        if cfg.sft.enabled and not self.resume:
            policy_dir = self.behaviour_cloning(policy_dir)
        self.policy_dir = policy_dir
        self.start_policy(policy_dir)
        if not self.resume:
            self.evaluate_heldout("sft")
            self.run_log.log(dict(self.summary), step=0)
        try:
            self.grpo()
            self.evaluate_heldout("grpo")
            self.summary.update(self.improvement())
        except HealthStop as stop:  # unhealthy run: keep its state, weights and metrics
            logger.error("health alarm stopped the run: %s", stop)
            self.summary.update({"health/stopped": 1.0, "health/stopped_at_step": float(stop.alarms[0].step)})
            self.checkpoint()
        except KeyboardInterrupt:  # SIGINT / SIGTERM: checkpoint, then let the caller exit
            logger.warning("stop signal: checkpointing at policy v%d before exiting", self.version)
            self.checkpoint()
            raise
        self.finish()
        return self.summary

    def evaluate_heldout(self, label: str) -> None:
        """Held-out evaluation; per-task rates go to eval_<label>_tasks.json (for the paired test)."""
        cfg = self.cfg
        metrics, rates = evaluate(self.pool, self.heldout, label, cfg.eval.samples_per_task,
                                  progress=cfg.logging.progress_bar)
        self.summary.update(metrics)
        rows = [{"task_id": t.id, "success_rate": r} for t, r in zip(self.heldout, rates)]
        write_atomic(self.run_dir / f"eval_{label}_tasks.json", json.dumps(rows))

    def improvement(self) -> dict[str, float]:
        """GRPO minus SFT held-out success, with the 95% interval of the paired per-task differences."""
        before, after = (json.loads((self.run_dir / f"eval_{label}_tasks.json").read_text())
                         for label in ("sft", "grpo"))
        diff, half = mean_interval([a["success_rate"] - b["success_rate"] for a, b in zip(after, before)])
        return {"grpo/improvement": diff, "grpo/improvement_ci95": half}

    def behaviour_cloning(self, policy_dir: str) -> str:
        """Scripted-solver demonstrations through the env workers, then SFT; returns the new policy."""
        cfg = self.cfg
        tasks = self.dataset.tasks("train")[: cfg.sft.num_demos]
        num_novice = round(cfg.sft.novice_fraction * len(tasks))
        progress = cfg.logging.progress_bar
        expert = run_tasks(self.pool, tasks[num_novice:], solver="reference", desc="demos", progress=progress)
        novice = run_tasks(self.pool, tasks[:num_novice], solver="novice", desc="novice demos",
                           progress=progress) if num_novice else []
        # Reference demos that fail are solver bugs, not teaching material; novice ones are the point.
        good_expert = [t for t in expert if t.success]
        kept_novice = [t for t in novice if t.finish_reason == "env_done"]
        usable = good_expert + kept_novice
        logger.info("demonstrations: %d/%d reference succeeded; %d/%d novice submitted, %d of them correct",
                    len(good_expert), len(expert), len(kept_novice), len(novice), sum(t.success for t in novice))
        self.summary.update({"sft/novice_demos": float(len(kept_novice)),
                             "sft/novice_demo_success": sum(t.success for t in novice) / max(1, len(novice))})
        settings = SFTSettings(steps=cfg.sft.steps, batch_size=cfg.sft.batch_size, lr=cfg.sft.lr,
                               seed=cfg.seed, progress_bar=cfg.logging.progress_bar)
        out_dir = self.run_dir / "sft_model"
        self.summary.update(train_sft(policy_dir, out_dir, usable, settings,
                                      load_tokenizer(policy_dir).pad_token_id))
        return str(out_dir)

    def start_policy(self, policy_dir: str) -> None:
        """Generation workers and trainer on `policy_dir`; on resume, restore and push the weights."""
        # Engines and trainer ranks share one placement: the shm sync needs them on one node.
        self.placement = build_placement(self.cfg, ("generation", "trainer"))
        self.gen_workers = C.make_generation_workers(self.cfg, policy_dir, placement=self.placement)
        self.trainer = C.make_trainer(self.cfg, policy_dir, placement=self.placement)
        C.wait_ready(self.gen_workers, "generation workers", timeout_s=self.cfg.placement.ready_timeout_s)
        if self.resume:
            self.trainer.load_checkpoint(str(self.run_dir / CHECKPOINT_DIR), self.resume.trainer_tag)
            C.sync_weights(self.trainer, self.gen_workers, self.version, self.cfg)
        self.pool.set_router(GenerationRouter(self.gen_workers))

    def grpo(self) -> None:
        cfg = self.cfg
        recorder = SampleRecorder(cfg.logging.sample_every, cfg.logging.num_samples)
        pipeline = GRPOPipeline(
            PipelineSettings(num_steps=cfg.grpo.num_steps, batch_size=cfg.grpo.batch_size,
                             group_size=cfg.grpo.group_size, max_staleness=cfg.rollout.max_staleness,
                             advantage_estimator=cfg.grpo.advantage_estimator,
                             dynamic_sampling=cfg.grpo.dynamic_sampling,
                             max_refill_rounds=cfg.grpo.max_refill_rounds),
            TappedPool(self.pool, recorder), training_stream(self.dataset.tasks("train"), cfg),
            train_fn=self._train_step,
            sync_fn=self._sync,
            log_fn=StepMonitor(self.run_log, HealthMonitor(cfg.monitor), recorder),
            start_step=self.version)
        self._run_with_progress(pipeline)

    def _train_step(self, samples: list) -> dict[str, float]:
        """One optimizer step; colocated engines sleep through it (generation.sleep_level)."""
        metrics: dict[str, float] = {}
        level = self.cfg.generation.sleep_level
        if level:
            metrics.update(C.sleep_engines(self.gen_workers, level, self.cfg.sync.timeout_s))
            self._sleeping = list(range(len(self.gen_workers)))
        metrics.update(self.trainer.train_step(samples, C.loss_config(self.cfg)))
        return metrics

    def _sync(self, version: int) -> dict[str, float]:
        replaced = self._replace_dead_generation_workers()
        # Sleeping engines load the new weights before their KV cache comes back (and with it,
        # admission): colocated, the trainer's memory is only freed by then.
        sleeping = [self.gen_workers[i] for i in self._sleeping if i not in replaced]
        self._sleeping = []
        metrics = C.wake_engines(sleeping, ["weights"], self.cfg.sync.timeout_s) if sleeping else {}
        metrics.update(C.sync_weights(self.trainer, self.gen_workers, version, self.cfg))
        if sleeping:
            metrics.update(C.wake_engines(sleeping, ["kv_cache"], self.cfg.sync.timeout_s))
        if replaced:  # route to the new engines only once they serve the current weights
            self.pool.set_router(GenerationRouter(self.gen_workers))
        self.version = version
        metrics["fault/generation_workers_replaced"] = float(len(replaced))
        return metrics

    def _replace_dead_generation_workers(self) -> list[int]:
        """A generation worker that no longer answers is replaced by a fresh engine; returns the
        indices replaced."""
        dead = [i for i, w in enumerate(self.gen_workers) if not C.answers(w)]
        for i in dead:
            logger.warning("generation worker %d is gone; starting a replacement", i)
            self.gen_workers[i] = C.make_generation_workers(self.cfg, self.policy_dir, indices=[i],
                                                            placement=self.placement)[0]
        if dead:
            C.wait_ready([self.gen_workers[i] for i in dead], "replacement generation workers",
                         timeout_s=self.cfg.placement.ready_timeout_s)
        return dead

    def _run_with_progress(self, pipeline: GRPOPipeline) -> None:
        from tqdm import tqdm

        cfg = self.cfg
        with tqdm(total=cfg.grpo.num_steps, initial=pipeline.start_step, desc="grpo",
                  disable=not cfg.logging.progress_bar) as bar:
            def on_step(step: int, m: dict[str, float]) -> None:
                bar.set_postfix(reward=f"{m.get('rollout/reward_mean', 0):.2f}",
                                succ=f"{m.get('rollout/success_rate', 0):.2f}")
                bar.update(1)
                _append_batch_log(self.run_dir, pipeline.trained_batches[-1], self.version)
                every = cfg.checkpoint.every_steps
                if every and (step + 1) % every == 0 and step + 1 < cfg.grpo.num_steps:
                    self.checkpoint()
                for hook in self.step_hooks:
                    hook(step, m)
            pipeline.run(on_step)

    # ---- state --------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        """Trainer state first, then the driver state that names it (atomically)."""
        tag = self.trainer.save_checkpoint(str(self.run_dir / CHECKPOINT_DIR))
        save_run_state(self.run_dir, RunState(next_step=self.version, policy_version=self.version,
                                              trainer_tag=tag, policy_dir=self.policy_dir,
                                              summary=self.summary))

    def finish(self) -> None:
        self.trainer.export_hf(str(self.run_dir / "final_model"))
        self.run_log.log(self.summary, step=self.cfg.grpo.num_steps)
        plot_reward_success(self.run_dir, self.summary)
        write_atomic(self.run_dir / "summary.json", json.dumps(self.summary, indent=2))
        self.close()
        self.report()

    def close(self) -> None:
        """Stop actors and finish W&B; safe to call more than once."""
        if self.run_log is not None:
            self.run_log.finish()
            self.run_log = None
        if self.trainer is not None:
            self.trainer.shutdown()
            self.trainer = None
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
        C.stop_generation_workers(self.gen_workers)
        self.gen_workers = []
        if self.placement is not None:
            self.placement.remove()
            self.placement = None

    def report(self) -> None:
        s = self.summary
        logger.info("held-out success after SFT:  %.3f +- %.3f", s["eval_sft/pass@1"], s["eval_sft/ci95"])
        if "eval_grpo/pass@1" in s:
            logger.info("held-out success after GRPO: %.3f +- %.3f", s["eval_grpo/pass@1"], s["eval_grpo/ci95"])
            logger.info("improvement: %+.3f +- %.3f (95%% interval of the per-task differences)",
                        s["grpo/improvement"], s["grpo/improvement_ci95"])
        logger.info("run directory: %s", self.run_dir)


def _append_batch_log(run_dir: Path, batch: tuple[int, list[str]], version: int) -> None:
    """batches.jsonl: which tasks each step trained on, to audit data order across resumes."""
    step, task_ids = batch
    with open(run_dir / BATCHES_FILE, "a") as f:
        f.write(json.dumps({"step": step, "policy_version": version, "task_ids": task_ids}) + "\n")
