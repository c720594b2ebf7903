"""`rollout.autoscale` on two short real runs: tool latency should add env workers, slow generation engines.

    python -m benchmarks.autoscale                       # both scenarios, 10 GRPO steps each
    python -m benchmarks.autoscale --only tool_latency --steps 6 --out /tmp/autoscale

Each scenario is ONE training run of the real entrypoint (`python -m launch.train OVERRIDES` in a
subprocess, like `labrl scale`), starting with 1 vLLM engine and 1 env worker, autoscale on with
max_engines=2, max_env_workers=4, window_steps=1, cooldown_steps=1, scale_down=false. No SFT warm-up
(keeps the runs short): the policy is the untrained tiny model, which earns ~0 reward, so
grpo.entropy_coef=0.01 makes every step a real update (`accounting/trained` > 0 is checked).

tool_latency: every env step waits 100-500 ms (asyncio sleep, the worker stays free) and each env
  worker plays at most 8 episodes at once (`rollout.max_concurrent_episodes=8`: per-worker capacity
  binds, as with tools that hold a per-worker resource). The environment is `STEP_LATENCY_SPEC` below,
  not `benchmarks.latency_env:SPEC`: latency_env delays only *tool calls*, and the untrained policy
  never makes a valid one (its turns are random text, answered by an immediate "no tool call" error
  observation), so with latency_env its episodes spend ~0 s in the environment and the policy rightly
  reads them as generation-bound (it would add an engine). Here the same 100-500 ms is paid on every
  env step (reset included; a turn without a runnable call waits once, a real tool call waits as in
  latency_env). Turns are kept short (`generation.max_new_tokens=16`) and a turn cut at that length
  still goes to the environment (`env.score_truncated_turns=true`), so every episode is 6 turns of
  a short generation and a slow env step: env time dominates (62-74% of episode time in the tuning
  run; env_share_high is 50%). Expected: env workers are added (and no engine before them). 10 steps:
  with a 1-step window and a 1-step cool-down a decision can come every other step (after steps 0,
  2, 4: 1 -> 4 workers), and a new worker takes a step or two to join, so 8 steps never showed the
  4-worker layout serving a step.
slow_generation: plain stoichiometry (tools answer at once), the default tiny model (0.5M
  parameters), long untrained turns (`generation.max_new_tokens=128`) that go on to the next turn
  when cut (`env.score_truncated_turns=true`: ~6 turns, ~12k generated tokens a step),
  `rollout.max_staleness=0` (the trainer waits for every rollout), `rollout.max_concurrent_episodes=64`
  (all 32 episodes of a step in flight on the one env worker). Env time is ~0 and generation is most
  of the step. Expected: an engine is added. Tuning: a first run with a larger tiny model (hidden 256,
  6 layers, 5.9M parameters) and truncated turns ending the episode (~1.5 turns) did add the engine,
  but only just: the trainer waited 35% of the step (wait_high is 25%) because on CPU training cost
  grows with the model (train_s ~12-21 s, 60% of the step) while vLLM's decoding of a tiny model is
  bound by per-token-step overhead. A small model and long episodes make generation dominate.

`cluster.num_cpus=8` gives the run's local Ray cluster enough *logical* CPUs for the added members.
On a 2-core machine an added engine competes for the same 2 cores as the first engine, the trainer
and the env workers, so throughput after adding an engine measures the mechanism (it joins, serves,
the run goes on), not the speed-up a GPU cluster would get; an added env worker here is nearly free
(its episodes mostly sleep), so that phase change shows a real throughput gain.

Reported per scenario: the machine, the command, every scale event (step, source, deltas, reason,
outcome), and per layout phase (consecutive GRPO steps served by the same engines / env workers in
rotation: the sizes at the end of the previous step, the configured ones for the first step; the
first step, with the engines' warm-up and an empty pipeline, is a phase of its own):
trajectories/s (sum rollout/num_trajectories / sum timing/step_s), the trainer's wait share (sum
timing/wait_rollout_s / sum timing/step_s) and the env share of episode time the policy decides on.
Exits non-zero, naming the scenario and the reason, when a run failed, trained nothing, or the
expected decision did not happen.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, emit, machine_info, ratio, run_training, setup_logging
from benchmarks.latency_env import LATENCY_S, LatencyStoichiometryEnv
from envs.core import Message
from envs.registry import EnvSpec, register_env
from envs.suite import stoichiometry
from monitor.run_logger import read_jsonl
from monitor.text_table import format_table

logger = logging.getLogger("benchmarks.autoscale")


class StepLatencyStoichiometryEnv(LatencyStoichiometryEnv):
    """latency_env's stoichiometry, plus 100-500 ms on reset and on every step that runs no tool
    call: the environment's latency reaches every turn, also the untrained policy's invalid ones."""

    async def reset(self) -> tuple[list[Message], list[Any]]:
        await asyncio.sleep(self._latency_rng.uniform(*self.latency_s))
        return await super().reset()

    async def step(self, action: Message) -> tuple[list[Message], float, bool, bool]:
        if not action.tool_calls:  # a real call waits inside its (latency_env) tool
            await asyncio.sleep(self._latency_rng.uniform(*self.latency_s))
        return await super().step(action)


# Env workers import this module by its dotted path (`env.name=benchmarks.autoscale:STEP_LATENCY_SPEC`).
STEP_LATENCY_SPEC = register_env(EnvSpec(
    name="stoichiometry_step_latency", make_dataset=stoichiometry.make_dataset,
    make_env=StepLatencyStoichiometryEnv, reference_policy=stoichiometry.reference_policy,
    difficulties=stoichiometry.DIFFICULTIES,
    description=f"stoichiometry, every env step waits {LATENCY_S[0]:g}-{LATENCY_S[1]:g} s"), overwrite=True)

AUTOSCALE = ["rollout.autoscale.enabled=true", "rollout.autoscale.max_engines=2",
             "rollout.autoscale.max_env_workers=4", "rollout.autoscale.window_steps=1",
             "rollout.autoscale.cooldown_steps=1", "rollout.autoscale.scale_down=false"]
COMMON = ["sft.enabled=false", "grpo.dynamic_sampling=false", "grpo.entropy_coef=0.01", "grpo.batch_size=32",
          "grpo.group_size=4", "eval.num_tasks=4", "env.num_heldout_tasks=4", "generation.num_workers=1",
          "rollout.num_env_workers=1", "rollout.capacity_timeout_s=120", "cluster.num_cpus=8",
          "logging.wandb_mode=disabled", "logging.progress_bar=false", "logging.sample_every=0",
          "checkpoint.every_steps=0", "checkpoint.every_minutes=0", *AUTOSCALE]


@dataclass(frozen=True)
class Scenario:
    name: str
    overrides: tuple[str, ...]
    expect: str  # "env_workers" | "engines": the kind the first autoscale decision must add
    question: str


SCENARIOS = {
    "tool_latency": Scenario(
        "tool_latency",
        ("env.name=benchmarks.autoscale:STEP_LATENCY_SPEC", "rollout.max_concurrent_episodes=8",
         "generation.max_new_tokens=16", "env.score_truncated_turns=true"),
        "env_workers", "every env step waits 100-500 ms, 8 episodes per env worker: env workers should be added"),
    "slow_generation": Scenario(
        "slow_generation",
        ("env.name=stoichiometry", "generation.max_new_tokens=128", "env.score_truncated_turns=true",
         "rollout.max_staleness=0", "rollout.max_concurrent_episodes=64"),
        "engines", "generation dominates (tools answer at once), synchronous: an engine should be added"),
}
KIND = {"engines": "engine", "env_workers": "env worker"}


def command(scenario: Scenario, steps: int, runs_root: Path) -> list[str]:
    return [sys.executable, "-m", "launch.train", *COMMON, f"grpo.num_steps={steps}", *scenario.overrides,
            f"logging.runs_root={runs_root}", f"run_name=autoscale-{scenario.name}"]


def _override(cmd: list[str], key: str) -> int:
    return int(next(a.split("=", 1)[1] for a in reversed(cmd) if a.startswith(key + "=")))


def phases(steps: list[dict[str, Any]], engines0: int, env_workers0: int,
           warmup_steps: int = 1) -> list[dict[str, Any]]:
    """Consecutive steps served by the same layout. A step's row records the sizes in rotation at
    its end (after that step's decision), so step k was served by row k-1's sizes. The first
    `warmup_steps` steps (engine warm-up, an empty pipeline) form a phase of their own."""
    out: list[dict[str, Any]] = []
    layout = (engines0, env_workers0)
    for i, row in enumerate(steps):
        warmup = i < warmup_steps
        if not out or (out[-1]["engines"], out[-1]["env_workers"], out[-1]["warmup"]) != (*layout, warmup):
            out.append({"engines": layout[0], "env_workers": layout[1], "warmup": warmup, "rows": []})
        out[-1]["rows"].append(row)
        layout = (int(row.get("elastic/engines", layout[0])), int(row.get("elastic/env_workers", layout[1])))
    for p in out:
        rows = p.pop("rows")
        step_s = sum(r["timing/step_s"] for r in rows)
        env_s = sum(r.get("rollout/env_s_mean", 0.0) for r in rows)
        gen_s = sum(r.get("rollout/generation_s_mean", 0.0) for r in rows)
        trajs = sum(r.get("rollout/num_trajectories", 0.0) for r in rows)
        span = f"{rows[0]['step']}-{rows[-1]['step']}" if len(rows) > 1 else str(rows[0]["step"])
        p.update(steps=span + (" (warm-up)" if p["warmup"] else ""),
                 num_steps=len(rows), trajectories=trajs, step_s=step_s, traj_per_s=ratio(trajs, step_s),
                 wait_share=ratio(sum(r.get("timing/wait_rollout_s", 0.0) for r in rows), step_s),
                 env_share=ratio(env_s, env_s + gen_s),
                 tool_calls_mean=ratio(sum(r.get("rollout/tool_calls_mean", 0.0) for r in rows), len(rows)),
                 invalid_call_rate=ratio(sum(r.get("rollout/invalid_tool_call_rate", 0.0) for r in rows), len(rows)))
    return out


def check(scenario: Scenario, events: list[dict[str, Any]], steps: list[dict[str, Any]],
          engines0: int, env_workers0: int) -> list[str]:
    """Why the scenario's expectation failed (empty when it held)."""
    problems = []
    trained = steps[-1].get("accounting/trained", 0.0) if steps else 0.0
    if not trained:
        problems.append(f"trained nothing (accounting/trained = {trained} in the last step row)")
    auto = [e for e in events if e.get("source") == "autoscale"]
    grows = [e for e in auto if e.get("engines", 0) > 0 or e.get("env_workers", 0) > 0]
    if not grows:
        problems.append(f"no autoscale decision added capacity (expected {KIND[scenario.expect]}s to be added)")
    else:
        first = grows[0]
        other = "engines" if scenario.expect == "env_workers" else "env_workers"
        if first.get(scenario.expect, 0) <= 0:
            problems.append(f"the first autoscale decision (after step {first['step']}) added "
                            f"{KIND[other]}s, not {KIND[scenario.expect]}s: {first.get('reason')}")
        key, start = ("elastic/engines", engines0) if scenario.expect == "engines" else \
            ("elastic/env_workers", env_workers0)
        peak = max((int(r.get(key, start)) for r in steps), default=start)
        if first.get(scenario.expect, 0) > 0 and peak <= start:
            problems.append(f"{KIND[scenario.expect]}s were requested after step {first['step']} but never "
                            f"joined ({key} stayed at {start})")
    return problems


def run_scenario(scenario: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs_root = args.out / scenario.name / stamp
    runs_root.mkdir(parents=True, exist_ok=True)
    cmd = command(scenario, args.steps, runs_root)
    engines0, env_workers0 = _override(cmd, "generation.num_workers"), _override(cmd, "rollout.num_env_workers")
    shown = shlex.join(["python", *cmd[1:]])
    log_path = runs_root / "train.log"
    logger.info("%s: %s", scenario.name, scenario.question)
    logger.info("%s: command: %s", scenario.name, shown)
    logger.info("%s: output -> %s", scenario.name, log_path)
    rc, run_dir, wall = run_training(cmd, runs_root, log_path, args.timeout_s)
    rows = read_jsonl(run_dir / "metrics.jsonl") if run_dir else []
    steps = [r for r in rows if "timing/step_s" in r]
    events = read_jsonl(run_dir / "scale_events.jsonl") if run_dir else []
    result: dict[str, Any] = {"scenario": scenario.name, "question": scenario.question, "command": shown,
                              "exit_code": rc, "wall_s": round(wall, 1), "run_dir": str(run_dir or runs_root),
                              "log": str(log_path), "events": events, "phases": [], "problems": []}
    if rc != 0 or not steps:
        tail = log_path.read_text()[-3000:] if log_path.is_file() else ""
        why = "timed out" if rc == 124 else f"exit {rc}"
        result["problems"].append(f"the training run failed ({why}; {len(steps)} GRPO step rows); log: {log_path}")
        logger.error("%s: training run failed (%s); log tail:\n%s", scenario.name, why, tail)
        return result
    for e in events:
        logger.info("%s: scale event after step %s (%s): engines %+d, env workers %+d -> engines %s, env workers %s; "
                    "%s [%s]", scenario.name, e.get("step"), e.get("source"), e.get("engines", 0),
                    e.get("env_workers", 0), e.get("engines_after"), e.get("env_workers_after"), e.get("reason"),
                    e.get("outcome"))
    result["phases"] = phases(steps, engines0, env_workers0, args.warmup_steps)
    for p in result["phases"]:
        logger.info("%s: steps %s, %d engine(s), %d env worker(s): %.2f trajectories/s over %.1f s, trainer "
                    "waited %.0f%%, env share %.0f%%", scenario.name, p["steps"], p["engines"], p["env_workers"],
                    p["traj_per_s"], p["step_s"], 100 * p["wait_share"], 100 * p["env_share"])
    last = steps[-1]
    result.update(trained=last.get("accounting/trained"), produced=last.get("accounting/produced"),
                  capacity_png=str(run_dir / "capacity.png") if (run_dir / "capacity.png").is_file() else None)
    result["problems"] = check(scenario, events, steps, engines0, env_workers0)
    for problem in result["problems"]:
        logger.error("%s: %s", scenario.name, problem)
    return result


PHASE_COLUMNS = [("steps", "steps", ""), ("engines", "engines", "d"), ("env workers", "env_workers", "d"),
                 ("trajs", "trajectories", ".0f"), ("step s", "step_s", ".1f"), ("traj/s", "traj_per_s", ".2f"),
                 ("wait share", "wait_share", ".2f"), ("env share", "env_share", ".2f"),
                 ("tool calls/ep", "tool_calls_mean", ".2f"), ("invalid rate", "invalid_call_rate", ".2f")]


def scenario_text(r: dict[str, Any]) -> str:
    status = "FAILED: " + "; ".join(r["problems"]) if r["problems"] else "expectation held"
    lines = [f"== {r['scenario']}: {r['question']} -> {status}", f"command: {r['command']}",
             f"run: {r['run_dir']} (wall {r['wall_s']:.0f} s, exit {r['exit_code']}, trained {r.get('trained')}, "
             f"produced {r.get('produced')})", "scale events:"]
    lines += [f"  after step {e.get('step')} ({e.get('source')}): engines {e.get('engines', 0):+d}, env workers "
              f"{e.get('env_workers', 0):+d} -> {e.get('engines_after')} / {e.get('env_workers_after')}; "
              f"{e.get('reason')} [{e.get('outcome')}]" for e in r["events"]] or ["  (none)"]
    if r["phases"]:
        lines += ["phases (layout in rotation while the steps ran):", format_table(r["phases"], PHASE_COLUMNS)]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=list(SCENARIOS), help="run one scenario")
    p.add_argument("--steps", type=int, default=10, help="GRPO steps per run")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "autoscale_runs", help="runs_root of the runs")
    p.add_argument("--warmup-steps", type=int, default=1, help="first steps reported as a phase of their own")
    p.add_argument("--timeout-s", type=float, default=1800.0, help="per training run")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    setup_logging()
    machine = machine_info()
    note = (f"machine: {machine['nproc']} CPUs ({machine['cpu_model']}), shared; cluster.num_cpus=8 are logical CPUs: "
            "an added engine competes for the same cores, so its phase measures the mechanism, not a GPU speed-up")
    logger.info(note)
    names = [args.only] if args.only else list(SCENARIOS)
    results = [run_scenario(SCENARIOS[n], args) for n in names]
    table = "\n\n".join([note] + [scenario_text(r) for r in results])
    emit("autoscale", {"config": {k: str(v) for k, v in vars(args).items()}, "common_overrides": COMMON,
                       "results": results}, table)
    failed = [f"{r['scenario']}: {'; '.join(r['problems'])}" for r in results if r["problems"]]
    if failed:
        sys.stderr.write("autoscale benchmark FAILED:\n" + "\n".join(f"  {f}" for f in failed) + "\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
