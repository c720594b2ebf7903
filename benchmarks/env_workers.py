"""Environment-worker throughput versus the number of EnvWorkers, with a policy that answers at once.

    python -m benchmarks.env_workers                         # 512 episodes, 1/2/4/8 workers, 2 envs
    python -m benchmarks.env_workers --workers 1 2 --episodes 128 --scale-workers 0

The policy is each environment's reference solver (`pool.submit(..., solver="reference")`): no vLLM,
so the numbers are the ceiling of the environment side (agent loop, chat rendering, tool calls,
Ray round trips). Every worker count runs over the same tasks; pools for all counts are started
first and the rounds alternate their order (1,2,4,8 then 8,4,2,1, ...) so machine-load drift hits all
counts alike. Reported: episodes/s and env steps/s (median over rounds) and the ratio to 1 worker.

A scale run then starts `--scale-workers` (default 64) EnvWorkers pinned to a fake custom resource
(`bench_env_slot` as `rollout.env_worker_resource`, one unit hosts up to 1000 workers) with 0.01 CPU
each, plays the same episodes and checks the accounting exactly: every submitted group comes back once with all its episodes, none errored, no worker
replaced. On 2 cores the scale run measures robustness, not speed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from monitor.text_table import format_table
from benchmarks.common import emit, median, ratio, setup_logging, start_local_ray

logger = logging.getLogger("benchmarks.env_workers")

SCALE_RESOURCE = "bench_env_slot"
GROUP_SIZE = 8
DEFAULT_USS_GIB = 0.3  # memory guess per worker when no pool was measured first


@dataclass
class RunStats:
    """One pass of a pool over the task list."""

    episodes: int
    env_steps: int
    tool_calls: int
    successes: int
    errors: int
    wall_s: float
    groups_returned: int
    groups_submitted: int
    group_sizes_ok: bool
    per_worker_groups: dict[str, int]

    @property
    def episodes_per_s(self) -> float:
        return ratio(self.episodes, self.wall_s)

    @property
    def steps_per_s(self) -> float:
        return ratio(self.env_steps, self.wall_s)


def bench_config(env_name: str, num_workers: int, options: dict[str, Any] | None = None) -> Any:
    from configs.loading import load_config

    # Long enough episodes and context for the reference solver on every difficulty.
    return load_config(None, [f"env.name={env_name}", f"rollout.num_env_workers={num_workers}",
                              "env.max_turns=12", "generation.max_model_len=2048",
                              "generation.max_new_tokens=128", f"env.options={json.dumps(options or {})}"])


def make_tasks(env_name: str, episodes: int, seed: int = 0, options: dict[str, Any] | None = None) -> list[Any]:
    from envs.registry import get_env_spec

    spec = get_env_spec(env_name, options)
    num_groups = max(1, episodes // GROUP_SIZE)
    dataset = spec.make_dataset(num_groups, 1, spec.difficulties, seed)
    return dataset.tasks("train")[:num_groups]


def play(pool: Any, tasks: list[Any], tag: str, timeout_s: float) -> RunStats:
    """Submit every task as one group of GROUP_SIZE reference episodes; collect all of them."""
    start = time.perf_counter()
    submitted = {f"{tag}-{i}" for i in range(len(tasks))}
    for i, task in enumerate(tasks):
        pool.submit(task, GROUP_SIZE, f"{tag}-{i}", solver="reference")
    returned: Counter[str] = Counter()
    per_worker: Counter[str] = Counter()
    trajs: list[Any] = []
    sizes_ok = True
    deadline = time.monotonic() + timeout_s
    while pool.num_in_flight:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{tag}: {pool.num_in_flight} groups still running after {timeout_s:.0f}s")
        for job, group in pool.collect(timeout_s=1.0, num_returns=1):
            returned[job.group_id] += 1
            per_worker[job.worker_id] += 1
            sizes_ok &= len(group) == job.group_size and all(t.group_id == job.group_id for t in group)
            trajs.extend(group)
    wall = time.perf_counter() - start
    if set(returned) != submitted or any(n != 1 for n in returned.values()):
        raise AssertionError(f"{tag}: groups lost or duplicated: submitted {len(submitted)}, "
                             f"returned {sum(returned.values())} ({len(returned)} distinct)")
    return RunStats(episodes=len(trajs), env_steps=sum(t.num_turns for t in trajs),
                    tool_calls=sum(t.num_tool_calls for t in trajs),
                    successes=sum(t.success for t in trajs),
                    errors=sum(t.finish_reason == "error" for t in trajs), wall_s=wall,
                    groups_returned=sum(returned.values()), groups_submitted=len(submitted),
                    group_sizes_ok=sizes_ok, per_worker_groups=dict(per_worker))


def worker_memory_gib(pool: Any) -> list[tuple[float, float]]:
    """(RSS, USS) of each worker process in GiB, read through the actor's own pid. USS (pages no
    other process shares) is what one more worker really costs; RSS double-counts shared libraries."""
    import psutil

    pids = ray.get([w.__ray_call__.remote(lambda self: os.getpid()) for w in pool.workers])
    out = []
    for pid in pids:
        try:
            info = psutil.Process(pid).memory_full_info()
            out.append((info.rss / 2**30, info.uss / 2**30))
        except psutil.Error:
            out.append((float("nan"), float("nan")))
    return out


def workers_that_fit(wanted: int, uss_gib: float, reserve_gib: float) -> int:
    """How many more workers of `uss_gib` fit in available memory, keeping `reserve_gib` free
    (the machine is shared: never push other people's processes into the OOM killer)."""
    import psutil

    free = psutil.virtual_memory().available / 2**30 - reserve_gib
    return max(0, min(wanted, int(free / max(uss_gib, 0.05))))


def scaling(env_name: str, model_dir: str, counts: list[int], rounds: int, episodes: int,
            timeout_s: float, options: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], float]:
    """Episodes/s per worker count (pools for all counts live at once, rounds alternate order),
    and the median unique memory (USS, GiB) of one worker after the runs. `options` are the
    environment's `env.options` (the adapters' server URLs)."""
    from launch.components import make_env_pool

    tasks = make_tasks(env_name, episodes, options=options)
    pools = {n: make_env_pool(bench_config(env_name, n, options), model_dir, router=None) for n in counts}
    try:
        t0 = time.perf_counter()
        for pool in pools.values():
            pool.wait_ready()
        logger.info("%s: %d pools ready in %.1f s", env_name, len(pools), time.perf_counter() - t0)
        for n, pool in pools.items():  # warm-up: every worker plays one group, untimed
            play(pool, tasks[:n], f"warm{n}", timeout_s)
        runs: dict[int, list[RunStats]] = {n: [] for n in counts}
        for r in range(rounds):
            order = counts if r % 2 == 0 else list(reversed(counts))
            for n in order:
                stats = play(pools[n], tasks, f"{env_name}-r{r}-n{n}", timeout_s)
                logger.info("%s round %d, %d worker(s): %.1f episodes/s, %.1f steps/s (%.1f s)",
                            env_name, r, n, stats.episodes_per_s, stats.steps_per_s, stats.wall_s)
                runs[n].append(stats)
        uss = median([m[1] for pool in pools.values() for m in worker_memory_gib(pool)])
    finally:
        for pool in pools.values():
            pool.shutdown()
    return _scaling_rows(env_name, counts, runs), uss


def _scaling_rows(env_name: str, counts: list[int], runs: dict[int, list[RunStats]]) -> list[dict[str, Any]]:
    base = median([s.episodes_per_s for s in runs[counts[0]]])
    rows = []
    for n in counts:
        eps = median([s.episodes_per_s for s in runs[n]])
        last = runs[n][-1]
        rows.append({"env": env_name, "workers": n, "episodes": last.episodes,
                     "episodes_per_s": eps, "env_steps_per_s": median([s.steps_per_s for s in runs[n]]),
                     "steps_per_episode": ratio(last.env_steps, last.episodes),
                     "speedup_vs_first": ratio(eps, base),
                     "per_round_episodes_per_s": [s.episodes_per_s for s in runs[n]],
                     "success_rate": ratio(last.successes, last.episodes),
                     "errors": sum(s.errors for s in runs[n])})
    return rows


def scale_run(env_name: str, model_dir: str, wanted: int, episodes: int, timeout_s: float,
              uss_per_worker_gib: float, reserve_gib: float) -> dict[str, Any]:
    """`wanted` EnvWorkers on fake resources (fewer if memory cannot hold them); exact accounting."""
    from configs.schema import RolloutConfig
    from rollout.env_worker import EnvWorkerSpec
    from rollout.pool import EnvWorkerPool

    num_workers = workers_that_fit(wanted, uss_per_worker_gib, reserve_gib)
    if num_workers < wanted:
        logger.warning("scale run: only %d of %d workers fit in available memory (%.2f GiB unique "
                       "memory each); running %d", num_workers, wanted, uss_per_worker_gib, num_workers)
    if num_workers == 0:
        return {"env": env_name, "workers": 0, "requested_workers": wanted, "skipped": "not enough memory"}
    cfg = bench_config(env_name, num_workers)
    # Pinned like production env workers: each takes 0.001 of the fake resource main() advertises.
    rollout = RolloutConfig(num_env_workers=num_workers, cpus_per_env_worker=0.01,
                            max_concurrent_episodes=cfg.rollout.max_concurrent_episodes,
                            env_worker_resource=SCALE_RESOURCE)
    t0 = time.perf_counter()
    pool = EnvWorkerPool(EnvWorkerSpec.from_config(cfg, model_dir), rollout)
    try:
        pool.wait_ready(timeout_s=timeout_s)
        startup = time.perf_counter() - t0
        logger.info("scale run: %d env workers ready in %.1f s", num_workers, startup)
        memory = worker_memory_gib(pool)
        # At least two groups per worker, so every worker has to take part.
        episodes = max(episodes, 2 * num_workers * GROUP_SIZE)
        stats = play(pool, make_tasks(env_name, episodes), f"scale{num_workers}", timeout_s)
        replaced, rerun = pool.replaced_workers, pool.rerun_groups
    finally:
        pool.shutdown()
    exact = (stats.groups_returned == stats.groups_submitted and stats.group_sizes_ok
             and stats.episodes == stats.groups_submitted * GROUP_SIZE and stats.errors == 0
             and replaced == 0 and len(stats.per_worker_groups) == num_workers)
    logger.info("scale run: %d episodes in %.1f s, accounting %s", stats.episodes, stats.wall_s,
                "exact" if exact else "BROKEN")
    return {"env": env_name, "workers": num_workers, "requested_workers": wanted, "startup_s": startup,
            "episodes": stats.episodes,
            "episodes_expected": stats.groups_submitted * GROUP_SIZE, "wall_s": stats.wall_s,
            "episodes_per_s": stats.episodes_per_s, "env_steps_per_s": stats.steps_per_s,
            "success_rate": ratio(stats.successes, stats.episodes), "errors": stats.errors,
            "workers_used": len(stats.per_worker_groups), "replaced_workers": replaced,
            "rerun_groups": rerun, "accounting_exact": exact,
            "worker_rss_gib_total": sum(m[0] for m in memory),
            "worker_uss_gib_total": sum(m[1] for m in memory),
            "worker_uss_gib_median": median([m[1] for m in memory])}


SCALING_COLUMNS = [("env", "env", ""), ("workers", "workers", "d"), ("episodes", "episodes", "d"),
                   ("episodes/s", "episodes_per_s", ".1f"), ("env steps/s", "env_steps_per_s", ".1f"),
                   ("steps/ep", "steps_per_episode", ".2f"), ("x vs 1", "speedup_vs_first", ".2f"),
                   ("success", "success_rate", ".2f"), ("errors", "errors", "d")]
SCALE_COLUMNS = [("env", "env", ""), ("workers", "workers", "d"), ("episodes", "episodes", "d"),
                 ("expected", "episodes_expected", "d"), ("episodes/s", "episodes_per_s", ".1f"),
                 ("startup s", "startup_s", ".1f"), ("workers used", "workers_used", "d"),
                 ("replaced", "replaced_workers", "d"), ("exact", lambda r: str(r["accounting_exact"]), ""),
                 ("USS GiB total", "worker_uss_gib_total", ".2f"), ("USS GiB/worker", "worker_uss_gib_median", ".3f")]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", nargs="+", default=["stoichiometry", "hidden_law"])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--episodes", type=int, default=512)
    p.add_argument("--rounds", type=int, default=4, help="passes over the worker counts (order alternates)")
    p.add_argument("--scale-workers", type=int, default=64, help="0 skips the fake-resource scale run")
    p.add_argument("--timeout-s", type=float, default=1800.0)
    p.add_argument("--memory-reserve-gib", type=float, default=3.0,
                   help="the scale run starts only as many workers as leave this much memory available")
    p.add_argument("--full", action="store_true", help="1024 episodes, 6 rounds, 128-worker scale run")
    args = p.parse_args(argv)
    if args.full:
        args.episodes, args.rounds, args.scale_workers = 1024, 6, max(args.scale_workers, 128)
    setup_logging()
    from models.tiny import TinyModelSpec, save_tiny_model

    start_local_ray(max(2, int(sum(args.workers) * 0.25 + 0.999) + 1), {SCALE_RESOURCE: 1.0})
    try:
        with tempfile.TemporaryDirectory(prefix="labrl_bench_env_") as tmp:
            model_dir = str(save_tiny_model(Path(tmp) / "tok", TinyModelSpec(hidden_size=32, intermediate_size=64,
                                                                              num_layers=1, num_heads=2,
                                                                              num_kv_heads=1)))
            rows: list[dict[str, Any]] = []
            uss = DEFAULT_USS_GIB
            for env in args.envs:
                env_rows, uss = scaling(env, model_dir, args.workers, args.rounds, args.episodes, args.timeout_s)
                rows += env_rows
            scale = ([scale_run(args.envs[0], model_dir, args.scale_workers, args.episodes, args.timeout_s, uss,
                                args.memory_reserve_gib)]
                     if args.scale_workers else [])
    finally:
        ray.shutdown()
    table = format_table(rows, SCALING_COLUMNS)
    if scale:
        table += "\n\nscale run on fake resources\n" + format_table(scale, SCALE_COLUMNS)
    emit("env_workers", {"config": vars(args), "group_size": GROUP_SIZE, "scaling": rows, "scale_run": scale},
         table)
    return {"scaling": rows, "scale_run": scale}


if __name__ == "__main__":
    main()
