"""hidden_law: model expressions are checked before sympy sees them, and scored on held-out points."""

from __future__ import annotations

import asyncio

import pytest

from envs.dataset import Task
from envs.safe_math import CalcError
from envs.suite.hidden_law import HiddenLawEnv, parse_law
from envs.tool_env import make_action


@pytest.mark.parametrize("text", ["3*x**2*y", "3*x^2*y", "3*x*x*y", "6*x**2*y/2", "3*sqrt(x**4)*y",
                                  "3*x**(4/2)*y**1.0"])
def test_equivalent_forms_are_correct(text: str) -> None:
    env = _env()
    asyncio.run(env.reset())
    [obs], reward, done, _ = asyncio.run(env.step(make_action(("submit", {"expr": text}))))
    assert done and reward.reason == "correct", obs.content


@pytest.mark.parametrize("text", [
    "__import__('os').system('true')", "x.__class__", "Symbol('z')", "exec('1')", "z*x", "x**y",
    "x**1000", "9**9**9", "lambda: 1", "[x]", "x if y else 1", "sin(x)", "sqrt(x, 2)", "x" * 200,
    "Integer(3)*x", "'x'", "x**(y)", "E**x",
])
def test_unsafe_or_unknown_expressions_are_rejected(text: str) -> None:
    with pytest.raises(CalcError):
        parse_law(text)


def _env() -> HiddenLawEnv:
    data = {"k": 3, "a": 2, "b": 1, "noise": 0.0, "eval_points": [(0.5, 1.0), (2.0, 3.0), (3.5, 0.7)]}
    return HiddenLawEnv(Task("t", "hidden_law", "train", 2, 5, data))


def test_bad_expression_is_a_tool_error_and_wrong_law_is_wrong() -> None:
    env = _env()
    asyncio.run(env.reset())
    [obs], reward, done, _ = asyncio.run(env.step(make_action(("submit", {"expr": "import os"}))))
    assert obs.is_error and reward.reason == "tool_error" and not done
    [obs], reward, done, _ = asyncio.run(env.step(make_action(("probe", {"x": -1, "y": 1}))))
    assert obs.is_error and reward.reason == "tool_error"
    [obs], reward, done, _ = asyncio.run(env.step(make_action(("probe", {"x": 2, "y": 1}))))
    assert obs.content == "F=12"
    [obs], reward, done, _ = asyncio.run(env.step(make_action(("submit", {"expr": "3*x**2"}))))
    assert done and float(reward) == 0.0 and reward.reason == "wrong_value"
