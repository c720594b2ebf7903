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
from pathlib import Path

import ray

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


class ResourceError(RuntimeError):
    pass


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
        ray.init(address=address or "auto", runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
        logger.info("joined Ray cluster at %s", address or os.environ.get("RAY_ADDRESS"))


def check_resources(requested: dict[str, float]) -> None:
    """Fail fast when the cluster cannot ever hold what the run asks for."""
    total = ray.cluster_resources()
    missing = {k: (v, total.get(k, 0.0)) for k, v in requested.items() if v > total.get(k, 0.0) + 1e-9}
    if missing:
        parts = ", ".join(f"{k}: need {need:g}, cluster has {have:g}" for k, (need, have) in missing.items())
        raise ResourceError(f"the cluster cannot fit this run ({parts}); lower the counts in the "
                            "generation / trainer / rollout sections or add nodes")
