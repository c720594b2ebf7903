"""Run the benchmark suite and write results/summary.md (machine, date, every table).

    python -m benchmarks.run_all                 # small sizes (what `make bench` runs)
    python -m benchmarks.run_all --full          # the larger sizes of each benchmark (long)
    python -m benchmarks.run_all --only generation env_workers
    python -m benchmarks.run_all --with-existing # also benchmarks/trainer.py and weight_sync.py, small

Each benchmark runs in its own process (Ray clusters and vLLM engines never outlive it); its stdout
(table + JSON line) goes to results/logs/<name>.out, its log to results/logs/<name>.log, its result to
results/<name>.json. A benchmark that fails or times out is reported in the summary; the others
still run. Exit status: 0 when all succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field

from benchmarks.common import REPO_ROOT, RESULTS_DIR, git_commit, machine_info, setup_logging

logger = logging.getLogger("benchmarks.run_all")
LOG_DIR = RESULTS_DIR / "logs"


@dataclass(frozen=True)
class Bench:
    name: str
    module: str
    small: tuple[str, ...] = ()
    full: tuple[str, ...] = ("--full",)
    writes_json: bool = True  # False: parse the JSON line from stdout (the two older benchmarks)
    description: str = ""


SUITE = (
    Bench("env_workers", "benchmarks.env_workers", (),
          description="episodes/s vs number of EnvWorkers (reference policy), 64 workers on fake resources"),
    Bench("generation", "benchmarks.generation", (), description="vLLM (CPU) vs HF generate, tokens/s"),
    Bench("async_vs_sync", "benchmarks.async_vs_sync", ("--steps", "3"),
          description="GRPO wall clock and held-out success, max_staleness 0 / 1 / 2"),
    Bench("trl_compare", "benchmarks.trl_compare", ("--sizes", "30M", "--steps", "6", "--labrl-dense"),
          description="end-to-end GRPO throughput, labrl vs TRL GRPOTrainer"),
    Bench("trainer_profile", "benchmarks.trainer_profile", (), (),
          description="one trainer step at 30M by operator group (GEMM, attention, element-wise, optimizer)"),
    Bench("decode_gemm", "benchmarks.decode_gemm", (), ("--sizes", "tiny", "30M", "100M", "--rows", "1", "64", "128"),
          description="one decoder layer's GEMMs at decode batch sizes: plain F.linear vs packed (oneDNN, MKL)"),
    Bench("env_server_load", "benchmarks.env_server_load", ("--levels", "2000"), ("--levels", "2000,8000,16000"),
          description="one env HTTP server, concurrent episodes: p50/p99 latency, leaked sessions, RSS"),
    Bench("env_adapters", "benchmarks.env_adapters", ("--episodes", "128", "--rounds", "2"), (),
          description="episodes/s through the NeMo Gym, Aviary and MCP adapters, 1 and 2 env workers"),
    Bench("openai_endpoint", "benchmarks.openai_endpoint", (), ("--requests", "256", "--episodes", "64"),
          description="OpenAI-compatible endpoint: ms per request vs the router; forks on the bundled envs"),
    Bench("autoscale", "benchmarks.autoscale", (),
          description="rollout.autoscale decisions: tool latency adds env workers, slow generation adds engines"),
    Bench("learning_regression", "benchmarks.learning_regression", (), (),
          description="the default run's held-out gain against the last recorded one (benchmarks/results/)"),
)
EXISTING = (
    Bench("trainer", "benchmarks.trainer", ("--stages", "0", "1", "--ranks", "1", "--hidden", "256", "--layers", "4"),
          (), writes_json=False, description="trainer tokens/s vs ZeRO stage (other engineers' benchmark)"),
    Bench("weight_sync", "benchmarks.weight_sync", ("--sizes", "10M", "--repeats", "2", "--transports",
                                                    "shm,shm_inplace,gloo"), (),
          description="trainer -> vLLM weight sync (shm, shm_inplace, gloo) vs memcpy floor"),
)


@dataclass
class Outcome:
    bench: Bench
    ok: bool
    seconds: float
    table: str = ""
    error: str = ""
    result: dict = field(default_factory=dict)
    earlier: bool = False  # not run now: the result files of an earlier run


def earlier_outcome(bench: Bench) -> Outcome | None:
    """The result files an earlier run left for `bench`, so the summary covers the whole suite."""
    json_path, txt_path = RESULTS_DIR / f"{bench.name}.json", RESULTS_DIR / f"{bench.name}.txt"
    if not json_path.is_file():
        return None
    result = json.loads(json_path.read_text())
    table = txt_path.read_text() if txt_path.is_file() else ""
    return Outcome(bench, True, float("nan"), table, result=result, earlier=True)


def _json_line(stdout: str) -> dict | None:
    for line in reversed(stdout.splitlines()):
        text = line.removeprefix("JSON ").strip()
        if text.startswith("{"):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                continue
    return None


def _result_and_table(bench: Bench, stdout: str, started: float) -> tuple[dict | None, str]:
    """This run's result and table: the files the benchmark wrote, else parsed from its stdout."""
    json_path, txt_path = RESULTS_DIR / f"{bench.name}.json", RESULTS_DIR / f"{bench.name}.txt"
    if bench.writes_json and json_path.is_file() and json_path.stat().st_mtime >= started:
        table = txt_path.read_text() if txt_path.is_file() else ""
        return json.loads(json_path.read_text()), table
    table = "\n".join(line for line in stdout.splitlines() if not line.removeprefix("JSON ").lstrip().startswith("{"))
    return _json_line(stdout), table


def run_one(bench: Bench, full: bool, timeout_s: float) -> Outcome:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", bench.module, *(bench.full if full else bench.small)]
    logger.info("%s: %s", bench.name, " ".join(cmd[1:]))
    start = time.perf_counter()
    with open(LOG_DIR / f"{bench.name}.log", "w") as log:
        try:
            proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired as err:
            out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
            (LOG_DIR / f"{bench.name}.out").write_text(out)
            return Outcome(bench, False, time.perf_counter() - start, error=f"timed out after {timeout_s:.0f}s")
    seconds = time.perf_counter() - start
    (LOG_DIR / f"{bench.name}.out").write_text(proc.stdout)
    result, table = _result_and_table(bench, proc.stdout, started=time.time() - seconds)
    if proc.returncode != 0 or result is None:
        tail = (LOG_DIR / f"{bench.name}.log").read_text()[-1500:]
        return Outcome(bench, False, seconds, table, f"exit {proc.returncode}; log tail:\n{tail}")
    if not bench.writes_json:
        (RESULTS_DIR / f"{bench.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    logger.info("%s: done in %.0f s", bench.name, seconds)
    return Outcome(bench, True, seconds, table, result=result)


def summary_markdown(outcomes: list[Outcome], before: dict, after: dict, full: bool) -> str:
    lines = ["# labrl benchmark summary", "",
             f"- date: {before['date']} (finished {after['date']})",
             f"- machine: {before['nproc']} CPUs ({before['cpu_model']}), {before['mem_total_gib']} GiB memory",
             f"- load average (1/5/15 min) at start: {before['loadavg_1_5_15']}, at end: {after['loadavg_1_5_15']}",
             f"- commit: {git_commit()}; mode: {'full' if full else 'small (default)'}; python {before['python']}",
             "",
             "The machine is shared and its load drifts: compare numbers only within one benchmark's table "
             "(each measures its alternatives side by side, alternating order), never across runs.", ""]
    for o in outcomes:
        if o.earlier:
            status = f"earlier run, {o.result.get('machine', {}).get('date', 'date unknown')}"
        else:
            status = f"{'ok' if o.ok else 'FAILED'}, {o.seconds:.0f} s"
        lines += [f"## {o.bench.name} ({status})", "", o.bench.description, "",
                  f"Result: `results/{o.bench.name}.json`; output: `results/logs/{o.bench.name}.out`, "
                  f"log: `results/logs/{o.bench.name}.log`.", ""]
        if o.table.strip():
            lines += ["```", o.table.rstrip(), "```", ""]
        if o.error:
            lines += ["Error:", "", "```", o.error.rstrip(), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    names = [b.name for b in SUITE + EXISTING]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="larger sizes (each benchmark's --full)")
    p.add_argument("--only", nargs="+", choices=names, help="run only these")
    p.add_argument("--with-existing", action="store_true", help="also run benchmarks/trainer.py and weight_sync.py")
    p.add_argument("--timeout-s", type=float, default=3600.0, help="per benchmark")
    args = p.parse_args(argv)
    setup_logging()
    suite = SUITE + (EXISTING if args.with_existing or args.only else ())
    if args.only:
        suite = tuple(b for b in suite if b.name in args.only)
    before = machine_info()
    ran = {b.name: run_one(b, args.full, args.timeout_s) for b in suite}
    # The summary covers the whole suite: benchmarks not run now show their latest result files.
    outcomes = [ran[b.name] if b.name in ran else earlier_outcome(b) for b in SUITE + EXISTING]
    outcomes = [o for o in outcomes if o is not None]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / "summary.md"
    path.write_text(summary_markdown(outcomes, before, machine_info(), args.full))
    logger.info("summary: %s (%d/%d run now ok)", path, sum(r.ok for r in ran.values()), len(ran))
    return 0 if all(r.ok for r in ran.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
