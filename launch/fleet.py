"""The generation engines of a run, and the two collaborators the GRPO pipeline needs from them
and the trainer: a `StepTrainer` (one optimizer step; colocated engines sleep through it) and a
`WeightPublisher` (dead engines replaced, sleeping ones woken, new engines admitted, new weights
pushed to every one).

Elastic capacity: `EngineFleet.add` starts engines during the run (a retired engine's planned bundle
first, else a reservation of its own with the plan's rules, `cluster.placement.reserve_extra_engine`).
A new engine is built from the run's initial policy, so it joins only at a weight sync: it receives
the version its peers are about to serve before any request reaches it. `retire` takes engines
out of every router at once; each one finishes its in-flight requests (or is stopped after
`DRAIN_TIMEOUT_S`: the routers then re-issue what it held) before it is shut down.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import ray

from actors.calls import wait_all
from actors.router import GenerationRouter
from cluster.placement import ExtraEngine, Placement, reserve_extra_engine
from configs.schema import LabrlConfig
from launch import components as C
from rollout.pool import EnvWorkerPool
from trainers.batching import TrainSample
from trainers.group import PolicyTrainerGroup, TrainerRankLost

logger = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 120.0  # a retired engine's in-flight requests: longer ones are re-issued elsewhere

# Where an engine runs: a bundle of the run's placement plan (its index) or a reservation of its own.
Slot = int | ExtraEngine


@dataclass
class _Joining:
    slot: Slot
    actor: Any
    ready: ray.ObjectRef  # the engine is built
    deadline: float  # for its resources to appear (the build itself is not timed out here)


@dataclass
class _Retiring:
    slot: Slot
    actor: Any
    deadline: float


class EngineFleet:
    """The GenerationWorker actors of a run: started, replaced when dead, put to sleep, added and
    retired during the run, stopped."""

    def __init__(self, cfg: LabrlConfig, policy_dir: str, placement: Placement | None = None):
        self.cfg, self.policy_dir, self.placement = cfg, policy_dir, placement
        self.workers = C.make_generation_workers(cfg, policy_dir, placement=placement)
        self.slots: list[Slot] = list(range(len(self.workers)))  # parallel to `workers`
        self.asleep: list[int] = []  # engines asleep for the trainer step (colocated mode)
        self.joining: list[_Joining] = []
        self.retiring: list[_Retiring] = []
        self.free_slots: list[int] = []  # planned bundles whose engine was retired
        self._next_index = len(self.workers)
        self.replacements = 0  # engines replaced since the run started

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
            self.workers[i] = self._start(self.slots[i])
        self.replacements += len(dead)
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
        for other in self.joining + self.retiring:
            ray.kill(other.actor, no_restart=True)
        for slot in self.slots + [o.slot for o in self.joining + self.retiring]:
            if isinstance(slot, ExtraEngine):
                slot.remove()
        self.workers, self.slots, self.joining, self.retiring = [], [], [], []

    # ---- elastic capacity ----------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Engines serving plus those starting (what the next decisions build on)."""
        return len(self.workers) + len(self.joining)

    def add(self, n: int) -> None:
        """Start `n` engines; they join at the next weight sync (`admit_ready`)."""
        deadline = time.monotonic() + self.cfg.rollout.capacity_timeout_s
        for _ in range(n):
            slot = self.free_slots.pop(0) if self.free_slots else self._reserve()
            actor = self._start(slot)
            self.joining.append(_Joining(slot, actor, actor.ready.remote(), deadline))
            logger.info("starting generation engine gen%d (%d serving, %d starting)", _index(slot),
                        len(self.workers), len(self.joining))

    def _reserve(self) -> ExtraEngine:
        self._next_index += 1
        return reserve_extra_engine(self.cfg, self.placement, self._next_index - 1)

    def _start(self, slot: Slot) -> Any:
        if isinstance(slot, ExtraEngine):
            return C.make_extra_generation_worker(self.cfg, self.policy_dir, slot.index, slot.options)
        return C.make_generation_workers(self.cfg, self.policy_dir, indices=[slot], placement=self.placement)[0]

    def admit_ready(self) -> list[int]:
        """Engines built since the last call join `workers` (they serve their initial weights until
        the caller syncs them); engines whose resources did not appear in time are given up.
        Returns the positions of the new ones in `workers`."""
        if not self.joining:
            return []
        ready, _ = ray.wait([j.ready for j in self.joining], num_returns=len(self.joining), timeout=0)
        admitted, now = [], time.monotonic()
        for j in list(self.joining):
            if j.ready in ready:
                self.joining.remove(j)
                try:
                    ray.get(j.ready)
                except Exception as err:  # noqa: BLE001 - a failed build: the run goes on without it
                    logger.warning("new engine gen%d failed to start (%s); going on with %d", _index(j.slot),
                                   type(err).__name__, len(self.workers))
                    self._release(j.slot, j.actor)
                    continue
                self.workers.append(j.actor)
                self.slots.append(j.slot)
                admitted.append(len(self.workers) - 1)
                logger.info("engine gen%d is built: it serves once synced (%d engines)", _index(j.slot),
                            len(self.workers))
            elif now > j.deadline and not _reserved(j.slot):
                self.joining.remove(j)
                logger.warning("engine gen%d got no resources within rollout.capacity_timeout_s=%g s; going on "
                               "with %d engine(s)", _index(j.slot), self.cfg.rollout.capacity_timeout_s,
                               len(self.workers))
                self._release(j.slot, j.actor)
        return admitted

    def retire(self, n: int) -> int:
        """Take up to `n` engines out of service, the newest first, never the last one; returns how
        many. The caller points the routers at the rest; `reap_retired` stops each once drained."""
        n = max(0, min(n, len(self.workers) - 1))
        for _ in range(n):
            self.retiring.append(_Retiring(self.slots.pop(), self.workers.pop(),
                                           time.monotonic() + DRAIN_TIMEOUT_S))
        return n

    def reap_retired(self) -> int:
        """Stop the retired engines whose in-flight requests finished (or whose drain timed out);
        returns how many are still draining."""
        for r in list(self.retiring):
            try:
                in_flight = ray.get(r.actor.health.remote(), timeout=10)["in_flight"]
            except Exception:  # noqa: BLE001 - dead or wedged: nothing to drain
                in_flight = 0
            if in_flight and time.monotonic() < r.deadline:
                continue
            if in_flight:
                logger.warning("retired engine gen%d still had %d request(s) after %.0f s; stopping it (the "
                               "routers re-issue them)", _index(r.slot), in_flight, DRAIN_TIMEOUT_S)
            try:
                ray.get(r.actor.shutdown.remote(), timeout=30)
            except Exception as err:  # noqa: BLE001 - killed below anyway
                logger.warning("retired engine gen%d: shutdown failed (%s)", _index(r.slot), type(err).__name__)
            self.retiring.remove(r)
            self._release(r.slot, r.actor)
            logger.info("retired engine gen%d stopped (%d serving)", _index(r.slot), len(self.workers))
        return len(self.retiring)

    def _release(self, slot: Slot, actor: Any) -> None:
        ray.kill(actor, no_restart=True)
        if isinstance(slot, ExtraEngine):
            slot.remove()
        else:
            self.free_slots.append(slot)

    def _labelled(self, method: str, *args) -> dict:
        return {f"gen{i}": getattr(w, method).remote(*args) for i, w in enumerate(self.workers)}


def _index(slot: Slot) -> int:
    return slot.index if isinstance(slot, ExtraEngine) else slot


def _reserved(slot: Slot) -> bool:
    """Its resources are held: a planned bundle, or a reservation Ray has placed. A plain resource
    request (a CPU engine with tensor parallelism: no group) is never known to be held, so its
    deadline covers the engine's build too."""
    if not isinstance(slot, ExtraEngine):
        return True
    ref = slot.ready()
    return ref is not None and bool(ray.wait([ref], timeout=0)[0])


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
        self.replacements_reported = 0

    def publish(self, version: int) -> dict[str, float]:
        fleet = self.fleet
        replaced, joined = fleet.replace_dead(), fleet.admit_ready()
        # Sleeping engines load the new weights before their KV cache comes back (and with it,
        # admission): colocated, the trainer's memory is only freed by then.
        sleeping = [i for i in fleet.asleep if i not in replaced]
        fleet.asleep = []
        metrics = fleet.wake(sleeping, ["weights"]) if sleeping else {}
        metrics.update(self.sync(version, replaced, joined))
        if sleeping:
            metrics.update(fleet.wake(sleeping, ["kv_cache"]))
        fleet.reap_retired()
        # Counted by the fleet, not by this call: an engine replaced during a trainer restore (or
        # in a publish the restore cut short) is reported with the next step.
        metrics["fault/generation_workers_replaced"] = float(fleet.replacements - self.replacements_reported)
        self.replacements_reported = fleet.replacements
        return metrics

    def sync(self, version: int, replaced: list[int] | None = None, joined: list[int] | None = None,
             restored: bool = False) -> dict[str, float]:
        """Push the trainer's weights to every engine as `version`; returns `sync/` metrics.

        An engine that dies during the sync is replaced and the sync repeated once, to every engine
        (the survivors may hold half an update); a second failure stops the run with the error.
        Engines replaced here or in `replaced`, and new ones (`joined`), get requests only once they
        serve `version`.
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
        if replaced or joined:
            self.pool.set_router(self.fleet.router())
        metrics = {f"sync/{k}": float(v) for k, v in asdict(stats).items() if isinstance(v, (int, float))}
        metrics["elastic/engines_joined"] = float(len(joined or []))
        return metrics

    def _push(self, version: int, accept_any: bool):
        """`accept_any`: the engines take `version` even if they serve it or a newer one already."""
        workers = self.fleet.workers
        if accept_any:
            wait_all({f"gen{i}": w.accept_version.remote(version) for i, w in enumerate(workers)}, 60.0,
                     f"accept_version(v{version})")
        return self.trainer.sync_weights(workers, version, self.cfg.sync)
