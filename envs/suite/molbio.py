"""Molecular biology: reverse complements, translation, and restriction digests, verified exactly.

Tools work over bundled tables: the standard genetic code and a restriction-enzyme table (name ->
recognition site and the cut offset on the top strand). The agent does the bookkeeping; the tools
do single lookups or transformations, so each level needs a short chain of calls.

Difficulty 1: reverse complement of a short sequence (`comp`, then `rev`).
Difficulty 2: translate a short open reading frame (`codon` per codon).
Difficulty 3: fragment sizes of a linear sequence cut by one enzyme (`site`, `cuts`).
Difficulty 4: the same with two enzymes (double digest).
"""

from __future__ import annotations

import random
import re
from itertools import product
from typing import Any, Sequence

from envs.core import Environment, Message, Reward
from envs.dataset import Task, TaskDataset
from envs.registry import EnvSpec, register_env
from envs.tool_env import ToolEnvironment, make_action, successful_results
from envs.tools import Tool

NAME = "molbio"
DIFFICULTIES = (1, 2, 3, 4)
BUDGET = {1: 5, 2: 8, 3: 6, 4: 8}
BASES = "ACGT"
COMPLEMENT = {"A": "T", "C": "G", "G": "C", "T": "A"}
MAX_SEQ = 200

# Standard genetic code: codons in TCAG order, one amino-acid letter each ('*' = stop).
_AA = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
CODON_TABLE: dict[str, str] = {"".join(c): aa for c, aa in zip(product("TCAG", repeat=3), _AA)}
STOP_CODONS = [c for c, aa in CODON_TABLE.items() if aa == "*"]
SENSE_CODONS = [c for c, aa in CODON_TABLE.items() if aa != "*" and c != "ATG"]

# Restriction enzymes: recognition site and where the top strand is cut (bases after the site start).
ENZYMES: dict[str, tuple[str, int]] = {
    "EcoRI": ("GAATTC", 1), "BamHI": ("GGATCC", 1), "HindIII": ("AAGCTT", 1),
    "XhoI": ("CTCGAG", 1), "PstI": ("CTGCAG", 5), "SmaI": ("CCCGGG", 3), "KpnI": ("GGTACC", 5),
    "SacI": ("GAGCTC", 5), "EcoRV": ("GATATC", 3), "NcoI": ("CCATGG", 1), "NdeI": ("CATATG", 2),
    "XbaI": ("TCTAGA", 1), "SalI": ("GTCGAC", 1), "SpeI": ("ACTAGT", 1), "ClaI": ("ATCGAT", 2),
    "NotI": ("GCGGCCGC", 2),
}
_SITE_RE = re.compile(r"^[ACGT]+\^[ACGT]+$")


def reverse_complement(seq: str) -> str:
    return "".join(COMPLEMENT[b] for b in reversed(seq))


def _check_dna(seq: str) -> str:
    seq = seq.strip().upper()
    if not seq or len(seq) > MAX_SEQ or any(b not in COMPLEMENT for b in seq):
        raise ValueError("sequence must be A/C/G/T only")
    return seq


def site_text(enzyme: str) -> str:
    """The recognition site with '^' at the top-strand cut, e.g. 'G^AATTC'."""
    site, offset = ENZYMES[enzyme]
    return site[:offset] + "^" + site[offset:]


def cut_positions(seq: str, site: str, offset: int) -> list[int]:
    """Top-strand cut positions (bases left of each cut) of every occurrence of `site` in `seq`."""
    return [m.start() + offset for m in re.finditer(f"(?={site})", seq)]


def fragment_sizes(length: int, cuts: Sequence[int]) -> list[int]:
    """Sizes of the linear fragments, left to right, for cuts at the given positions."""
    edges = [0, *sorted(set(cuts)), length]
    return [b - a for a, b in zip(edges, edges[1:]) if b > a]


def _random_dna(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(BASES) for _ in range(n))


def _digest_task(rng: random.Random, n_enzymes: int) -> dict[str, Any]:
    enzymes = rng.sample(sorted(ENZYMES), n_enzymes)
    copies = {e: 1 for e in enzymes}
    if n_enzymes == 1 and rng.random() < 0.5:  # sometimes the same site twice
        copies[enzymes[0]] = 2
    order = [e for e in enzymes for _ in range(copies[e])]
    while True:  # random DNA around the sites, redrawn until no site occurs by chance
        pieces = [_random_dna(rng, rng.randint(2, 6))]
        for name in order:
            pieces += [ENZYMES[name][0], _random_dna(rng, rng.randint(2, 6))]
        seq = "".join(pieces)
        counts = {e: len(cut_positions(seq, ENZYMES[e][0], 0)) for e in ENZYMES}
        if all(counts[e] == copies.get(e, 0) for e in ENZYMES):
            break
    cuts = [c for e in enzymes for c in cut_positions(seq, *ENZYMES[e])]
    return {"kind": "digest", "seq": seq, "enzymes": enzymes,
            "answer": sorted(fragment_sizes(len(seq), cuts))}


def generate_task(rng: random.Random, difficulty: int) -> dict[str, Any]:
    if difficulty == 1:
        seq = _random_dna(rng, rng.randint(6, 10))
        return {"kind": "revcomp", "seq": seq, "answer": reverse_complement(seq)}
    if difficulty == 2:
        codons = ["ATG"] + [rng.choice(SENSE_CODONS) for _ in range(rng.randint(1, 2))]
        codons.append(rng.choice(STOP_CODONS))
        seq = "".join(codons)
        return {"kind": "translate", "seq": seq, "answer": "".join(CODON_TABLE[c] for c in codons[:-1])}
    if difficulty == 3:
        return _digest_task(rng, 1)
    if difficulty == 4:
        return _digest_task(rng, 2)
    raise ValueError(f"{NAME}: unknown difficulty {difficulty}")


class MolBioEnv(ToolEnvironment):
    """One molecular-biology question; tools depend on the kind of task."""

    def __init__(self, task: Task, **kwargs: Any):
        kwargs.setdefault("max_tool_calls", BUDGET.get(task.difficulty, 8))
        super().__init__(task, **kwargs)

    def prompt(self) -> str:
        d = self.task.data
        if d["kind"] == "revcomp":
            return f"Reverse complement of {d['seq']}?"
        if d["kind"] == "translate":
            return f"Protein (1-letter) encoded by {d['seq']}?"
        return f"{'+'.join(d['enzymes'])} digest of {d['seq']}: fragment sizes?"

    def make_tools(self) -> list[Tool]:
        kind = self.task.data["kind"]
        named = {"revcomp": [self.comp, self.rev], "translate": [self.codon],
                 "digest": [self.site, self.cuts]}[kind]
        return [Tool.from_function(f, f.__name__) for f in named] + [
            Tool.from_function(self.submit, "submit", ends_episode=True)]

    def comp(self, seq: str) -> str:
        """Complement of a DNA sequence (A<->T, C<->G), same order.

        Args:
            seq: DNA sequence.
        """
        return "".join(COMPLEMENT[b] for b in _check_dna(seq))

    def rev(self, seq: str) -> str:
        """A sequence reversed.

        Args:
            seq: Sequence.
        """
        return seq.strip()[::-1]

    def codon(self, c: str) -> str:
        """Amino acid (1-letter, * = stop) of a codon.

        Args:
            c: Three DNA bases.
        """
        c = c.strip().upper()
        if c not in CODON_TABLE:
            raise ValueError("codon must be 3 bases of A/C/G/T")
        return CODON_TABLE[c]

    def site(self, enzyme: str) -> str:
        """Recognition site of an enzyme, ^ marks the cut.

        Args:
            enzyme: Enzyme name, e.g. EcoRI.
        """
        if enzyme not in ENZYMES:
            raise ValueError(f"unknown enzyme '{enzyme[:12]}'")
        return site_text(enzyme)

    def cuts(self, seq: str, site: str) -> str:
        """Cut positions of a site in a sequence, and its length.

        Args:
            seq: DNA sequence.
            site: Site with ^ at the cut, e.g. G^AATTC.
        """
        seq, site = _check_dna(seq), site.strip().upper()
        if not _SITE_RE.match(site):
            raise ValueError("site must look like G^AATTC")
        offset = site.index("^")
        positions = cut_positions(seq, site.replace("^", ""), offset)
        return f"cuts {','.join(map(str, positions)) or 'none'} len {len(seq)}"

    def submit(self, answer: str) -> Reward:
        """Submit the answer (sequence, protein, or sizes like 5,12); ends the episode.

        Args:
            answer: The answer.
        """
        d = self.task.data
        if d["kind"] == "digest":
            try:
                sizes = sorted(int(x) for x in answer.replace(" ", "").split(",") if x)
            except ValueError:
                return Reward(0.0, "wrong_value")
            return Reward(1.0, "correct") if sizes == d["answer"] else Reward(0.0, "wrong_value")
        ok = answer.strip().upper() == d["answer"]
        return Reward(1.0, "correct") if ok else Reward(0.0, "wrong_value")


def _parse_cuts(text: str) -> tuple[list[int], int]:
    match = re.fullmatch(r"cuts ([\d,]+|none) len (\d+)", text)
    if not match:
        raise ValueError(f"unexpected cuts output {text!r}")
    cuts = [] if match.group(1) == "none" else [int(x) for x in match.group(1).split(",")]
    return cuts, int(match.group(2))


async def reference_policy(env: Environment, history: list[Message]) -> Message:
    """Solve from observations: comp then rev; codon per codon; site then cuts per enzyme."""
    if not isinstance(env, MolBioEnv):
        raise TypeError(f"{NAME} reference policy needs a MolBioEnv, got {type(env).__name__}")
    d = env.task.data
    if d["kind"] == "revcomp":
        comp = [out for c, out in successful_results(history, "comp") if c.arguments.get("seq") == d["seq"]]
        if not comp:
            return make_action(("comp", {"seq": d["seq"]}))
        rev = [out for c, out in successful_results(history, "rev") if c.arguments.get("seq") == comp[-1]]
        if not rev:
            return make_action(("rev", {"seq": comp[-1]}))
        return make_action(("submit", {"answer": rev[-1]}))
    if d["kind"] == "translate":
        codons = [d["seq"][i:i + 3] for i in range(0, len(d["seq"]) - 2, 3)]
        known = {c.arguments.get("c"): out for c, out in successful_results(history, "codon")}
        missing = [c for c in dict.fromkeys(codons) if c not in known]
        if missing:
            return make_action(("codon", {"c": missing[0]}))
        protein = ""
        for c in codons:
            if known[c] == "*":
                break
            protein += known[c]
        return make_action(("submit", {"answer": protein}))
    sites = {c.arguments.get("enzyme"): out for c, out in successful_results(history, "site")}
    missing = [e for e in d["enzymes"] if e not in sites]
    if missing:
        return make_action(("site", {"enzyme": missing[0]}))
    found = {c.arguments.get("site"): out for c, out in successful_results(history, "cuts")
             if c.arguments.get("seq") == d["seq"]}
    todo = [sites[e] for e in d["enzymes"] if sites[e] not in found]
    if todo:
        return make_action(("cuts", {"seq": d["seq"], "site": todo[0]}))
    all_cuts: list[int] = []
    length = len(d["seq"])
    for e in d["enzymes"]:
        cuts, length = _parse_cuts(found[sites[e]])
        all_cuts += cuts
    sizes = fragment_sizes(length, all_cuts)
    return make_action(("submit", {"answer": ",".join(map(str, sizes))}))


def make_dataset(num_train: int, num_heldout: int, difficulties: Sequence[int] = DIFFICULTIES,
                 seed: int = 0) -> TaskDataset:
    return TaskDataset.generate(NAME, generate_task, num_train, num_heldout, difficulties, seed)


SPEC = register_env(EnvSpec(
    name=NAME, make_dataset=make_dataset, make_env=MolBioEnv,
    reference_policy=reference_policy, difficulties=DIFFICULTIES,
    description="reverse complement, ORF translation and restriction digests over bundled tables"))
