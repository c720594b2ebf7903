"""Placement groups per role, built from the config: where generation engines and trainer ranks
run, reserved all-or-nothing before any of them starts. (Env workers are light CPU actors the
pool places itself: `rollout.cpus_per_env_worker`, pinned by `rollout.env_worker_resource`.)

Why placement groups: without them Ray places actors one at a time, so a half-fitting run starts
some engines and then waits forever for the rest, and a trainer's ranks may land on four nodes
when one would do (slow collectives). A placement group reserves a role's bundles atomically, and
`build_placement` checks the request against the live nodes first (`check_resources`), so an
impossible layout fails with a message naming the role and the fields to change.

Layout (`placement.mode`):

- disaggregated (default): engines and trainer ranks hold separate bundles.
  * engine, tensor_parallel_size 1: bundle {CPU, GPU: gpus_per_worker}; the actor takes both.
  * engine, tensor_parallel_size N > 1 (GPU): N one-GPU bundles on one node. The engine actor takes
    only CPU in the first: vLLM, finding itself inside a placement group, uses its Ray executor and
    puts one worker on each of its GPU bundles (VLLM_RAY_BUNDLE_INDICES names them; vLLM requires
    at most 1 GPU per bundle).
  * trainer: one bundle per rank {CPU, GPU: gpus_per_rank}; STRICT_PACK when trainer.num_nodes is 1
    (node-local collectives, fails fast when no node holds all ranks), else PACK.
  * weight sync over shared memory (sync.transport=shm) or CUDA IPC needs every engine
    on the trainer's node, so trainer bundles (0..R-1) and engine bundles share ONE STRICT_PACK
    group ("policy"). A cross-node transport (nccl, gloo) gets one group per engine plus one for the
    trainer, so engines and trainer may sit on different nodes.
- colocated: one shared group of trainer.num_ranks bundles; rank i and engine i share bundle i
  (a whole GPU is reserved per bundle; the actors take their fractions). Trainer and vLLM then
  compete for GPU memory: with generation.sleep_level 1 or 2 the engines sleep while the trainer
  steps; with 0 both stay resident and `gpu_memory_utilization` must leave the trainer room (see
  configs/qwen2.5-0.5b-1gpu.yaml).

Use (`launch/components.py`):

    placement = build_placement(cfg)
    workers = [GenerationWorker.as_actor(engine_spec, name=f"gen{i}", **placement.generation_options(i))
               for i in range(cfg.generation.num_workers)]
    trainer = PolicyTrainerGroup(spec, placement_group=placement.trainer_pg,
                                 bundle_offset=placement.trainer_bundle_offset)
    ...
    placement.remove()   # at shutdown (also released automatically when the driver exits)
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.weight_sync import TRANSPORTS
from cluster.ray_cluster import ResourceError, check_resources
from cluster.resources import GroupSpec, RoleDemand, fmt
from configs.schema import LabrlConfig

logger = logging.getLogger(__name__)

ROLES = ("generation", "trainer")
# Weight-sync transports that need every engine on the trainer's rank-0 node (shared memory and
# CUDA IPC handles do not cross nodes; the nccl and gloo broadcasts do).
SAME_NODE_TRANSPORTS = tuple(name for name, t in TRANSPORTS.items() if t.one_node or t.colocated)


@dataclass(frozen=True)
class ActorSlot:
    """Where one actor goes: a bundle of a planned group (or `group=None`: no group, plain
    resource request), the resources the actor itself requests out of that bundle, and extra
    environment variables it needs (vLLM's bundle indices for tensor-parallel engines)."""

    group: str | None
    bundle: int
    num_cpus: float
    num_gpus: float = 0.0
    resources: tuple[tuple[str, float], ...] = ()
    env_vars: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PlacementPlan:
    """The whole layout before anything is reserved (pure; tests inspect it without Ray).

    `demands`: per-role requests (totals and bundles are checked per role). `joint`: groups
    shared by several roles, checked only for their single-node constraint.
    """

    mode: str
    groups: dict[str, GroupSpec]
    demands: tuple[RoleDemand, ...]
    joint: tuple[RoleDemand, ...] = ()
    generation: tuple[ActorSlot, ...] = ()
    trainer: tuple[ActorSlot, ...] = ()


@dataclass(frozen=True)
class _Engine:
    """One generation engine's share of a group: its bundles and what its actor takes."""

    bundles: tuple[dict[str, float], ...]
    num_gpus: float
    in_group: bool
    label: str


GEN_FIELDS = "generation.num_workers / cpus_per_worker / gpus_per_worker / tensor_parallel_size"
TRAINER_FIELDS = "trainer.num_ranks / cpus_per_rank / gpus_per_rank / num_nodes"


def _bundle(cpu: float, gpu: float = 0.0, **custom: float) -> dict[str, float]:
    """Ray rejects zero-valued bundle entries; keep only what is asked for."""
    out = {"CPU": cpu, "GPU": gpu, **custom}
    return {k: float(v) for k, v in out.items() if v > 0}


def _trainer_strategy(cfg: LabrlConfig) -> str:
    return "STRICT_PACK" if cfg.trainer.num_nodes == 1 else "PACK"


def _engine(cfg: LabrlConfig, i: int) -> _Engine:
    g = cfg.generation
    if g.tensor_parallel_size > 1 and g.gpus_per_worker > 0:
        # Actor: CPU only, in the first shard bundle; vLLM's Ray workers take one GPU per bundle.
        bundles = (_bundle(g.cpus_per_worker, 1.0),) + tuple(
            _bundle(0, 1.0) for _ in range(g.tensor_parallel_size - 1))
        return _Engine(bundles, 0.0, True, f"engine {i} (tensor_parallel_size={g.tensor_parallel_size})")
    # CPU engines with tensor parallelism use vLLM's multiprocessing executor; inside a placement
    # group vLLM would switch to its Ray executor, which needs a GPU device key. So they get no
    # group (a plain resource request); their demand is still checked.
    in_group = g.tensor_parallel_size == 1
    return _Engine((_bundle(g.cpus_per_worker, g.gpus_per_worker),), g.gpus_per_worker, in_group,
                   f"engine {i}")


def _engine_slot(cfg: LabrlConfig, e: _Engine, key: str, start: int) -> ActorSlot:
    if not e.in_group:
        return ActorSlot(None, 0, cfg.generation.cpus_per_worker, e.num_gpus)
    env: tuple[tuple[str, str], ...] = ()
    if len(e.bundles) > 1:  # which bundles of the group are this engine's shards
        env = (("VLLM_RAY_BUNDLE_INDICES", ",".join(str(start + j) for j in range(len(e.bundles)))),)
    return ActorSlot(key, start, cfg.generation.cpus_per_worker, e.num_gpus, env_vars=env)


def _trainer_spec(cfg: LabrlConfig) -> GroupSpec:
    t = cfg.trainer
    return GroupSpec(f"{t.num_ranks} trainer rank(s)",
                     tuple(_bundle(t.cpus_per_rank, t.gpus_per_rank) for _ in range(t.num_ranks)),
                     _trainer_strategy(cfg))


def _role_demands(cfg: LabrlConfig, engines: list[_Engine], with_trainer: bool) -> list[RoleDemand]:
    g, t = cfg.generation, cfg.trainer
    out = []
    if engines:
        out.append(RoleDemand("generation", tuple(GroupSpec(e.label, e.bundles, "STRICT_PACK" if len(e.bundles) > 1
                                                            else "PACK") for e in engines), GEN_FIELDS,
                              f"{g.num_workers} engine(s) x {fmt(_bundle(g.cpus_per_worker, g.gpus_per_worker))}"))
    if with_trainer:
        out.append(RoleDemand("trainer", (_trainer_spec(cfg),), TRAINER_FIELDS,
                              f"{t.num_ranks} rank(s) x {fmt(_bundle(t.cpus_per_rank, t.gpus_per_rank))}"))
    return out


def _plan_policy_one_node(cfg: LabrlConfig, engines: list[_Engine]) -> tuple[GroupSpec, list[ActorSlot],
                                                                            list[ActorSlot]]:
    """Same-node weight sync (shm): trainer ranks (bundles 0..R-1) and every engine in ONE
    STRICT_PACK group, so the transport's one-node requirement is met or fails before start-up."""
    t = cfg.trainer
    bundles = list(_trainer_spec(cfg).bundles)
    trainer = [ActorSlot("policy", r, t.cpus_per_rank, t.gpus_per_rank) for r in range(t.num_ranks)]
    gen = []
    for e in engines:
        gen.append(_engine_slot(cfg, e, "policy", len(bundles)))
        if e.in_group:
            bundles.extend(e.bundles)
    spec = GroupSpec(f"trainer ranks + engines on one node (sync.transport={cfg.sync.transport})",
                     tuple(bundles), "STRICT_PACK")
    return spec, trainer, gen


def _plan_colocated(cfg: LabrlConfig) -> tuple[GroupSpec, list[ActorSlot], list[ActorSlot], RoleDemand]:
    """Bundle i = rank i + engine i (if any). A whole GPU per bundle: fractional bundles would let
    Ray put two bundles on one GPU; the actors inside take their configured fractions."""
    g, t = cfg.generation, cfg.trainer
    on_gpu = t.gpus_per_rank > 0
    bundles = tuple(_bundle(t.cpus_per_rank + (g.cpus_per_worker if i < g.num_workers else 0.0),
                            1.0 if on_gpu else 0.0) for i in range(t.num_ranks))
    strategy = "STRICT_PACK" if cfg.sync.transport in SAME_NODE_TRANSPORTS else _trainer_strategy(cfg)
    spec = GroupSpec(f"{t.num_ranks} shared trainer+engine bundle(s)", bundles, strategy)
    trainer = [ActorSlot("colocated", r, t.cpus_per_rank, t.gpus_per_rank) for r in range(t.num_ranks)]
    gen = [ActorSlot("colocated", i, g.cpus_per_worker, g.gpus_per_worker) for i in range(g.num_workers)]
    demand = RoleDemand("trainer+generation (colocated)", (spec,), f"{TRAINER_FIELDS}, {GEN_FIELDS}",
                        f"{t.num_ranks} shared bundle(s), {g.num_workers} engine(s)")
    return spec, trainer, gen, demand


def plan_placement(cfg: LabrlConfig, roles: Iterable[str] = ROLES) -> PlacementPlan:
    """The layout for `roles` (a subset of ROLES); nothing is reserved.

    Plan generation and trainer together: with a same-node transport (shm) or colocation they
    share one group, which only a joint plan can express.
    """
    roles = tuple(roles)
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; choose from {ROLES}")
    both = "generation" in roles and "trainer" in roles
    if cfg.placement.mode == "colocated" and ("generation" in roles) != ("trainer" in roles):
        raise ValueError("placement.mode=colocated: plan 'generation' and 'trainer' together (they share bundles)")
    groups: dict[str, GroupSpec] = {}
    demands: list[RoleDemand] = []
    joint: list[RoleDemand] = []
    gen: list[ActorSlot] = []
    trainer: list[ActorSlot] = []
    engines = [_engine(cfg, i) for i in range(cfg.generation.num_workers)] if "generation" in roles else []
    if cfg.placement.mode == "colocated" and both:
        groups["colocated"], trainer, gen, demand = _plan_colocated(cfg)
        demands.append(demand)
    elif both and cfg.sync.transport in SAME_NODE_TRANSPORTS:
        groups["policy"], trainer, gen = _plan_policy_one_node(cfg, engines)
        demands.extend(_role_demands(cfg, engines, with_trainer=True))
        joint.append(RoleDemand("trainer+generation", (groups["policy"],),
                                f"{TRAINER_FIELDS}, {GEN_FIELDS}, sync.transport",
                                f"sync.transport={cfg.sync.transport} needs one node"))
    else:
        for i, e in enumerate(engines):
            key = f"generation/{i}"
            gen.append(_engine_slot(cfg, e, key, 0))
            if e.in_group:
                groups[key] = GroupSpec(e.label, e.bundles, "STRICT_PACK" if len(e.bundles) > 1 else "PACK")
        if "trainer" in roles:
            groups["trainer"] = _trainer_spec(cfg)
            t = cfg.trainer
            trainer = [ActorSlot("trainer", r, t.cpus_per_rank, t.gpus_per_rank) for r in range(t.num_ranks)]
        demands.extend(_role_demands(cfg, engines, with_trainer="trainer" in roles))
    return PlacementPlan(cfg.placement.mode, groups, tuple(demands), tuple(joint), tuple(gen), tuple(trainer))


def check_fit(cfg: LabrlConfig, roles: Iterable[str] = ROLES) -> PlacementPlan:
    """Fail fast (`ResourceError`, per role) when the live cluster can never hold the layout;
    reserves nothing. Returns the plan."""
    plan = plan_placement(cfg, roles)
    check_resources(demands=plan.demands, joint=plan.joint)
    return plan


class Placement:
    """Reserved placement groups plus per-actor `.options()` for each role.

    Every `*_options` dict holds `num_cpus`, `num_gpus` (and `resources` where needed) and the
    `scheduling_strategy`; pass it whole to `.options(**...)` and do not also pass those keys.
    """

    def __init__(self, plan: PlacementPlan, groups: dict[str, PlacementGroup]) -> None:
        self.plan = plan
        self.groups = groups

    @property
    def mode(self) -> str:
        return self.plan.mode

    @property
    def colocated(self) -> bool:
        """True when engines share the trainer's GPUs (vLLM should sleep while the trainer steps)."""
        return self.plan.mode == "colocated"

    def _options(self, slots: tuple[ActorSlot, ...], i: int, role: str) -> dict[str, Any]:
        if not 0 <= i < len(slots):
            raise IndexError(f"{role} {i} is not planned (planned: {len(slots)})")
        slot = slots[i]
        opts: dict[str, Any] = {"num_cpus": slot.num_cpus, "num_gpus": slot.num_gpus}
        if slot.resources:
            opts["resources"] = dict(slot.resources)
        if slot.env_vars:  # merged by Ray with the job's runtime_env env_vars
            opts["runtime_env"] = {"env_vars": dict(slot.env_vars)}
        if slot.group is not None:
            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                self.groups[slot.group], placement_group_bundle_index=slot.bundle,
                placement_group_capture_child_tasks=False)
        return opts

    def generation_options(self, i: int) -> dict[str, Any]:
        """Options for generation engine `i` (`GenerationWorker.as_actor(..., **options)`)."""
        return self._options(self.plan.generation, i, "generation engine")

    def trainer_options(self, rank: int) -> dict[str, Any]:
        """Options for trainer rank `rank`, for callers that create the rank actors themselves."""
        return self._options(self.plan.trainer, rank, "trainer rank")

    @property
    def trainer_pg(self) -> PlacementGroup | None:
        """The group holding the trainer ranks (shared with engines when colocated)."""
        for key in ("colocated", "policy", "trainer"):
            if key in self.groups:
                return self.groups[key]
        return None

    @property
    def trainer_bundle_offset(self) -> int:
        """Rank r uses bundle `trainer_bundle_offset + r` (`PolicyTrainerGroup(bundle_offset=...)`)."""
        return 0

    def bundle_nodes(self) -> dict[str, list[str]]:
        """Node id of each bundle, per group (for logs and tests: did SPREAD/PACK do what we want)."""
        out = {}
        for key, pg in self.groups.items():
            table = ray.util.placement_group_table(pg)
            nodes = table.get("bundles_to_node_id", {})
            out[key] = [nodes.get(i, "") for i in range(len(self.plan.groups[key].bundles))]
        return out

    def remove(self) -> None:
        """Release every reservation (actors inside are killed by Ray)."""
        for pg in self.groups.values():
            try:
                remove_placement_group(pg)
            except Exception as err:  # noqa: BLE001 - best effort at shutdown
                logger.warning("placement group removal failed: %s", err)
        self.groups = {}


@dataclass
class ExtraEngine:
    """Where an engine added during the run goes: its own placement group (None: a plain resource
    request) and the actor options. `ready()` is the group's reservation (pending while the Ray
    autoscaler adds a node); `remove()` releases it when the engine is retired or given up."""

    index: int
    group: PlacementGroup | None
    options: dict[str, Any]
    _ready: ray.ObjectRef | None = field(default=None, repr=False)

    def ready(self) -> ray.ObjectRef | None:
        # One ref for the reservation's life: polled at every weight sync while it is pending.
        if self._ready is None and self.group is not None:
            self._ready = self.group.ready()
        return self._ready

    def remove(self) -> None:
        if self.group is not None:
            remove_placement_group(self.group)
            self.group = None


def reserve_extra_engine(cfg: LabrlConfig, placement: Placement | None, index: int) -> ExtraEngine:
    """Reserve engine `index` beyond the run's plan with the plan's own rules (nothing is waited on):
    the engine's bundle shape; with a same-node transport (shm) the bundle is pinned to the trainer's
    node (its `node:<ip>` resource), otherwise any node with room, including one that joins later."""
    if cfg.placement.mode == "colocated":
        raise ValueError("placement.mode=colocated binds each engine to a trainer rank's GPU bundle: engines "
                         "cannot be added or retired during the run")
    engine = _engine(cfg, index)
    if placement is None or not engine.in_group:
        return ExtraEngine(index, None, {"num_cpus": cfg.generation.cpus_per_worker, "num_gpus": engine.num_gpus})
    bundles = [dict(b) for b in engine.bundles]
    if cfg.sync.transport in SAME_NODE_TRANSPORTS:
        bundles[0][f"node:{_trainer_node_ip(placement)}"] = 0.001
    group = placement_group(bundles, strategy="STRICT_PACK" if len(bundles) > 1 else "PACK",
                            name=f"labrl-extra-engine-{index}-{uuid.uuid4().hex[:6]}")
    slot = _engine_slot(cfg, engine, "extra", 0)
    options: dict[str, Any] = {"num_cpus": slot.num_cpus, "num_gpus": slot.num_gpus,
                               "scheduling_strategy": PlacementGroupSchedulingStrategy(
                                   group, placement_group_bundle_index=0,
                                   placement_group_capture_child_tasks=False)}
    if slot.env_vars:
        options["runtime_env"] = {"env_vars": dict(slot.env_vars)}
    return ExtraEngine(index, group, options)


def _trainer_node_ip(placement: Placement) -> str:
    node_id = ray.util.placement_group_table(placement.trainer_pg)["bundles_to_node_id"][0]
    return next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id)


def build_placement(cfg: LabrlConfig, roles: Iterable[str] = ROLES) -> Placement:
    """Check the request against the live cluster, reserve every group, wait until all are placed.

    Raises `ResourceError` naming the role when the cluster can never hold it (`placement.check_fit`)
    or when reservations are still pending after `placement.ready_timeout_s` (busy cluster or an
    autoscaler that did not deliver); nothing stays reserved after a failure.
    """
    plan = check_fit(cfg, roles) if cfg.placement.check_fit else plan_placement(cfg, roles)
    tag = uuid.uuid4().hex[:6]
    created: dict[str, PlacementGroup] = {}
    try:
        for key, spec in plan.groups.items():
            created[key] = placement_group(list(spec.bundles), strategy=spec.strategy,
                                           name=f"labrl-{key.replace('/', '-')}-{tag}")
        _wait_ready(plan, created, cfg.placement.ready_timeout_s)
    except BaseException:
        for pg in created.values():
            remove_placement_group(pg)
        raise
    placement = Placement(plan, created)
    logger.info("placement (%s): %s", plan.mode,
                "; ".join(f"{d.role}: {d.description}" for d in plan.demands))
    return placement


def _wait_ready(plan: PlacementPlan, groups: dict[str, PlacementGroup], timeout_s: float) -> None:
    refs = {groups[key].ready(): key for key in groups}
    start = time.monotonic()
    ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    if pending:
        waiting = sorted(refs[r] for r in pending)
        lines = [f"{key}: {plan.groups[key].label}, {plan.groups[key].strategy} "
                 f"{fmt(plan.groups[key].total())}" for key in waiting]
        available = {k: v for k, v in ray.available_resources().items()
                     if not k.startswith("node:") and "_group_" not in k and k not in ("memory", "object_store_memory")}
        raise ResourceError(f"placement groups not reserved after {time.monotonic() - start:.0f}s "
                            f"(placement.ready_timeout_s={timeout_s:g}):\n  - " + "\n  - ".join(lines)
                            + f"\ncluster resources still free: {fmt(available)}; other jobs may hold them")
    ray.get(ready)
