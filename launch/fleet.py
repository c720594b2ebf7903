"""The generation engines of a run, and the two collaborators the GRPO pipeline needs from them
and the trainer: a `StepTrainer` (one optimizer step; colocated engines sleep through it) and a
`WeightPublisher` (dead engines replaced, sleeping ones woken, new weights pushed to every one).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

import ray

from actors.calls import wait_all
from actors.router import GenerationRouter
from cluster.placement import Placement
from configs.schema import LabrlConfig
from launch import components as C
from rollout.pool import EnvWorkerPool
from trainers.batching import TrainSample
from trainers.group import PolicyTrainerGroup, TrainerRankLost

logger = logging.getLogger(__name__)


class EngineFleet:
    """The GenerationWorker actors of a run: started, replaced when dead, put to sleep, stopped."""

    def __init__(self, cfg: LabrlConfig, policy_dir: str, placement: Placement | None = None):
        self.cfg, self.policy_dir, self.placement = cfg, policy_dir, placement
        self.workers = C.make_generation_workers(cfg, policy_dir, placement=placement)
        self.asleep: list[int] = []  # engines asleep for the trainer step (colocated mode)

    def wait_ready(self, what: str = "generation workers") -> None:
        wait_all(self._labelled("ready"), self.cfg.placement.ready_timeout_s, f"{what} start-up")

    def router(self) -> GenerationRouter:
        return GenerationRouter(self.workers)

    def replace_dead(self) -> list[int]:
        """Start a fresh engine for every worker that no longer answers or is unhealthy (an update
        aborted half-way left it with mixed weights); returns their indices."""
        dead = [i for i, w in enumerate(self.workers) if not _healthy(w)]
        for i in dead:
            logger.warning("generation worker %d is gone or unhealthy; starting a replacement", i)
            ray.kill(self.workers[i], no_restart=True)  # an unhealthy one still holds its resources
            self.workers[i] = C.make_generation_workers(self.cfg, self.policy_dir, indices=[i],
                                                        placement=self.placement)[0]
        if dead:
            wait_all({f"gen{i}": self.workers[i].ready.remote() for i in dead},
                     self.cfg.placement.ready_timeout_s, "replacement generation worker start-up")
        return dead

    def sleep(self) -> dict[str, float]:
        """Colocated mode, before a trainer step: every engine drains and releases its GPU memory."""
        level, timeout_s = self.cfg.generation.sleep_level, self.cfg.sync.timeout_s
        t0 = time.perf_counter()
        out = wait_all(self._labelled("sleep", level, timeout_s), timeout_s + 30, f"sleep(level={level})")
        self.asleep = list(range(len(self.workers)))
        metrics = {"colocate/sleep_s": time.perf_counter() - t0}
        if all("freed_gb" in o for o in out.values()):  # GPU engines: what the trainer gained
            metrics["colocate/freed_gb"] = sum(o["freed_gb"] for o in out.values())
        return metrics

    def wake(self, indices: list[int], tags: list[str]) -> dict[str, float]:
        """Colocated mode, around the weight sync: wake "weights", sync, then wake "kv_cache"."""
        timeout_s = self.cfg.sync.timeout_s
        t0 = time.perf_counter()
        refs = {f"gen{i}": self.workers[i].wake_up.remote(tags, timeout_s) for i in indices}
        out = wait_all(refs, timeout_s + 30, f"wake_up({tags})")
        return {f"colocate/wake_{'_'.join(tags)}_s": time.perf_counter() - t0,
                "colocate/generation_paused_s": max(o["paused_s"] for o in out.values())}

    def stop(self, timeout_s: float = 60.0) -> None:
        """Shut the vLLM engines down (their worker processes too), then kill the actors."""
        try:
            wait_all(self._labelled("shutdown"), timeout_s, "generation worker shutdown")
        except Exception as err:  # noqa: BLE001 - a dead or hung worker is killed below anyway
            logger.warning("%s", err)
        for w in self.workers:
            ray.kill(w, no_restart=True)
        self.workers = []

    def _labelled(self, method: str, *args) -> dict:
        return {f"gen{i}": getattr(w, method).remote(*args) for i, w in enumerate(self.workers)}


def _healthy(worker, timeout_s: float = 30.0) -> bool:
    """Alive and serving whole weights (`GenerationWorker.health`)."""
    try:
        return bool(ray.get(worker.health.remote(), timeout=timeout_s)["healthy"])
    except Exception:  # noqa: BLE001 - dead, or too wedged to answer: replace it either way
        return False


class TrainerStep:
    """The pipeline's `StepTrainer`: one GRPO optimizer step; colocated engines sleep through it."""

    def __init__(self, cfg: LabrlConfig, trainer: PolicyTrainerGroup, fleet: EngineFleet):
        self.cfg, self.trainer, self.fleet = cfg, trainer, fleet

    def train(self, samples: list[TrainSample]) -> dict[str, float]:
        metrics = self.fleet.sleep() if self.cfg.generation.sleep_level else {}
        metrics.update(self.trainer.train_step(samples, self.cfg.grpo))
        return metrics


class FleetPublisher:
    """The pipeline's `WeightPublisher`: after each step every engine serves the trainer's weights."""

    def __init__(self, cfg: LabrlConfig, trainer: PolicyTrainerGroup, fleet: EngineFleet, pool: EnvWorkerPool):
        self.cfg, self.trainer, self.fleet, self.pool = cfg, trainer, fleet, pool

    def publish(self, version: int) -> dict[str, float]:
        fleet = self.fleet
        replaced = fleet.replace_dead()
        # Sleeping engines load the new weights before their KV cache comes back (and with it,
        # admission): colocated, the trainer's memory is only freed by then.
        sleeping = [i for i in fleet.asleep if i not in replaced]
        fleet.asleep = []
        metrics = fleet.wake(sleeping, ["weights"]) if sleeping else {}
        metrics.update(self.sync(version, replaced))
        if sleeping:
            metrics.update(fleet.wake(sleeping, ["kv_cache"]))
        return metrics

    def sync(self, version: int, replaced: list[int] | None = None, restored: bool = False) -> dict[str, float]:
        """Push the trainer's weights to every engine as `version`; returns `sync/` metrics.

        An engine that dies during the sync is replaced and the sync repeated once, to every engine
        (the survivors may hold half an update); a second failure stops the run with the error.
        Engines replaced here or in `replaced` get requests only once they serve `version`.
        `restored`: the trainer was restored from a checkpoint, so `version` is older than the served one.
        """
        replaced = list(replaced or [])
        try:
            stats = self._push(version, accept_any=restored)
        except TrainerRankLost:
            raise
        except Exception as err:  # noqa: BLE001 - re-raised below unless an engine died
            dead = self.fleet.replace_dead()
            if not dead:
                raise
            logger.warning("generation worker(s) %s died during the v%d weight sync (%s); replaced, syncing "
                           "again", dead, version, err)
            replaced += dead
            stats = self._push(version, accept_any=True)  # survivors may already serve `version`
        if replaced:
            self.pool.set_router(self.fleet.router())
        metrics = {f"sync/{k}": float(v) for k, v in asdict(stats).items() if isinstance(v, (int, float))}
        metrics["fault/generation_workers_replaced"] = float(len(replaced))
        return metrics

    def _push(self, version: int, accept_any: bool):
        """`accept_any`: the engines take `version` even if they serve it or a newer one already."""
        workers = self.fleet.workers
        if accept_any:
            wait_all({f"gen{i}": w.accept_version.remote(version) for i, w in enumerate(workers)}, 60.0,
                     f"accept_version(v{version})")
        return self.trainer.sync_weights(workers, version, self.cfg.sync)
