"""Pieces the bundled environments share: the safe calculator tool and numeric answer checking."""

from __future__ import annotations

import math

from envs.core import Message, Reward
from envs.safe_math import format_number, parse_number, safe_eval
from envs.tool_env import make_action, successful_results


def calc(expr: str) -> str:
    """Evaluate arithmetic: numbers, + - * / ** and parentheses.

    Args:
        expr: Expression, e.g. 2*1.008+16.
    """
    return format_number(safe_eval(expr))


def check_number(value: float, expected: float, rel_tol: float = 0.0, abs_tol: float = 1e-9) -> Reward:
    """Reward 1 (`correct`) when `value` matches `expected` within the tolerances, else 0."""
    if math.isfinite(value) and math.isclose(value, expected, rel_tol=rel_tol, abs_tol=abs_tol):
        return Reward(1.0, "correct")
    return Reward(0.0, "wrong_value")


def calc_then_submit(history: list[Message], expr: str) -> Message:
    """The reference solver's last two moves: `calc(expr)`, then submit exactly what calc printed."""
    results = [out for c, out in successful_results(history, "calc") if c.arguments.get("expr") == expr]
    if not results:
        return make_action(("calc", {"expr": expr}))
    return make_action(("submit", {"answer": parse_number(results[-1])}))
