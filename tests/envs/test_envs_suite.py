"""Every registered environment: the reference solver is perfect, a random policy is not, nothing raises."""

from __future__ import annotations

import asyncio
import string

import pytest

from envs.parsing import format_assistant
from envs.registry import get_env_spec, list_envs
from envs.testing import play_episode, random_policy

ENV_NAMES = list_envs(configurable=False)  # the bundled suite; the adapters have their own tests
TASKS_PER_LEVEL = 4


@pytest.mark.parametrize("name", ENV_NAMES)
def test_reference_policy_solves_every_level(name: str) -> None:
    spec = get_env_spec(name)
    assert len(spec.difficulties) >= 3
    dataset = spec.make_dataset(TASKS_PER_LEVEL * len(spec.difficulties), 2 * len(spec.difficulties),
                                spec.difficulties, 1)
    for split in ("train", "heldout"):
        for level in spec.difficulties:
            tasks = dataset.tasks(split, level)
            assert tasks, (name, split, level)
            for task in tasks:
                record = asyncio.run(play_episode(spec.make_env(task), spec.reference_policy))
                assert record.reward == 1.0 and record.reason == "correct", record.transcript()
                assert record.done and not record.truncated
                assert not any(m.is_error for m in record.messages), record.transcript()


@pytest.mark.parametrize("name", ENV_NAMES)
def test_difficulty_one_is_short(name: str) -> None:
    """The tiny CPU model has a 512-token character context: level 1 must be short."""
    spec = get_env_spec(name)
    dataset = spec.make_dataset(8, 0, (1,), 2)
    for task in dataset:
        record = asyncio.run(play_episode(spec.make_env(task), spec.reference_policy))
        assert len(record.messages[0].content) <= 80, record.messages[0].content
        calls = [c for m in record.messages if m.role == "assistant" for c in m.tool_calls]
        assert 2 <= len(calls) <= 4 and record.turns <= 4, record.transcript()
        # A turn must fit the default agent loop's 96 new tokens with the tiny tokenizer, where
        # <tool_call> and </tool_call> are one token each.
        turns = [format_assistant(m) for m in record.messages if m.role == "assistant"]
        assert all(len(t) <= 96 for t in turns), record.transcript()
        assert all(len(m.content) <= 40 for m in record.messages if m.role == "tool"), record.transcript()
        assert all(len(t.name) <= 8 for t in record.tools)
        printable = set(string.printable)  # the tiny model's vocabulary
        assert all(set(m.content) <= printable for m in record.messages), record.transcript()


@pytest.mark.parametrize("name", ENV_NAMES)
def test_random_policy_earns_little_and_never_crashes(name: str) -> None:
    spec = get_env_spec(name)
    dataset = spec.make_dataset(3 * len(spec.difficulties), 0, spec.difficulties, 3)
    rewards = []
    for i, task in enumerate(dataset):
        record = asyncio.run(play_episode(spec.make_env(task), random_policy(i), max_turns=64))
        assert record.done, record.transcript()
        rewards.append(record.reward)
    assert sum(rewards) / len(rewards) <= 0.25, rewards


@pytest.mark.parametrize("name", ENV_NAMES)
def test_datasets_are_deterministic_and_disjoint(name: str) -> None:
    spec = get_env_spec(name)
    a = spec.make_dataset(12, 6, spec.difficulties, 7)
    b = spec.make_dataset(12, 6, spec.difficulties, 7)
    assert [t.to_dict() for t in a] == [t.to_dict() for t in b]
    train = {repr(sorted(t.data.items())) for t in a.tasks("train")}
    held = {repr(sorted(t.data.items())) for t in a.tasks("heldout")}
    assert not train & held
    assert a.tasks("heldout") == spec.make_dataset(30, 6, spec.difficulties, 7).tasks("heldout")
