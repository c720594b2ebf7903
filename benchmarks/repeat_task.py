"""The single-turn "repeat this string" task shared by both sides of `benchmarks.trl_compare`.

Dependency-free on purpose: TRL's own virtual environment imports it too, so the labrl environment
and TRL's reward function score completions with the very same code.
"""

from __future__ import annotations

import random
import string

LETTERS = string.ascii_lowercase


def make_target(rng: random.Random, min_len: int = 6, max_len: int = 12) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(min_len, max_len)))


def prompt_text(target: str) -> str:
    """The user message that states the task."""
    return f"Repeat: {target}"


def repeat_score(completion: str, target: str) -> tuple[float, str]:
    """(reward in [0, 1], reason): matching characters position by position over the longer length."""
    text = completion.strip()
    if text == target:
        return 1.0, "correct"
    hits = sum(a == b for a, b in zip(text, target))
    score = hits / max(len(text), len(target), 1)
    return score, ("partial" if score > 0 else "wrong_value")
