"""Calculator word problems: the novice who adds up every number in the story."""

from __future__ import annotations

import asyncio
import re

from envs.registry import get_env_spec
from envs.testing import play_episode


def test_novice_solver_adds_every_number_of_the_story() -> None:
    """The novice's one calc is the sum of the question's numbers; it is right exactly where that sum
    is the answer ("buys N more"), so a reference + novice mix leaves the operations to learn."""
    spec = get_env_spec("calculator_word_problems")
    assert spec.solver("novice") is spec.novice_policy
    outcomes = set()
    for task in spec.make_dataset(60, 0, (1, 2, 3), 0):
        record = asyncio.run(play_episode(spec.make_env(task), spec.novice_policy))
        numbers = [int(n) for n in re.findall(r"\d+", task.data["question"])]
        [call] = [c for m in record.messages for c in m.tool_calls if c.name == "calc"]
        assert call.arguments["expr"] == "+".join(map(str, numbers)), record.transcript()
        assert record.done and (record.reason == "correct") == (sum(numbers) == task.data["answer"])
        outcomes.add(record.reason)
    assert outcomes == {"correct", "wrong_value"}
