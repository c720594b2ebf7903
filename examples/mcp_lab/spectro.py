"""A spectrophotometry lab behind an MCP server: the task set labrl trains on (tasks, prompt,
checker, reference solver). The server is `server.py`; see envs/adapters/README_mcp.md."""

from __future__ import annotations

import functools
import random

from envs.adapters.mcp import McpEnvironment, McpTaskSet
from envs.core import Message, Reward
from envs.dataset import Task, TaskDataset
from envs.tool_env import make_action, successful_results

RACK = {"S1": 1.25, "S2": 0.4, "S3": 2.0}          # sample -> concentration in mM (the answer key)
EPSILON = {450: 1200.0, 520: 800.0}                # L/(mol*cm) at each filter


def generate(rng: random.Random, difficulty: int) -> dict:
    """One task's data; everything the prompt and the checker need."""
    sample, nm = rng.choice(sorted(RACK)), rng.choice(sorted(EPSILON))
    return {"sample": sample, "nm": nm, "epsilon": EPSILON[nm], "answer_mM": RACK[sample]}


def prompt(task: Task) -> str:
    d = task.data
    return (f"Concentration of sample {d['sample']} in mM? Molar absorptivity {d['epsilon']:g} "
            f"L/(mol*cm) at {d['nm']} nm, 1 cm cuvette.")


def submit(concentration_mM: float, state: McpEnvironment) -> Reward:
    """Submit the concentration; ends the episode.

    Args:
        concentration_mM: The sample's concentration in mM.
    """
    expected = state.task.data["answer_mM"]
    ok = abs(concentration_mM - expected) <= 0.01 * expected
    return Reward(1.0, "correct") if ok else Reward(0.0, "wrong_value")


async def reference(env: McpEnvironment, history: list[Message]) -> Message:
    """The perfect solver, one call a turn (SFT demonstrations and tests)."""
    d = env.task.data
    if not successful_results(history, "load_sample"):
        return make_action(("load_sample", {"sample_id": d["sample"]}))
    readings = successful_results(history, "absorbance")
    if not readings:
        return make_action(("absorbance", {"wavelength_nm": d["nm"]}))
    return make_action(("submit", {"concentration_mM": float(readings[-1][1]) / d["epsilon"] * 1000}))


TASKS = McpTaskSet(
    name="spectro",
    make_dataset=functools.partial(TaskDataset.generate, "spectro", generate),  # train/held-out by seed
    prompt=prompt,
    submit=submit,                 # the verifier: its docstring and type hints are its schema
    reference_policy=reference,    # optional; needed for the SFT warm start
    tools=("load_sample", "absorbance"),   # optional allow-list of server tools (default: all)
    max_tool_calls=6,
)
