"""One training run, phase by phase: set-up, behaviour cloning, GRPO, final evaluation, clean-up.

A run owns its directory (metrics, samples, checkpoints, weights) and its actors. It can be
stopped between any two steps (SIGTERM from a scheduler, Ctrl-C, a health alarm): the trainer state
is checkpointed, W&B is finished and the actors are stopped; `labrl train --resume RUN_DIR` then
continues from the `RunState` it saved (same step counter, policy version and task order).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from actors.core_board import remove_board
from actors.gc_heap import freeze_startup_heap
from cluster.placement import build_placement
from cluster.ray_cluster import check_resources, connect, ephemeral_run_dir_warning
from configs.schema import LabrlConfig
from launch import components as C
from launch.curriculum import profile_start_policy, training_stream
from launch.elastic import EVENTS_FILE, ElasticController
from launch.fleet import EngineFleet, FleetPublisher, TrainerStep
from launch.preflight import novice_fraction, preflight
from launch.recovery import CheckpointRecovery
from launch.run_state import (CHECKPOINT_DIR, CONFIG_FILE, RunState, checkpoint_tag, committed_run_state,
                              remove_checkpoint, rewind_run_files, save_run_state, stale_checkpoints,
                              write_atomic)
from envs.dataset import Task, round_robin_by_difficulty
from models.loading import load_tokenizer
from monitor.evaluation import HeldoutCurve, summarize
from monitor.health import HealthMonitor, HealthStop
from monitor.plots import plot_capacity, plot_reward_success, plot_run_overview
from monitor.profiling import TaskProfile, read_profiles
from monitor.rollout_metrics import mean_interval
from monitor.run_logger import RunLogger, log_to_file
from monitor.samples import SampleRecorder
from monitor.step_monitor import StepMonitor
from rollout.pipeline import GRPOPipeline, StepObserver, StepReport
from rollout.play import run_tasks

logger = logging.getLogger("labrl")
BATCHES_FILE = "batches.jsonl"
PROFILE_FILE = "start_profile.jsonl"


def make_run_dir(cfg: LabrlConfig) -> Path:
    run_dir = Path(cfg.logging.runs_root) / f"{cfg.run_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


class TrainingRun:
    """Phases of a run; `execute()` runs them all (or the remaining ones, when resuming).

    `observers` are called after every GRPO step, after the run's own (metrics and health,
    progress, batch audit, periodic checkpoints): extra monitoring, or fault injection in tests.
    """

    def __init__(self, cfg: LabrlConfig, run_dir: Path | None = None, resume: RunState | None = None):
        self.cfg, self.resume = cfg, resume
        self.spec = preflight(cfg)  # a bad config fails here, before Ray starts
        self.run_dir = run_dir or make_run_dir(cfg)
        self.summary: dict[str, float] = dict(resume.summary) if resume else {}
        self.pool = self.trainer = self.run_log = self.placement = self.fleet = None
        self.trainer_step = self.publisher = self.curve = self.profiles = None
        self.version = resume.policy_version if resume else 0
        self.observers: list[StepObserver] = []

    # ---- phases -------------------------------------------------------------------------------
    def execute(self) -> dict[str, float]:
        handler = log_to_file(self.run_dir / "train.log")
        try:
            return self._phases()
        except BaseException as err:
            # Failed or stopped: release actors and placement for whoever is next. On a stop signal
            # engines still building are not waited for (a scheduler kills what outlives its grace).
            self.close(engine_stop_timeout_s=10.0 if isinstance(err, KeyboardInterrupt) else 60.0)
            raise
        finally:  # a process that goes on (a notebook, a test) must not keep writing this run's log
            logging.getLogger().removeHandler(handler)
            handler.close()

    def _phases(self) -> dict[str, float]:
        cfg = self.cfg
        if warning := ephemeral_run_dir_warning(self.run_dir, "runs_root" in cfg.logging.model_fields_set):
            logger.warning("%s", warning)
        write_atomic(self.run_dir / CONFIG_FILE, json.dumps(cfg.model_dump(), indent=2))
        policy_dir = self.resume.policy_dir if self.resume else C.prepare_model(cfg, self.run_dir)
        self.dataset = C.make_dataset(cfg, self.spec)
        self.heldout = round_robin_by_difficulty(self.dataset.tasks("heldout"))[: cfg.eval.num_tasks]
        if self.resume:  # rows a killed run wrote after its checkpoint describe steps that run again
            rewind_run_files(self.run_dir, self.version)
        connect(cfg.cluster.address, C.cpus_requested(cfg), cfg.cluster.num_cpus,
                timeout_s=cfg.cluster.connect_timeout_s)
        check_resources({"CPU": C.cpus_requested(cfg), "GPU": C.gpus_requested(cfg)})
        self.run_log = RunLogger.for_run(self.run_dir, cfg, f"{cfg.run_name}-{self.run_dir.name}")
        self.pool = C.make_env_pool(cfg, policy_dir)
        self.pool.wait_ready()
        if cfg.sft.enabled and not self.resume:
            policy_dir = self.behaviour_cloning(policy_dir)
        self.policy_dir = policy_dir
        self.start_policy(policy_dir)
        self.profiles = self.start_profile()
        self.curve = self.heldout_curve()
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
        """Held-out evaluation; per-task rates go to eval_<label>_tasks.json (for the paired test).
        Its episodes of the curve's tasks are also the held-out curve's point for this version."""
        cfg, k = self.cfg, self.cfg.eval.samples_per_task
        trajs = run_tasks(self.pool, self.heldout, k, desc=f"eval_{label}", progress=cfg.logging.progress_bar)
        metrics, per_task = summarize(trajs, f"eval_{label}", k)
        self.summary.update(metrics)
        rows = [{"task_id": t.id, "success_rate": r.pass_at_1} for t, r in zip(self.heldout, per_task)]
        write_atomic(self.run_dir / f"eval_{label}_tasks.json", json.dumps(rows))
        if self.curve:
            self.curve.log_point(trajs, max(0, self.version - 1), self.version)

    def improvement(self) -> dict[str, float]:
        """GRPO minus SFT held-out success, with the 95% interval of the paired per-task differences."""
        before, after = (json.loads((self.run_dir / f"eval_{label}_tasks.json").read_text())
                         for label in ("sft", "grpo"))
        diff, half = mean_interval([a["success_rate"] - b["success_rate"] for a, b in zip(after, before)])
        return {"grpo/improvement": diff, "grpo/improvement_ci95": half}

    def behaviour_cloning(self, policy_dir: str) -> str:
        """Scripted-solver demonstrations through the env workers, then SFT; returns the new policy."""
        cfg = self.cfg
        levels = set(cfg.sft.difficulties or cfg.env.difficulties)
        tasks = [t for t in self.training_tasks() if t.difficulty in levels][: cfg.sft.num_demos]
        usable, stats = C.demonstrations(self.pool, tasks, round(novice_fraction(cfg, self.spec) * len(tasks)),
                                         cfg.logging.progress_bar)
        self.summary.update(stats)
        out_dir = self.run_dir / "sft_model"
        self.summary.update(C.run_sft(cfg, policy_dir, out_dir, C.demonstration_samples(usable),
                                      pad_token_id=load_tokenizer(policy_dir).pad_token_id))
        logger.info("SFT: %d steps on %d demonstrations, final loss %.4f (numerics: %s)", cfg.sft.steps,
                    len(usable), self.summary["sft/final_loss"], cfg.sft.numerics)
        return str(out_dir)

    def start_policy(self, policy_dir: str) -> None:
        """Generation workers and trainer on `policy_dir`; on resume, restore and push the weights."""
        # Engines and trainer ranks share one placement: the shm sync needs them on one node.
        self.placement = build_placement(self.cfg, ("generation", "trainer"))
        self.fleet = EngineFleet(self.cfg, policy_dir, self.placement)
        self.trainer = C.make_trainer(self.cfg, policy_dir, placement=self.placement)
        self.fleet.wait_ready()
        self.trainer_step = TrainerStep(self.cfg, self.trainer, self.fleet)
        self.publisher = FleetPublisher(self.cfg, self.trainer, self.fleet, self.pool)
        if self.resume:
            self.trainer.load_checkpoint(str(self.run_dir / CHECKPOINT_DIR), self.resume.trainer_tag)
            self.publisher.sync(self.version)
        self.pool.set_router(self.fleet.router())

    def training_tasks(self) -> list[Task]:
        """Training tasks with the difficulties interleaved: demonstrations and the start-policy
        profile take prefixes of this list, and a curriculum keeps unprofiled tasks in its order."""
        return round_robin_by_difficulty(self.dataset.tasks("train"))

    def start_profile(self) -> list[TaskProfile] | None:
        """`env.profile_train_tasks`: the start policy's reward profile, for the task filter and the
        curriculum (a resumed run reads the one its first attempt wrote)."""
        env, path = self.cfg.env, self.run_dir / PROFILE_FILE
        if not env.profile_train_tasks:
            return None
        if self.resume and path.exists():
            return read_profiles(path)
        return profile_start_policy(self.pool, self.training_tasks()[: env.profile_train_tasks],
                                    env.profile_samples, path, self.run_log, self.cfg.logging.progress_bar)

    def grpo(self) -> None:
        cfg = self.cfg
        freeze_startup_heap("driver")
        monitor = StepMonitor(self.run_log, HealthMonitor(cfg.monitor),
                              SampleRecorder(cfg.logging.sample_every, cfg.logging.num_samples))
        with _ProgressBar(cfg, self.version) as progress:
            pipeline = GRPOPipeline(cfg.grpo, cfg.rollout.max_staleness, self.pool,
                                    training_stream(self.training_tasks(), cfg, self.profiles),
                                    trainer=self.trainer_step, publisher=self.publisher,
                                    observers=[_RunBookkeeping(self), self.elastic(), monitor, progress,
                                               *([self.curve] if self.curve else []), *self.observers],
                                    start_version=self.version, recovery=CheckpointRecovery(self))
            pipeline.run()

    def heldout_curve(self) -> HeldoutCurve | None:
        """`eval.every_steps`: the held-out curve (its end points are the evaluations after SFT and GRPO)."""
        ev = self.cfg.eval
        if not ev.every_steps or self.version >= self.cfg.grpo.num_steps:
            return None
        return HeldoutCurve(self.pool, self.heldout[: ev.curve_tasks], ev.every_steps, self.cfg.grpo.num_steps, ev.samples_per_task,
                            self.run_log, progress=self.cfg.logging.progress_bar)

    def elastic(self) -> ElasticController:
        """Capacity changes between steps (`labrl scale-run`, `rollout.autoscale`)."""
        return ElasticController(self.run_dir, self.cfg.rollout, self.fleet, self.pool)

    # ---- state --------------------------------------------------------------------------------
    def checkpoint(self) -> float:
        """Trainer state first, then the driver state that names it (atomically: the commit), then
        the checkpoints beyond `checkpoint.keep_last` go; returns the seconds it took."""
        t0 = time.perf_counter()
        ckpt_dir, tag = self.run_dir / CHECKPOINT_DIR, checkpoint_tag(self.version)
        committed = committed_run_state(self.run_dir)
        # One trainer state per version: if this version is committed already, its folder is it.
        if committed is None or committed.trainer_tag != tag:
            remove_checkpoint(ckpt_dir / tag)  # a save of this version cut short by a kill
            self.trainer.save_checkpoint(str(ckpt_dir), tag)
        save_run_state(self.run_dir, RunState(policy_version=self.version, trainer_tag=tag,
                                              policy_dir=self.policy_dir, summary=self.summary))
        for stale in stale_checkpoints(ckpt_dir, tag, self.cfg.checkpoint.keep_last):
            remove_checkpoint(stale)
        seconds = time.perf_counter() - t0
        logger.info("checkpoint %s saved in %.2f s", tag, seconds)
        return seconds

    def finish(self) -> None:
        self.trainer.export_hf(str(self.run_dir / "final_model"))
        self.run_log.log(self.summary, step=self.cfg.grpo.num_steps)
        plot_reward_success(self.run_dir, self.summary)
        if self.curve:  # per-difficulty held-out curves, entropy, truncation, mismatch
            plot_run_overview(self.run_dir)
        if (self.run_dir / EVENTS_FILE).is_file():  # capacity changed during the run
            plot_capacity(self.run_dir)
        write_atomic(self.run_dir / "summary.json", json.dumps(self.summary, indent=2))
        self.close()
        self.report()

    def close(self, engine_stop_timeout_s: float = 60.0) -> None:
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
        if self.fleet is not None:
            self.fleet.stop(engine_stop_timeout_s)
            self.fleet = None
        if self.placement is not None:
            self.placement.remove()
            self.placement = None
        remove_board()

    def report(self) -> None:
        s = self.summary
        logger.info("held-out success after SFT:  %.3f +- %.3f", s["eval_sft/pass@1"], s["eval_sft/ci95"])
        if "eval_grpo/pass@1" in s:
            logger.info("held-out success after GRPO: %.3f +- %.3f", s["eval_grpo/pass@1"], s["eval_grpo/ci95"])
            logger.info("improvement: %+.3f +- %.3f (95%% interval of the per-task differences)",
                        s["grpo/improvement"], s["grpo/improvement_ci95"])
        logger.info("run directory: %s", self.run_dir)


class _RunBookkeeping:
    """After each step: the served version, the batch audit log, and periodic checkpoints (every
    `checkpoint.every_steps` steps or `every_minutes` minutes; none after the last step, which the
    final export covers). Runs first among the observers, so the save time is in the step's metrics."""

    def __init__(self, run: TrainingRun):
        self.run = run
        self.last_save = time.monotonic()

    def on_step(self, report: StepReport) -> None:
        run = self.run
        run.version = report.trained_version + 1
        # batches.jsonl: which tasks each step trained on, to audit data order across resumes.
        with open(run.run_dir / BATCHES_FILE, "a") as f:
            f.write(json.dumps({"step": report.step, "policy_version": run.version,
                                "task_ids": report.trained_task_ids}) + "\n")
        if self._due(report.step + 1):
            report.metrics["checkpoint/save_s"] = run.checkpoint()
            self.last_save = time.monotonic()

    def _due(self, steps_done: int) -> bool:
        ckpt = self.run.cfg.checkpoint
        if steps_done >= self.run.cfg.grpo.num_steps:
            return False
        by_steps = ckpt.every_steps and steps_done % ckpt.every_steps == 0
        by_time = ckpt.every_minutes and time.monotonic() - self.last_save >= 60 * ckpt.every_minutes
        return bool(by_steps or by_time)


class _ProgressBar:
    """A tqdm bar over the GRPO steps with the batch's reward and success."""

    def __init__(self, cfg: LabrlConfig, start: int):
        from tqdm import tqdm

        self.bar = tqdm(total=cfg.grpo.num_steps, initial=start, desc="grpo",
                        disable=not cfg.logging.progress_bar)

    def on_step(self, report: StepReport) -> None:
        rewards = [t.reward for g in report.drawn for t in g]
        successes = [t.success for g in report.drawn for t in g]
        if rewards:
            self.bar.set_postfix(reward=f"{sum(rewards) / len(rewards):.2f}",
                                 succ=f"{sum(successes) / len(successes):.2f}")
        self.bar.update(1)

    def __enter__(self) -> "_ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
