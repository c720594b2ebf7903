"""The text the kit's tokenizer is trained on, generated here from the project itself (no downloads).

Why generate it: the tokenizer should spend its vocabulary on what the policy will read and write.
So most of the corpus is environment episodes (prompts of every difficulty, tool outputs, the
reference solvers' calls), rendered with the kit's chat template, plus their JSON tool schemas and
tool calls in the canonical `<tool_call>{json}</tool_call>` form. A share of general English and
number text keeps ordinary words and numerals cheap too. Everything is drawn from seeded
generators, so the same arguments always give the same documents.

The episodes come in as plain chat dicts (`ChatEpisode`): `models` and `envs` are independent
layers (pyproject's import-linter contract), so whoever builds a kit model plays the bundled
environments' reference solvers and hands their transcripts in (see tests/models/conftest.py).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

from models.chat_template import format_call, render_chat

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CorpusSpec:
    """How much of each kind of text to generate."""

    english_sentences: int = 600
    number_lines: int = 300
    synthetic_calls: int = 200
    seed: int = 0


@dataclass(frozen=True)
class ChatEpisode:
    """One transcript: chat-template message dicts and the OpenAI tool schemas it was played with."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)


def episode_documents(episodes: Sequence[ChatEpisode]) -> list[str]:
    """Rendered episodes (every other one without the tools block, as prompts vary), then each
    distinct tool schema as compact JSON (as the template shows them) and indented."""
    docs = [render_chat(e.messages, e.tools if i % 2 == 0 else None) for i, e in enumerate(episodes)]
    schemas = sorted({json.dumps(s.get("function", s)) for e in episodes for s in e.tools})
    docs += schemas
    docs += [json.dumps(json.loads(s), indent=2) for s in schemas]
    return docs


_NAMES = ["alice", "bob", "the chemist", "a student", "the team", "my sister", "our lab", "the pilot",
          "a farmer", "the teacher", "the model", "everyone", "nobody", "the engineer", "the crew"]
_VERBS = ["measured", "counted", "mixed", "weighed", "wrote down", "checked", "found", "sold",
          "bought", "painted", "opened", "carried", "compared", "repaired", "cooked", "planted"]
_OBJECTS = ["the samples", "three apples", "a blue box", "the old bridge", "some water", "the results",
            "twelve bottles", "the recipe", "a long letter", "the map", "two bags of rice", "the data",
            "a small boat", "the garden", "the report", "every answer"]
_PLACES = ["in the morning", "after lunch", "at the market", "near the river", "before the test",
           "in the kitchen", "on Tuesday", "during the storm", "at night", "in the laboratory"]
_LINKS = ["because", "although", "so", "and then", "but", "while", "until", "since"]
_CLAUSES = ["it was raining", "the price went up", "the answer looked wrong", "they were tired",
            "the machine was slow", "the door was open", "nobody else came", "the numbers matched"]
_QUESTIONS = ["How many {o} are left?", "Why did {n} stop?", "What is the total?", "Where did {n} go?",
              "Which one is heavier?", "Is the result correct?", "Can you check {o}?"]


def _sentence(rng: random.Random) -> str:
    n, v, o, p = (rng.choice(x) for x in (_NAMES, _VERBS, _OBJECTS, _PLACES))
    kind = rng.randrange(4)
    if kind == 0:
        text = f"{n} {v} {o} {p}."
    elif kind == 1:
        text = f"{p.capitalize()}, {n} {v} {o} {rng.choice(_LINKS)} {rng.choice(_CLAUSES)}."
    elif kind == 2:
        text = rng.choice(_QUESTIONS).format(n=n, o=o)
    else:
        text = f"{n} {v} {rng.randint(2, 999)} items, {rng.choice(_LINKS)} {rng.choice(_CLAUSES)}."
    return text[0].upper() + text[1:]


def english_documents(rng: random.Random, count: int) -> list[str]:
    """`count` sentences in paragraphs of 3 to 8."""
    sentences = [_sentence(rng) for _ in range(count)]
    docs, i = [], 0
    while i < len(sentences):
        k = rng.randint(3, 8)
        docs.append(" ".join(sentences[i:i + k]))
        i += k
    return docs


def _number(rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        return str(rng.randint(0, 100000))
    if kind == 1:
        return f"{rng.uniform(-1000, 1000):.{rng.randint(1, 4)}f}"
    if kind == 2:
        return f"{rng.uniform(1, 10):.3g}e{rng.randint(-12, 12)}"
    if kind == 3:
        return f"{rng.randint(1, 99)}/{rng.randint(2, 99)}"
    return f"{rng.randint(0, 100)}%"


def number_documents(rng: random.Random, count: int) -> list[str]:
    """Arithmetic with results, measurements with units, and lists of numbers."""
    units = ["g", "mol", "g/mol", "km", "km/h", "s", "mL", "kcal/mol", "bp", "°C"]
    lines = []
    for _ in range(count):
        a, b = rng.randint(1, 999), rng.randint(1, 99)
        op, value = rng.choice([("+", a + b), ("-", a - b), ("*", a * b), ("/", round(a / b, 4))])
        kind = rng.randrange(3)
        if kind == 0:
            lines.append(f"{a} {op} {b} = {value}")
        elif kind == 1:
            lines.append(f"The value is {_number(rng)} {rng.choice(units)}.")
        else:
            lines.append(", ".join(_number(rng) for _ in range(rng.randint(3, 8))))
    return ["\n".join(lines[i:i + 10]) for i in range(0, len(lines), 10)]


def _random_arguments(rng: random.Random) -> dict[str, Any]:
    keys = ["x", "y", "expr", "answer", "query", "el", "seq", "n", "unit", "muts"]
    values = [lambda: rng.randint(-50, 500), lambda: round(rng.uniform(0, 100), 3),
              lambda: rng.choice(["H2O", "NaCl", "2*3+4", "GATTACA", "K2A", "é"]),
              lambda: rng.random() < 0.5, lambda: [rng.randint(0, 9) for _ in range(3)]]
    return {k: rng.choice(values)() for k in rng.sample(keys, rng.randint(0, 3))}


def synthetic_call_documents(rng: random.Random, count: int) -> list[str]:
    """Assistant texts with 1 to 3 canonical calls of made-up tools (some without arguments)."""
    names = ["lookup", "search", "convert", "get_time", "list_files", "measure", "calc", "submit", "probe"]
    docs = []
    for i in range(count):
        calls = [format_call(rng.choice(names), _random_arguments(rng)) for _ in range(rng.randint(1, 3))]
        lead = _sentence(rng) + " " if i % 3 == 0 else ""
        docs.append(lead + "".join(calls))
    return docs


def build_corpus(episodes: Sequence[ChatEpisode] = (), spec: CorpusSpec = CorpusSpec(),
                 extra: Sequence[str] = ()) -> list[str]:
    """The documents the tokenizer is trained on, in a fixed order for given arguments.

    `extra` is any further text the caller has (project docs, say). The generated text has a small
    lexicon, so it alone supports about 1.5k tokens; larger vocabularies need varied `extra` text.
    """
    rng = random.Random(f"labrl-corpus:{spec.seed}")
    docs = episode_documents(episodes)
    n_episode_docs = len(docs)
    docs += english_documents(rng, spec.english_sentences)
    docs += number_documents(rng, spec.number_lines)
    docs += synthetic_call_documents(rng, spec.synthetic_calls)
    docs += list(extra)
    logger.info("corpus: %d documents (%d from environments), %d characters", len(docs),
                n_episode_docs, sum(len(d) for d in docs))
    return docs
