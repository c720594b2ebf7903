"""Episodes/s through each adapter to another framework's server, with 1 and 2 env workers.

    python -m benchmarks.env_adapters                       # nemo_gym, aviary_http, mcp; 1 and 2 workers
    python -m benchmarks.env_adapters --adapters nemo_gym --episodes 256 --rounds 3

Each adapter plays its example lab through its framework's real server, started here: the
molar-mass lab on NeMo Gym (examples/nemo_gym_lab, NeMo Gym's own Python), the dilution lab on
Aviary's TaskDatasetServer (examples/aviary_lab) and the MCP lab (examples/mcp_lab). The policy is
each lab's reference solver (no vLLM): the numbers are the ceiling of the environment side (HTTP
round trips, the server's tool calls and verifier, labrl's agent loop), measured the way
`benchmarks.env_workers` measures the bundled environments. The benchmark fails if an adapter
played no episode or its reference solver did not succeed (a broken adapter measures nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import ray

from benchmarks.common import emit, setup_logging, start_local_ray
from benchmarks.env_workers import SCALING_COLUMNS, scaling
from monitor.text_table import format_table

logger = logging.getLogger("benchmarks.env_adapters")
AVIARY_KEY_ENV = "LABRL_BENCH_AVIARY_KEY"


@contextlib.contextmanager
def nemo_gym_lab(tmp: Path) -> Iterator[dict[str, Any]]:
    from envs.adapters.nemo_gym.process import nemo_gym_server
    from examples.nemo_gym_lab.tasks import write_rows

    tasks = tmp / "nemo_gym_lab.jsonl"
    write_rows(tasks, rows=400)
    with nemo_gym_server("examples.nemo_gym_lab.app:MolarMassLab") as server:
        yield {"url": server.url, "tasks": str(tasks),
               "reference": "examples.nemo_gym_lab.tasks:reference_policy"}


@contextlib.contextmanager
def aviary_lab(tmp: Path) -> Iterator[dict[str, Any]]:
    from examples.aviary_lab.env import lab_server

    with lab_server(size=400, api_key=os.environ[AVIARY_KEY_ENV]) as server:
        yield {"url": server.url, "api_key_env": AVIARY_KEY_ENV,
               "reference_policy": "examples.aviary_lab.env:reference_policy"}


@contextlib.contextmanager
def mcp_lab(tmp: Path) -> Iterator[dict[str, Any]]:
    from examples.mcp_lab.server import lab_server

    with lab_server() as server:
        yield {"url": f"{server.url}/mcp", "tasks": "examples.mcp_lab.spectro:TASKS"}


ADAPTERS: dict[str, Callable[[Path], Any]] = {"nemo_gym": nemo_gym_lab, "aviary_http": aviary_lab,
                                              "mcp": mcp_lab}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adapters", nargs="+", choices=sorted(ADAPTERS), default=sorted(ADAPTERS))
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--episodes", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3, help="passes over the worker counts (order alternates)")
    p.add_argument("--timeout-s", type=float, default=900.0)
    args = p.parse_args(argv)
    setup_logging()
    from models.tiny import TinyModelSpec, save_tiny_model

    rows: list[dict[str, Any]] = []
    os.environ.setdefault(AVIARY_KEY_ENV, secrets.token_hex(8))  # before Ray starts: its workers inherit it
    start_local_ray(max(2, len(args.workers) + 1))
    try:
        with tempfile.TemporaryDirectory(prefix="labrl_bench_adapters_") as tmp:
            model_dir = str(save_tiny_model(Path(tmp) / "tok", TinyModelSpec(
                hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1)))
            for name in args.adapters:
                with ADAPTERS[name](Path(tmp)) as options:
                    env_rows, _ = scaling(name, model_dir, args.workers, args.rounds, args.episodes,
                                          args.timeout_s, options)
                rows += env_rows
    finally:
        ray.shutdown()
    emit("env_adapters", {"config": vars(args), "scaling": rows}, format_table(rows, SCALING_COLUMNS))
    broken = [f"{r['env']} x{r['workers']}" for r in rows
              if r["episodes"] == 0 or r["success_rate"] < 0.99 or r["errors"]]
    if broken:
        raise SystemExit(f"measured nothing useful for {broken}: no episodes, errors, or the reference "
                         "solver failed")
    return {"scaling": rows}


if __name__ == "__main__":
    main()
