"""Hidden law discovery: find F = k * x^a * y^b by running noisy experiments.

`probe(x, y)` returns a (noisy) measurement of F; the agent submits an expression in x and y. The
expression is checked as text first (a whitelisted Python AST: numbers, x, y, + - * / ** ^,
sqrt), then parsed with sympy under a restricted namespace, and scored on held-out points: correct
when the largest relative error is under 5%.

Difficulty 1: F = k * x^a (b = 0), integer k and a, no noise.
Difficulty 2: integer exponents of both variables (negative too), 0.5% noise.
Difficulty 3: half-integer exponents, k with one decimal, 1% noise.
"""

from __future__ import annotations

import ast
import functools
import math
import random
from typing import Any, Sequence

from envs.core import Environment, Message, Reward
from envs.dataset import Task, TaskDataset
from envs.registry import EnvSpec, register_env
from envs.safe_math import CalcError, evaluate_node, parse_expression, parse_number
from envs.tool_env import ToolEnvironment, make_action, successful_results
from envs.tools import Tool

NAME = "hidden_law"
DIFFICULTIES = (1, 2, 3)
BUDGET = {1: 5, 2: 6, 3: 8}
NOISE = {1: 0.0, 2: 0.005, 3: 0.01}
REL_TOL = 0.05
PROBE_AT = 4  # the reference solver's second probe value: 4^a is exact for half-integer a
MAX_EXPR = 100
MAX_EXPONENT = 10.0
_ALLOWED_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.USub, ast.UAdd)


def law(data: dict[str, Any], x: float, y: float) -> float:
    return data["k"] * x ** data["a"] * y ** data["b"]


def check_expression_text(text: str) -> None:
    """Raise CalcError unless `text` is arithmetic over numbers, x, y and sqrt(...) only.

    Exponents must be constant and small, so sympy never builds huge numbers from model text.
    """
    root = parse_expression(text, max_chars=MAX_EXPR)
    for node in ast.walk(root):
        if isinstance(node, ast.Name):
            if node.id not in ("x", "y", "sqrt"):
                raise CalcError(f"unknown name '{node.id[:10]}'")
        elif isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id == "sqrt"
                    and len(node.args) == 1 and not node.keywords):
                raise CalcError("only sqrt(...) may be called")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            if abs(evaluate_node(node.right)) > MAX_EXPONENT:  # raises for non-constant exponents
                raise CalcError("exponent too large")
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise CalcError("only numbers are allowed")
        elif not isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Load, *_ALLOWED_OPS)):
            raise CalcError(f"'{type(node).__name__}' is not allowed")


@functools.cache
def _sympy() -> Any:
    """sympy, imported on first use: it takes about a second, which other environments need not pay."""
    import sympy

    return sympy


def _symbols() -> tuple[Any, Any]:
    sympy = _sympy()
    return sympy.Symbol("x", positive=True), sympy.Symbol("y", positive=True)


def parse_law(text: str) -> Any:
    """A sympy expression in x, y from model text that passed `check_expression_text`.

    parse_expr evaluates its input, so it only ever sees text whose AST was whitelisted above,
    with names resolved in a namespace that has no builtins.
    """
    check_expression_text(text)
    sympy = _sympy()
    from sympy.parsing.sympy_parser import parse_expr, standard_transformations

    x, y = _symbols()
    local_dict = {"x": x, "y": y, "sqrt": sympy.sqrt}
    global_dict = {"Integer": sympy.Integer, "Float": sympy.Float, "Rational": sympy.Rational,
                   "Symbol": sympy.Symbol, "__builtins__": {}}
    expr = parse_expr(text.replace("^", "**"), local_dict=local_dict, global_dict=global_dict,
                      transformations=standard_transformations)
    if not isinstance(expr, sympy.Expr) or not expr.free_symbols <= {x, y}:
        raise CalcError("expression must use only x and y")
    return expr


def _value(expr: Any, x: float, y: float) -> float:
    sx, sy = _symbols()
    value = complex(expr.subs({sx: x, sy: y}).evalf())
    return value.real if abs(value.imag) < 1e-12 else math.nan


def generate_task(rng: random.Random, difficulty: int) -> dict[str, Any]:
    if difficulty == 1:
        k, a, b = rng.randint(2, 30), rng.randint(1, 3), 0
    elif difficulty == 2:
        k, a, b = rng.randint(2, 12), rng.choice((-2, -1, 1, 2, 3)), rng.choice((-2, -1, 1, 2, 3))
    elif difficulty == 3:
        halves = (-1.5, -1.0, -0.5, 0.5, 1.0, 1.5, 2.0, 2.5)
        k, a, b = round(rng.uniform(1.0, 9.9), 1), rng.choice(halves), rng.choice(halves)
    else:
        raise ValueError(f"{NAME}: unknown difficulty {difficulty}")
    points = [(round(rng.uniform(0.5, 4.0), 3), round(rng.uniform(0.5, 4.0), 3)) for _ in range(8)]
    return {"k": k, "a": a, "b": b, "noise": NOISE[difficulty], "eval_points": points}


class HiddenLawEnv(ToolEnvironment):
    """Discover a hidden power law; tools `probe(x, y)` and `submit(expr)`."""

    def __init__(self, task: Task, **kwargs: Any):
        kwargs.setdefault("max_tool_calls", BUDGET.get(task.difficulty, 8))
        super().__init__(task, **kwargs)
        self._noise = random.Random(f"{task.seed}:noise")

    def prompt(self) -> str:
        return "F=k*x^a*y^b. Probe F(x,y), then submit an expr in x,y."

    def make_tools(self) -> list[Tool]:
        return [Tool.from_function(self.probe, "probe"),
                Tool.from_function(self.submit, "submit", ends_episode=True)]

    def probe(self, x: float, y: float) -> str:
        """Measure F at (x, y) (noisy at higher levels).

        Args:
            x: Positive number.
            y: Positive number.
        """
        if not (0 < x <= 100 and 0 < y <= 100):
            raise ValueError("x and y must be in (0, 100]")
        value = law(self.task.data, x, y) * (1 + self._noise.gauss(0.0, 1.0) * self.task.data["noise"])
        return f"F={value:.4g}"

    def submit(self, expr: str) -> Reward:
        """Submit F as an expression in x and y, e.g. 3*x**2*y; ends the episode.

        Args:
            expr: Expression in x and y.
        """
        guess = parse_law(expr)  # a bad expression raises: an error observation, the episode goes on
        errors = []
        for x, y in self.task.data["eval_points"]:
            truth = law(self.task.data, x, y)
            errors.append(abs(_value(guess, x, y) - truth) / abs(truth))
        if all(math.isfinite(e) for e in errors) and max(errors) < REL_TOL:
            return Reward(1.0, "correct")
        return Reward(0.0, "wrong_value")


def _power(var: str, exponent: float) -> list[str]:
    if exponent == 0:
        return []
    if exponent == 1:
        return [var]
    return [f"{var}**{int(exponent) if float(exponent).is_integer() else exponent}"]


def _probe_points() -> list[tuple[float, float]]:
    return [(1, 1), (PROBE_AT, 1), (1, PROBE_AT)]


async def reference_policy(env: Environment, history: list[Message]) -> Message:
    """Probe (1,1), (4,1), (1,4), one call a turn; read k and the exponents off the ratios; submit."""
    if not isinstance(env, HiddenLawEnv):
        raise TypeError(f"{NAME} reference policy needs a HiddenLawEnv, got {type(env).__name__}")
    seen: dict[tuple[float, float], float] = {}
    for call, out in successful_results(history, "probe"):
        value = parse_number(out)
        if value is not None:
            seen[(float(call.arguments["x"]), float(call.arguments["y"]))] = float(value)
    missing = [p for p in _probe_points() if p not in seen]
    if missing:
        return make_action(("probe", {"x": missing[0][0], "y": missing[0][1]}))
    base = seen[(1, 1)]
    a = round(2 * math.log(seen[(PROBE_AT, 1)] / base) / math.log(PROBE_AT)) / 2
    b = round(2 * math.log(seen[(1, PROBE_AT)] / base) / math.log(PROBE_AT)) / 2
    k = round(base) if env.task.difficulty < 3 else round(base, 1)
    terms = [str(k)] + _power("x", a) + _power("y", b)
    return make_action(("submit", {"expr": "*".join(terms)}))


def make_dataset(num_train: int, num_heldout: int, difficulties: Sequence[int] = DIFFICULTIES,
                 seed: int = 0) -> TaskDataset:
    return TaskDataset.generate(NAME, generate_task, num_train, num_heldout, difficulties, seed,
                                key=lambda d: (d["k"], d["a"], d["b"]))


SPEC = register_env(EnvSpec(
    name=NAME, make_dataset=make_dataset, make_env=HiddenLawEnv,
    reference_policy=reference_policy, difficulties=DIFFICULTIES,
    description="discover a hidden power law from noisy experiments; sympy-checked expressions"))
