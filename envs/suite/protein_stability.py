"""Protein stability: find stabilising mutations on a hidden additive + pairwise-epistasis landscape.

ddG(variant) = sum of per-mutation effects + sum of pairwise epistasis terms; negative ddG means
more stable. `measure(muts)` returns a noisy ddG within the tool budget; `submit(muts)` is scored
on the true ddG: reward 1 when it is negative, or, with `continuous=True`, the fraction of the
best achievable stabilisation (reason `partial` between 0 and 1).

Difficulty 1: two candidate single mutations, exactly one stabilising; submit it.
Difficulty 2: three candidates; submit a stabilising double mutant made of two of them
              (epistasis can make two good singles a bad pair).
Difficulty 3: no candidates; any 1 to 3 mutations of an 8-residue sequence.
Mutations are written like K2A (wild type, 1-based position, new residue), comma-separated.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import partial
from itertools import combinations
from typing import Any, Sequence

from envs.core import Environment, Message, Reward
from envs.dataset import Task, TaskDataset
from envs.registry import EnvSpec, register_env
from envs.safe_math import parse_number
from envs.tool_env import ToolEnvironment, make_action, successful_results
from envs.tools import Tool

NAME = "protein_stability"
DIFFICULTIES = (1, 2, 3)
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
LENGTH = {1: 4, 2: 6, 3: 8}
BUDGET = {1: 4, 2: 6, 3: 6}
NOISE = {1: 0.05, 2: 0.05, 3: 0.1}
MARGIN = 0.3  # every ddG the reference relies on is at least this far from zero
MAX_MUTATIONS = 3
_MUT_RE = re.compile(r"^([A-Z])(\d{1,3})([A-Z])$")

Mutation = tuple[int, str]  # (0-based position, new residue)


@dataclass(frozen=True)
class Landscape:
    """The hidden ddG landscape, rebuilt from a seed so tasks stay small and serialisable."""

    seq: str
    seed: int

    def single(self, pos: int, aa: str) -> float:
        return random.Random(f"{self.seed}:s:{pos}:{aa}").gauss(0.8, 1.0)

    def pair(self, a: Mutation, b: Mutation) -> float:
        (i, x), (j, y) = sorted((a, b))
        rng = random.Random(f"{self.seed}:p:{i}:{x}:{j}:{y}")
        return rng.gauss(0.0, 0.8) if rng.random() < 0.3 else 0.0

    def ddg(self, muts: Sequence[Mutation]) -> float:
        return (sum(self.single(p, aa) for p, aa in muts)
                + sum(self.pair(a, b) for a, b in combinations(muts, 2)))


def mutation_text(seq: str, mut: Mutation) -> str:
    return f"{seq[mut[0]]}{mut[0] + 1}{mut[1]}"


def parse_mutations(seq: str, text: str) -> list[Mutation]:
    """Mutations from text like 'K2A,V3I'; raises ValueError (model-facing) when invalid."""
    parts = [p.strip().upper() for p in text.split(",") if p.strip()]
    if not parts or len(parts) > MAX_MUTATIONS:
        raise ValueError(f"give 1 to {MAX_MUTATIONS} mutations like K2A")
    muts: list[Mutation] = []
    for part in parts:
        match = _MUT_RE.match(part)
        if not match:
            raise ValueError(f"bad mutation '{part[:8]}'")
        wt, pos, new = match.group(1), int(match.group(2)) - 1, match.group(3)
        if not 0 <= pos < len(seq) or seq[pos] != wt:
            raise ValueError(f"'{part}': residue {pos + 1} is not {wt}")
        if new not in AMINO_ACIDS or new == wt:
            raise ValueError(f"'{part}': bad new residue")
        if any(p == pos for p, _ in muts):
            raise ValueError("one mutation per position")
        muts.append((pos, new))
    return sorted(muts)


def _random_single(rng: random.Random, seq: str, taken: set[int]) -> Mutation:
    pos = rng.choice([i for i in range(len(seq)) if i not in taken])
    return pos, rng.choice([a for a in AMINO_ACIDS if a != seq[pos]])


def _all_singles(seq: str) -> list[Mutation]:
    return [(i, a) for i in range(len(seq)) for a in AMINO_ACIDS if a != seq[i]]


def generate_task(rng: random.Random, difficulty: int) -> dict[str, Any]:
    if difficulty not in LENGTH:
        raise ValueError(f"{NAME}: unknown difficulty {difficulty}")
    while True:
        seq = "M" + "".join(rng.choice(AMINO_ACIDS) for _ in range(LENGTH[difficulty] - 1))
        land = Landscape(seq, rng.getrandbits(32))
        data = _candidates(rng, land, difficulty)
        if data is not None:
            return {"seq": seq, "landscape_seed": land.seed, "noise": NOISE[difficulty], **data}


def _candidates(rng: random.Random, land: Landscape, difficulty: int) -> dict[str, Any] | None:
    """Candidates and the best reachable ddG for one landscape, or None to redraw it."""
    seq = land.seq
    if difficulty == 1:
        a = _random_single(rng, seq, set())
        b = _random_single(rng, seq, {a[0]})
        ddgs = sorted((land.ddg([m]), m) for m in (a, b))
        if not (ddgs[0][0] <= -MARGIN and ddgs[1][0] >= MARGIN):
            return None
        cands = [a, b]
        return {"candidates": [mutation_text(seq, m) for m in cands], "n_muts": 1, "best": ddgs[0][0]}
    if difficulty == 2:
        cands = []
        for _ in range(3):
            cands.append(_random_single(rng, seq, {p for p, _ in cands}))
        pair_ddgs = sorted(land.ddg(list(p)) for p in combinations(cands, 2))
        # A clear best pair: stabilising and MARGIN ahead of the others, none of them near zero.
        if (pair_ddgs[0] > -MARGIN or any(abs(d) < MARGIN for d in pair_ddgs)
                or pair_ddgs[1] - pair_ddgs[0] < MARGIN):
            return None
        return {"candidates": [mutation_text(seq, m) for m in cands], "n_muts": 2, "best": min(pair_ddgs)}
    best = min(land.ddg([m]) for m in _all_singles(seq))
    if best > -MARGIN:
        return None
    return {"candidates": [], "n_muts": 0, "best": best}


class ProteinStabilityEnv(ToolEnvironment):
    """Stabilise a short protein; tools `measure(muts)` and `submit(muts)`."""

    def __init__(self, task: Task, continuous: bool = False, **kwargs: Any):
        kwargs.setdefault("max_tool_calls", BUDGET.get(task.difficulty, 6))
        self.continuous = continuous
        super().__init__(task, **kwargs)
        self.landscape = Landscape(task.data["seq"], task.data["landscape_seed"])
        self._noise = random.Random(f"{task.seed}:noise")

    def prompt(self) -> str:
        d = self.task.data
        if d["n_muts"] == 1:
            return f"Seq {d['seq']}. Which mutation is stabilizing: {' or '.join(d['candidates'])}?"
        if d["n_muts"] == 2:
            return f"Seq {d['seq']}. Submit 2 of {','.join(d['candidates'])} that together stabilize."
        return f"Seq {d['seq']}. Find 1-3 stabilizing mutations (like K2A)."

    def make_tools(self) -> list[Tool]:
        return [Tool.from_function(self.measure, "measure"),
                Tool.from_function(self.submit, "submit", ends_episode=True)]

    def measure(self, muts: str) -> str:
        """Measure ddG of a variant (negative = more stable).

        Args:
            muts: Mutations like K2A or K2A,V3I.
        """
        variant = parse_mutations(self.task.data["seq"], muts)
        value = self.landscape.ddg(variant) + self._noise.gauss(0.0, self.task.data["noise"])
        return f"ddG={value:.2f}"

    def submit(self, muts: str) -> Reward:
        """Submit your variant; ends the episode.

        Args:
            muts: Mutations like K2A or K2A,V3I.
        """
        d = self.task.data
        variant = parse_mutations(d["seq"], muts)
        if d["n_muts"]:
            allowed = {m for m in d["candidates"]}
            if len(variant) != d["n_muts"] or any(mutation_text(d["seq"], m) not in allowed for m in variant):
                return Reward(0.0, "wrong_value")
        true = self.landscape.ddg(variant)
        if not self.continuous:
            return Reward(1.0, "correct") if true < 0 else Reward(0.0, "wrong_value")
        score = max(0.0, min(1.0, true / d["best"]))
        return Reward(score, "correct" if score >= 1.0 else "partial" if score > 0 else "wrong_value")


def _reference_targets(env: ProteinStabilityEnv) -> list[str]:
    """The variants a perfect solver measures: every allowed one at levels 1-2, the best single
    (read from the hidden landscape, as a perfect solver would know it) at level 3."""
    d = env.task.data
    if d["n_muts"] == 1:
        return list(d["candidates"])
    if d["n_muts"] == 2:
        return [",".join(pair) for pair in combinations(d["candidates"], 2)]
    best = min(_all_singles(d["seq"]), key=lambda m: env.landscape.ddg([m]))
    return [mutation_text(d["seq"], best)]


async def reference_policy(env: Environment, history: list[Message]) -> Message:
    """Measure the target variants (one call a turn), then submit the one measured most stable."""
    if not isinstance(env, ProteinStabilityEnv):
        raise TypeError(f"{NAME} reference policy needs a ProteinStabilityEnv, got {type(env).__name__}")
    targets = _reference_targets(env)
    measured: dict[str, float] = {}
    for call, out in successful_results(history, "measure"):
        value = parse_number(out)
        if value is not None:
            measured[call.arguments["muts"]] = float(value)
    missing = [t for t in targets if t not in measured]
    if missing:
        return make_action(("measure", {"muts": missing[0]}))
    return make_action(("submit", {"muts": min(targets, key=lambda t: measured[t])}))


def make_dataset(num_train: int, num_heldout: int, difficulties: Sequence[int] = DIFFICULTIES,
                 seed: int = 0, name: str = NAME) -> TaskDataset:
    return TaskDataset.generate(name, generate_task, num_train, num_heldout, difficulties, seed)


def make_spec(continuous: bool = False) -> EnvSpec:
    """The environment's spec; `continuous=True` rewards the fraction of the best stabilisation."""
    name = NAME + ("_continuous" if continuous else "")
    return EnvSpec(
        name=name, make_dataset=partial(make_dataset, name=name),
        make_env=lambda task: ProteinStabilityEnv(task, continuous=continuous),
        reference_policy=reference_policy, difficulties=DIFFICULTIES,
        description="find stabilising mutations on a hidden epistatic ddG landscape",
        defaults={"continuous": continuous})


SPEC = register_env(make_spec())
CONTINUOUS_SPEC = register_env(make_spec(continuous=True))
