"""Stoichiometry: molar masses, grams to moles, and product masses from a bundled periodic table.

The agent must look masses up (`mass`), combine them with the safe calculator (`calc`) and
`submit` a number; answers within 1% are correct. The reference solver copies the numbers it
observed into one calculator expression, so a small model can learn the episode by copying. The
novice solver makes the classic student mistake of ignoring subscripts (Na2S as Na + S): right
only when every count is 1, so behaviour cloning on a mix leaves a choice that RL must settle.

Difficulty 1: molar mass of a two-element formula ("Molar mass of Na2S in g/mol?").
Difficulty 2: molar mass of a three-element formula.
Difficulty 3: moles in a given mass of a compound.
Difficulty 4: grams of product from grams of reactant in a balanced reaction.
"""

from __future__ import annotations

import random
import re
from typing import Any, Sequence

from envs.core import Environment, Message, Reward
from envs.dataset import Task, TaskDataset
from envs.registry import EnvSpec, register_env
from envs.safe_math import format_number
from envs.suite.common import calc, calc_then_submit, check_number
from envs.tool_env import ToolEnvironment, make_action, successful_results
from envs.tools import Tool

NAME = "stoichiometry"
DIFFICULTIES = (1, 2, 3, 4)
REL_TOL = 0.01
BUDGET = {1: 6, 2: 8, 3: 8, 4: 10}

# Standard atomic weights (g/mol), abridged to what the tasks use.
ATOMIC_MASS: dict[str, float] = {
    "H": 1.008, "He": 4.0026, "Li": 6.94, "Be": 9.0122, "B": 10.81, "C": 12.011, "N": 14.007,
    "O": 15.999, "F": 18.998, "Ne": 20.18, "Na": 22.99, "Mg": 24.305, "Al": 26.982, "Si": 28.085,
    "P": 30.974, "S": 32.06, "Cl": 35.45, "Ar": 39.948, "K": 39.098, "Ca": 40.078, "Cr": 51.996,
    "Mn": 54.938, "Fe": 55.845, "Co": 58.933, "Ni": 58.693, "Cu": 63.546, "Zn": 65.38,
    "Br": 79.904, "Ag": 107.87, "I": 126.9, "Ba": 137.33, "Pb": 207.2,
}
_FORMULA_ELEMENTS = [e for e in ATOMIC_MASS if e not in ("He", "Ne", "Ar")]

# Balanced reactions: (reactants, products) as (coefficient, formula).
REACTIONS: list[tuple[list[tuple[int, str]], list[tuple[int, str]]]] = [
    ([(2, "H2"), (1, "O2")], [(2, "H2O")]),
    ([(1, "C"), (1, "O2")], [(1, "CO2")]),
    ([(1, "N2"), (3, "H2")], [(2, "NH3")]),
    ([(1, "CH4"), (2, "O2")], [(1, "CO2"), (2, "H2O")]),
    ([(2, "Na"), (1, "Cl2")], [(2, "NaCl")]),
    ([(1, "CaCO3")], [(1, "CaO"), (1, "CO2")]),
    ([(2, "Mg"), (1, "O2")], [(2, "MgO")]),
    ([(4, "Fe"), (3, "O2")], [(2, "Fe2O3")]),
    ([(1, "Zn"), (2, "HCl")], [(1, "ZnCl2"), (1, "H2")]),
    ([(2, "KClO3")], [(2, "KCl"), (3, "O2")]),
    ([(4, "Al"), (3, "O2")], [(2, "Al2O3")]),
    ([(2, "Cu"), (1, "O2")], [(2, "CuO")]),
]

_TOKEN_RE = re.compile(r"([A-Z][a-z]?)(\d*)")


def parse_formula(formula: str) -> list[tuple[str, int]]:
    """Element counts of a formula without parentheses, in order of first appearance."""
    if not formula or _TOKEN_RE.sub("", formula):
        raise ValueError(f"unsupported formula {formula!r}")
    counts: dict[str, int] = {}
    for symbol, digits in _TOKEN_RE.findall(formula):
        if symbol not in ATOMIC_MASS:
            raise ValueError(f"unknown element {symbol!r}")
        counts[symbol] = counts.get(symbol, 0) + (int(digits) if digits else 1)
    return list(counts.items())


def molar_mass(formula: str) -> float:
    return sum(ATOMIC_MASS[e] * n for e, n in parse_formula(formula))


def _random_formula(rng: random.Random, n_elements: int, max_count: int) -> str:
    elements = rng.sample(_FORMULA_ELEMENTS, n_elements)
    return "".join(e + (str(n) if n > 1 else "") for e in elements
                   for n in [rng.randint(1, max_count)])


def _reaction_text(side: list[tuple[int, str]]) -> str:
    return " + ".join((str(c) if c > 1 else "") + f for c, f in side)


def generate_task(rng: random.Random, difficulty: int) -> dict[str, Any]:
    """Task data for one problem of the given difficulty (the answer included, for the verifier)."""
    if difficulty == 1:
        formula = _random_formula(rng, 2, 3)
        return {"kind": "molar_mass", "formula": formula, "answer": molar_mass(formula)}
    if difficulty == 2:
        formula = _random_formula(rng, 3, 4)
        return {"kind": "molar_mass", "formula": formula, "answer": molar_mass(formula)}
    if difficulty == 3:
        formula = _random_formula(rng, rng.choice((2, 3)), 3)
        grams = round(rng.uniform(1, 100), 1)
        return {"kind": "moles", "formula": formula, "grams": grams,
                "answer": grams / molar_mass(formula)}
    if difficulty == 4:
        reactants, products = rng.choice(REACTIONS)
        c_r, reactant = rng.choice(reactants)
        c_p, product = rng.choice(products)
        grams = round(rng.uniform(1, 100), 1)
        equation = f"{_reaction_text(reactants)} -> {_reaction_text(products)}"
        answer = grams / molar_mass(reactant) * c_p / c_r * molar_mass(product)
        return {"kind": "product_mass", "equation": equation, "reactant": reactant, "c_r": c_r,
                "product": product, "c_p": c_p, "grams": grams, "answer": answer}
    raise ValueError(f"{NAME}: unknown difficulty {difficulty}")


class StoichiometryEnv(ToolEnvironment):
    """One stoichiometry question; tools `mass(el)`, `calc(expr)`, `submit(answer)`."""

    def __init__(self, task: Task, **kwargs: Any):
        kwargs.setdefault("max_tool_calls", BUDGET.get(task.difficulty, 10))
        super().__init__(task, **kwargs)

    def prompt(self) -> str:
        d = self.task.data
        if d["kind"] == "molar_mass":
            return f"Molar mass of {d['formula']} in g/mol?"
        if d["kind"] == "moles":
            return f"Moles in {format_number(d['grams'])} g of {d['formula']}?"
        return (f"{d['equation']}. Grams of {d['product']} from "
                f"{format_number(d['grams'])} g of {d['reactant']}?")

    def make_tools(self) -> list[Tool]:
        return [Tool.from_function(self.mass, "mass"), Tool.from_function(calc),
                Tool.from_function(self.submit, "submit", ends_episode=True)]

    def mass(self, el: str) -> str:
        """Atomic mass of an element in g/mol.

        Args:
            el: Element symbol, e.g. Na.
        """
        if el not in ATOMIC_MASS:
            raise ValueError(f"unknown element '{el[:10]}'")
        return format_number(ATOMIC_MASS[el])

    def submit(self, answer: float) -> Reward:
        """Submit the final numeric answer; ends the episode.

        Args:
            answer: The number asked for.
        """
        return check_number(answer, self.task.data["answer"], rel_tol=REL_TOL)

    # What the reference solver needs; kept here so the solver and the task agree on the method.
    def formulas(self) -> list[str]:
        d = self.task.data
        return [d["formula"]] if "formula" in d else [d["reactant"], d["product"]]

    def solution_expression(self, masses: dict[str, str], subscripts: bool = True) -> str:
        """The one calculator expression that answers the task, from observed mass strings
        (`subscripts=False`: the novice's version, every element counted once)."""
        def mm(formula: str) -> str:
            return "+".join(masses[e] if n == 1 or not subscripts else f"{n}*{masses[e]}"
                            for e, n in parse_formula(formula))
        d = self.task.data
        if d["kind"] == "molar_mass":
            return mm(d["formula"])
        if d["kind"] == "moles":
            return f"{format_number(d['grams'])}/({mm(d['formula'])})"
        return (f"{format_number(d['grams'])}/({mm(d['reactant'])})*{d['c_p']}/{d['c_r']}"
                f"*({mm(d['product'])})")


async def reference_policy(env: Environment, history: list[Message]) -> Message:
    """Look up each element mass (one call a turn), compute with one `calc`, submit its result."""
    return _solve(env, history, subscripts=True)


async def novice_policy(env: Environment, history: list[Message]) -> Message:
    """The reference solver, except that it ignores subscripts in the calculator expression."""
    return _solve(env, history, subscripts=False)


def _solve(env: Environment, history: list[Message], subscripts: bool) -> Message:
    if not isinstance(env, StoichiometryEnv):
        raise TypeError(f"{NAME} reference policy needs a StoichiometryEnv, got {type(env).__name__}")
    needed: list[str] = []
    for formula in env.formulas():
        needed += [e for e, _ in parse_formula(formula) if e not in needed]
    known = {c.arguments.get("el"): out for c, out in successful_results(history, "mass")}
    missing = [e for e in needed if e not in known]
    if missing:
        return make_action(("mass", {"el": missing[0]}))
    return calc_then_submit(history, env.solution_expression(known, subscripts))


def make_dataset(num_train: int, num_heldout: int, difficulties: Sequence[int] = DIFFICULTIES,
                 seed: int = 0) -> TaskDataset:
    return TaskDataset.generate(NAME, generate_task, num_train, num_heldout, difficulties, seed)


SPEC = register_env(EnvSpec(
    name=NAME, make_dataset=make_dataset, make_env=StoichiometryEnv,
    reference_policy=reference_policy, novice_policy=novice_policy, difficulties=DIFFICULTIES,
    description="molar mass / moles / reaction stoichiometry with mass lookup and a calculator"))
