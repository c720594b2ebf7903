"""Stoichiometry specifics and the safe calculator it shares with other environments."""

from __future__ import annotations

import asyncio

import pytest

from envs.registry import get_env_spec
from envs.safe_math import CalcError, format_number, safe_eval
from envs.suite.stoichiometry import ATOMIC_MASS, molar_mass, parse_formula
from envs.testing import play_episode
from envs.tool_env import make_action


@pytest.mark.parametrize("expr, value", [
    ("2*1.008+15.999", 18.015), ("(3+4)^2", 49.0), ("2*3^2", 18.0), ("-2**2", -4.0), ("10/4", 2.5), ("+3 - -2", 5.0),
    ("1e3*2", 2000.0),
])
def test_calculator_arithmetic(expr: str, value: float) -> None:
    assert safe_eval(expr) == pytest.approx(value)


@pytest.mark.parametrize("expr", [
    "__import__('os').system('true')", "x+1", "abs(-1)", "(1).real", "[1]", "1 if 1 else 2", "9**9**9",
    "1/0", "10.0**400", "(-8)**0.5", "1" * 300, "True+1", "'a'*3", "1 < 2", "lambda: 1",
])
def test_calculator_rejects_everything_else(expr: str) -> None:
    with pytest.raises(CalcError):
        safe_eval(expr)


def test_number_format_is_short() -> None:
    assert format_number(22.99 + 35.45) == "58.44" and format_number(18.0) == "18"
    assert format_number(12.5 / 58.44) == "0.213895"


def test_formulas() -> None:
    assert parse_formula("Fe2O3") == [("Fe", 2), ("O", 3)]
    assert molar_mass("H2O") == pytest.approx(18.015)
    assert len(ATOMIC_MASS) >= 30
    with pytest.raises(ValueError):
        parse_formula("Xy2")


def test_tool_errors_and_tolerance() -> None:
    spec = get_env_spec("stoichiometry")
    task = spec.make_dataset(1, 0, (1,), 0)[0]
    env = spec.make_env(task)
    asyncio.run(env.reset())
    [obs], reward, *_ = asyncio.run(env.step(make_action(("mass", {"el": "Xx"}))))
    assert obs.is_error and "unknown element" in obs.content and reward.reason == "tool_error"
    [obs], reward, *_ = asyncio.run(env.step(make_action(("calc", {"expr": "open('f')"}))))
    assert obs.is_error and reward.reason == "tool_error"
    answer = task.data["answer"] * 1.005  # within 1%
    [obs], reward, done, _ = asyncio.run(env.step(make_action(("submit", {"answer": answer}))))
    assert done and float(reward) == 1.0 and obs.content == "correct"


def test_novice_solver_ignores_subscripts() -> None:
    """The novice is right exactly where every count is 1; otherwise it submits the subscript-free sum."""
    spec = get_env_spec("stoichiometry")
    assert spec.solver("novice") is spec.novice_policy and spec.solver("reference") is spec.reference_policy
    tasks = list(spec.make_dataset(60, 0, (1, 2, 3, 4), 0))
    outcomes = set()
    for task in tasks:
        record = asyncio.run(play_episode(spec.make_env(task), spec.novice_policy))
        counts = [n for f in spec.make_env(task).formulas() for _, n in parse_formula(f)]
        assert record.done and not any(m.is_error for m in record.messages), record.transcript()
        assert (record.reason == "correct") == all(n == 1 for n in counts), record.transcript()
        outcomes.add(record.reason)
    assert outcomes == {"correct", "wrong_value"}


def test_envs_without_a_novice_refuse_it() -> None:
    with pytest.raises(ValueError, match="'hidden_law' has no 'novice' solver"):
        get_env_spec("hidden_law").solver("novice")
