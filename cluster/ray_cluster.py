"""Connect to Ray: join a running cluster (`ray job submit`, `address: auto`) or start a local one.

A local cluster is sized to what the config asks for, even beyond the physical cores (a laptop
over-subscribes; the actors mostly wait on each other). Before any actor is created the request is
checked against the cluster's resources, so an impossible layout fails at once with a message
instead of actors pending forever.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import ray

from cluster.resources import RoleDemand, fit_problems

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


class ResourceError(RuntimeError):
    """The cluster cannot hold (or did not reserve in time) what the run asks for."""


def connect(address: str | None, num_cpus_needed: float, num_cpus: int | None = None) -> None:
    """Start or join Ray; the repository is put on workers' PYTHONPATH for local clusters."""
    if ray.is_initialized():
        return
    env_vars = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
                "TOKENIZERS_PARALLELISM": "false"}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        cpus = num_cpus or max(os.cpu_count() or 1, math.ceil(num_cpus_needed))
        ray.init(num_cpus=cpus, runtime_env={"env_vars": env_vars}, include_dashboard=False,
                 log_to_driver=True)
        logger.info("started a local Ray cluster with %d CPUs", cpus)
    else:
        try:
            ray.init(address=address or "auto", runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
        except ConnectionError as err:
            raise ResourceError(f"no running Ray cluster at {address or os.environ.get('RAY_ADDRESS')!r} "
                                f"({err}); start one (`ray start --head`) or unset cluster.address "
                                "and RAY_ADDRESS to run on a local cluster") from None
        logger.info("joined Ray cluster at %s", address or os.environ.get("RAY_ADDRESS"))


def alive_node_resources() -> list[dict[str, float]]:
    """Total resources of every live node (what placement groups are reserved from)."""
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def check_resources(requested: Mapping[str, float] | None = None,
                    demands: Sequence[RoleDemand] = (), joint: Sequence[RoleDemand] = ()) -> None:
    """Fail fast when the cluster cannot ever hold what the run asks for.

    `requested`: plain totals (e.g. {"CPU": 6, "GPU": 0}). `demands`: per-role placement requests
    (`cluster.placement.role_demands(cfg)`), checked per role, all together, per single-node group
    and per bundle against the live nodes, so the message names the role and the fields to change.
    `joint`: groups shared by several roles (e.g. trainer + engines on one node), whose
    single-node constraint is checked once the per-role checks pass.
    """
    total = ray.cluster_resources()
    problems: list[str] = []
    for k, v in (requested or {}).items():
        if v > total.get(k, 0.0) + 1e-9:
            problems.append(f"{k}: need {v:g}, cluster has {total.get(k, 0.0):g}")
    if demands:
        problems.extend(fit_problems(demands, alive_node_resources(), joint))
    if problems:
        raise ResourceError("the cluster cannot fit this run:\n  - " + "\n  - ".join(problems)
                            + "\nlower the counts in the generation / trainer / rollout sections or add nodes")
