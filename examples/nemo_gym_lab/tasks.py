"""Write the lab's task JSONL and hold its reference solver (both run in labrl's Python).

    python -m examples.nemo_gym_lab.tasks --out runs/lab_tasks.jsonl --rows 5000

Rows are NeMo Gym task rows: `responses_create_params` (the question and the two tool schemas)
plus what the verifier needs (`formula`, `answer`) and a `difficulty` (1: two elements, 2: three).
`--fault-fraction F` marks a seeded random share F of the rows `instrument_fault` (masked by the verifier).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

from envs.core import Environment, Message
from envs.suite.stoichiometry import generate_task, parse_formula
from envs.tool_env import make_action, successful_results

TOOLS = [
    {"type": "function", "name": "mass", "description": "Atomic mass of an element in g/mol.",
     "parameters": {"type": "object", "properties": {"el": {"type": "string", "description": "Symbol."}},
                    "required": ["el"], "additionalProperties": False}, "strict": True},
    {"type": "function", "name": "calc", "description": "Evaluate arithmetic.",
     "parameters": {"type": "object", "properties": {"expr": {"type": "string", "description": "Expression."}},
                    "required": ["expr"], "additionalProperties": False}, "strict": True},
]


def make_row(rng: random.Random, difficulty: int, fault: bool) -> dict[str, Any]:
    task = generate_task(rng, difficulty)  # molar mass of a 2- (difficulty 1) or 3-element formula
    question = f"Molar mass of {task['formula']} in g/mol?"
    return {"responses_create_params": {"input": [{"role": "user", "content": question}], "tools": TOOLS},
            "formula": task["formula"], "answer": task["answer"], "difficulty": difficulty,
            "instrument_fault": fault}


def write_rows(path: Path, rows: int, seed: int = 0, fault_fraction: float = 0.0) -> None:
    rng = random.Random(seed)
    lines = [json.dumps(make_row(rng, 1 + i % 2, rng.random() < fault_fraction)) for i in range(rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


async def reference_policy(env: Environment, history: list[Message]) -> Message:
    """Look up each element's mass, combine them in one `calc`, answer with what calc printed."""
    formula = env.task.data["row"]["formula"]  # type: ignore[attr-defined]
    masses = {c.arguments.get("el"): json.loads(out) for c, out in successful_results(history, "mass")}
    counts = parse_formula(formula)
    missing = [el for el, _ in counts if el not in masses]
    if missing:
        return make_action(("mass", {"el": missing[0]}))
    expr = "+".join(f"{masses[el]}*{n}" if n > 1 else masses[el] for el, n in counts)
    results = [json.loads(out) for c, out in successful_results(history, "calc") if c.arguments.get("expr") == expr]
    if not results:
        return make_action(("calc", {"expr": expr}))
    return Message(role="assistant", content=results[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fault-fraction", type=float, default=0.0)
    args = parser.parse_args()
    write_rows(args.out, args.rows, args.seed, args.fault_fraction)


if __name__ == "__main__":
    main()
