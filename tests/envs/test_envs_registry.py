"""Registry look-ups (names and import paths) and task datasets."""

from __future__ import annotations

import random

import pytest

from envs import registry
from envs.dataset import Task, TaskDataset
from envs.registry import (EnvSpec, UnknownEnvironmentError, get_env_spec, list_envs, register_env,
                           register_env_factory)
from envs.suite import stoichiometry


def spec_factory() -> EnvSpec:
    return stoichiometry.SPEC


def test_names_and_import_paths() -> None:
    assert "stoichiometry" in list_envs()
    assert get_env_spec("stoichiometry") is stoichiometry.SPEC
    assert get_env_spec("envs.suite.stoichiometry:SPEC") is stoichiometry.SPEC
    assert get_env_spec("envs.suite.stoichiometry.SPEC") is stoichiometry.SPEC
    assert get_env_spec(f"{__name__}:spec_factory") is stoichiometry.SPEC


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(UnknownEnvironmentError, match="known: .*stoichiometry"):
        get_env_spec("alchemy")
    with pytest.raises(UnknownEnvironmentError, match="cannot load"):
        get_env_spec("envs.suite.stoichiometry:NOPE")
    with pytest.raises(UnknownEnvironmentError, match="not an EnvSpec"):
        get_env_spec("envs.suite.stoichiometry:NAME")
    with pytest.raises(UnknownEnvironmentError):
        get_env_spec("no_such_pkg.mod:SPEC")


def test_register_refuses_a_second_spec_under_a_name() -> None:
    spec = stoichiometry.SPEC
    assert register_env(spec) is spec  # the same spec again is fine
    clone = EnvSpec(spec.name, spec.make_dataset, spec.make_env, spec.reference_policy, spec.difficulties)
    with pytest.raises(ValueError):
        register_env(clone)


def _gen(rng: random.Random, difficulty: int) -> dict:
    return {"a": rng.randint(0, 10 * difficulty), "d": difficulty}


def test_dataset_indexing_splits_and_ids() -> None:
    ds = TaskDataset.generate("toy", _gen, num_train=7, num_heldout=5, difficulties=(1, 2, 3), seed=4)
    assert len(ds) == 12 and ds[0].split == "train" and ds[len(ds) - 1].split == "heldout"
    assert [len(ds.tasks("train", d)) for d in (1, 2, 3)] == [3, 2, 2]
    assert [len(ds.tasks("heldout", d)) for d in (1, 2, 3)] == [2, 2, 1]
    assert ds.difficulties == [1, 2, 3]
    ids = [t.id for t in ds]
    assert len(set(ids)) == len(ids) and ds.by_id(ids[3]) is ds[3]
    keys = lambda split: {t.data["a"] + 1000 * t.difficulty for t in ds.tasks(split)}  # noqa: E731
    assert not keys("train") & keys("heldout")
    assert Task.from_dict(ds[2].to_dict()) == ds[2]
    with pytest.raises(ValueError):
        ds.tasks("test")  # type: ignore[arg-type]


def test_small_task_spaces() -> None:
    """11 distinct tasks at level 1: held-out must be distinct; training may repeat, never held-out."""
    with pytest.raises(ValueError, match="too few distinct"):
        TaskDataset.generate("toy", _gen, num_train=0, num_heldout=12, difficulties=(1,), seed=0)
    with pytest.raises(ValueError, match="too few distinct"):
        TaskDataset.generate("toy", _gen, num_train=5, num_heldout=11, difficulties=(1,), seed=0)
    ds = TaskDataset.generate("toy", _gen, num_train=40, num_heldout=4, difficulties=(1,), seed=0)
    train = [t.data["a"] for t in ds.tasks("train")]
    held = {t.data["a"] for t in ds.tasks("heldout")}
    assert len(train) == 40 and set(train) == set(range(11)) - held


def test_dataset_seed_changes_tasks() -> None:
    a = TaskDataset.generate("toy", _gen, 10, 0, (5,), seed=1)
    b = TaskDataset.generate("toy", _gen, 10, 0, (5,), seed=2)
    assert [t.seed for t in a] != [t.seed for t in b]


def test_factories_take_env_options_and_name_a_bad_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))  # the name goes with the test

    def make(scale: int = 1) -> EnvSpec:
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        return stoichiometry.SPEC

    register_env_factory("scaled_stoichiometry", make)
    assert "scaled_stoichiometry" in list_envs() and "scaled_stoichiometry" not in list_envs(configurable=False)
    assert {"nemo_gym", "aviary_http", "mcp"} <= set(list_envs()) - set(list_envs(configurable=False))
    assert get_env_spec("scaled_stoichiometry", {"scale": 2}) is stoichiometry.SPEC
    with pytest.raises(UnknownEnvironmentError, match="scale must be >= 1"):
        get_env_spec("scaled_stoichiometry", {"scale": 0})
    with pytest.raises(UnknownEnvironmentError, match="rejects env.options.*unexpected keyword"):
        get_env_spec("scaled_stoichiometry", {"url": "x"})
    with pytest.raises(UnknownEnvironmentError, match="takes no env.options"):
        get_env_spec("stoichiometry", {"url": "x"})
    assert get_env_spec(f"{__name__}:spec_factory", {}) is stoichiometry.SPEC
