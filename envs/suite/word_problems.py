"""Calculator word problems (GSM8K-calculator style), generated from templates with exact answers.

The agent turns the story into one arithmetic expression, evaluates it with `calc` and submits the
number; only the exact value is correct. Numbers are chosen so every division is exact.

Difficulty 1: one operation ("Ann has 23 pens and buys 14 more. How many now?").
Difficulty 2: two operations. Difficulty 3: three operations.

The novice solver is the student who adds up every number in the story: right only on "buys N
more" problems, so behaviour cloning on a mix leaves the choice of operations to RL.
"""

from __future__ import annotations

import random
import re
from typing import Any, Callable, Sequence

from envs.core import Environment, Message, Reward
from envs.dataset import Task, TaskDataset
from envs.registry import EnvSpec, register_env
from envs.suite.common import calc, calc_then_submit, check_number
from envs.tool_env import ToolEnvironment
from envs.tools import Tool

NAME = "calculator_word_problems"
DIFFICULTIES = (1, 2, 3)
BUDGET = {1: 4, 2: 6, 3: 6}

NAMES = ["Ann", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Ivy", "Jo", "Kim", "Lu", "Max"]
ITEMS = ["pen", "cup", "egg", "cap", "card", "book", "ball", "bead", "shell", "coin"]

# A template: rng -> (question, expression). The expression is what the reference solver computes.
Template = Callable[[random.Random], tuple[str, str]]


def _one_step(rng: random.Random) -> tuple[str, str]:
    who, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randint(11, 99), rng.randint(11, 99)
        return f"{who} has {a} {item}s and buys {b} more. How many now?", f"{a}+{b}"
    if kind == 1:
        b = rng.randint(11, 60)
        a = rng.randint(b + 1, 99)
        return f"{who} has {a} {item}s and gives away {b}. How many left?", f"{a}-{b}"
    if kind == 2:
        a, b = rng.randint(3, 19), rng.randint(12, 48)
        return f"{a} bags hold {b} {item}s each. How many {item}s?", f"{a}*{b}"
    b, each = rng.randint(3, 12), rng.randint(4, 25)
    return f"{b * each} {item}s are split among {b} kids. How many each?", f"{b * each}/{b}"


def _two_step(rng: random.Random) -> tuple[str, str]:
    who, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randint(3, 12), rng.randint(6, 24)
        c = rng.randint(1, a * b - 1)
        return (f"{who} buys {a} packs of {b} {item}s and gives away {c}. How many left?",
                f"{a}*{b}-{c}")
    if kind == 1:
        c, per = rng.randint(2, 9), rng.randint(3, 20)
        a = rng.randint(1, c * per - 1)
        b = c * per - a
        return (f"{who} has {a} {item}s, buys {b} more and splits them into {c} equal bags. "
                f"How many per bag?", f"({a}+{b})/{c}")
    p, a = rng.randint(2, 15), rng.randint(2, 9)
    m = (a * p // 10 + 1 + rng.randint(0, 3)) * 10
    return (f"A {item} costs ${p}. {who} buys {a} and pays with ${m}. How much change?",
            f"{m}-{a}*{p}")


def _three_step(rng: random.Random) -> tuple[str, str]:
    who, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(3)
    if kind == 0:
        rate, hours, days = rng.randint(8, 25), rng.randint(2, 8), rng.randint(2, 6)
        spend = rng.randint(1, rate * hours * days - 1)
        return (f"{who} earns ${rate} an hour, {hours} hours a day, for {days} days, and spends "
                f"${spend}. How much is left?", f"{rate}*{hours}*{days}-{spend}")
    if kind == 1:
        k, bags = rng.randint(3, 12), rng.randint(3, 30)
        a, broken = rng.randint(3, 12), rng.randint(1, 20)
        b = (k * bags + broken) // a + 1
        broken = a * b - k * bags
        return (f"{a} crates hold {b} {item}s each; {broken} break. The rest go in bags of {k}. "
                f"How many bags?", f"({a}*{b}-{broken})/{k}")
    v, t, w, u = rng.randint(30, 90), rng.randint(2, 5), rng.randint(30, 90), rng.randint(2, 5)
    return (f"A bus drives {t} hours at {v} km/h, then {u} hours at {w} km/h. How many km in all?",
            f"{v}*{t}+{w}*{u}")


TEMPLATES: dict[int, Template] = {1: _one_step, 2: _two_step, 3: _three_step}


def generate_task(rng: random.Random, difficulty: int) -> dict[str, Any]:
    if difficulty not in TEMPLATES:
        raise ValueError(f"{NAME}: unknown difficulty {difficulty}")
    question, expr = TEMPLATES[difficulty](rng)
    answer = float(calc(expr))
    return {"question": question, "expr": expr, "answer": answer}


class WordProblemEnv(ToolEnvironment):
    """One word problem; tools `calc(expr)` and `submit(answer)`."""

    def __init__(self, task: Task, **kwargs: Any):
        kwargs.setdefault("max_tool_calls", BUDGET.get(task.difficulty, 6))
        super().__init__(task, **kwargs)

    def prompt(self) -> str:
        return self.task.data["question"]

    def make_tools(self) -> list[Tool]:
        return [Tool.from_function(calc), Tool.from_function(self.submit, "submit", ends_episode=True)]

    def submit(self, answer: float) -> Reward:
        """Submit the final numeric answer; ends the episode.

        Args:
            answer: The number asked for.
        """
        return check_number(answer, self.task.data["answer"], abs_tol=1e-6)


async def reference_policy(env: Environment, history: list[Message]) -> Message:
    """Evaluate the problem's expression with `calc`, then submit what `calc` returned."""
    if not isinstance(env, WordProblemEnv):
        raise TypeError(f"{NAME} reference policy needs a WordProblemEnv, got {type(env).__name__}")
    return calc_then_submit(history, env.task.data["expr"])


async def novice_policy(env: Environment, history: list[Message]) -> Message:
    """Add up every number in the question with `calc`, then submit what `calc` returned."""
    if not isinstance(env, WordProblemEnv):
        raise TypeError(f"{NAME} novice policy needs a WordProblemEnv, got {type(env).__name__}")
    return calc_then_submit(history, "+".join(re.findall(r"\d+", env.task.data["question"])))


def make_dataset(num_train: int, num_heldout: int, difficulties: Sequence[int] = DIFFICULTIES,
                 seed: int = 0) -> TaskDataset:
    return TaskDataset.generate(NAME, generate_task, num_train, num_heldout, difficulties, seed,
                                key=lambda data: data["question"])


SPEC = register_env(EnvSpec(
    name=NAME, make_dataset=make_dataset, make_env=WordProblemEnv,
    reference_policy=reference_policy, novice_policy=novice_policy, difficulties=DIFFICULTIES,
    description="GSM8K-calculator style word problems with a safe calculator; exact answers"))
