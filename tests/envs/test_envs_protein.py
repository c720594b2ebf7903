"""protein_stability: mutation parsing, the binary and continuous rewards."""

from __future__ import annotations

import asyncio

import pytest

from envs.registry import get_env_spec
from envs.suite.protein_stability import ProteinStabilityEnv, parse_mutations
from envs.tool_env import make_action


@pytest.mark.parametrize("text", ["", "K2", "X2A", "M9A", "M1M", "M1Z", "M1A,M1C", "M1A,K2A,V3A,L4A"])
def test_bad_mutations_raise(text: str) -> None:
    with pytest.raises(ValueError):
        parse_mutations("MKVL", text)


def test_mutations_parse_sorted() -> None:
    assert parse_mutations("MKVL", "v3i, k2a") == [(1, "A"), (2, "I")]


def _level(level: int, continuous: bool = False) -> ProteinStabilityEnv:
    task = get_env_spec("protein_stability").make_dataset(1, 0, (level,), 11)[0]
    env = ProteinStabilityEnv(task, continuous=continuous)
    asyncio.run(env.reset())
    return env


def _submit(env: ProteinStabilityEnv, muts: str):
    return asyncio.run(env.step(make_action(("submit", {"muts": muts}))))


def test_level_one_rewards_only_the_stabilising_candidate() -> None:
    env = _level(1)
    good, bad = sorted(env.task.data["candidates"], key=lambda m: env.landscape.ddg(parse_mutations(env.task.data["seq"], m)))
    [obs], reward, done, _ = _submit(env, bad)
    assert done and reward.reason == "wrong_value"
    [obs], reward, done, _ = _submit(_level(1), good)
    assert done and reward.reason == "correct" and float(reward) == 1.0


def test_invalid_submission_is_a_tool_error() -> None:
    env = _level(3)
    [obs], reward, done, _ = _submit(env, "Z9Q")
    assert obs.is_error and reward.reason == "tool_error" and not done


def test_continuous_reward_is_the_fraction_of_the_best() -> None:
    env = _level(3, continuous=True)
    seq, best = env.task.data["seq"], env.task.data["best"]
    singles = [(i, a) for i in range(len(seq)) for a in "ACDEFGHIKLMNPQRSTVWY" if a != seq[i]]
    partial = next(m for m in singles if best < env.landscape.ddg([m]) < 0)
    [obs], reward, done, _ = _submit(env, f"{seq[partial[0]]}{partial[0] + 1}{partial[1]}")
    assert done and reward.reason == "partial"
    assert float(reward) == pytest.approx(env.landscape.ddg([partial]) / best)
