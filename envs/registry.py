"""Environment registry: a name (or an import path to a user's spec) -> `EnvSpec`.

Why specs and not classes: a training run needs more than an environment class. It needs the task
dataset (with held-out split), a way to build one environment per task, and a reference solver for
demonstrations and tests; an `EnvSpec` keeps those together under one name that a config can refer to.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Literal, Sequence

from envs.core import Environment, Message
from envs.dataset import Task, TaskDataset

logger = logging.getLogger(__name__)

ReferencePolicy = Callable[[Environment, list[Message]], Awaitable[Message]]
# Who plays an episode: the policy being trained (through the generation workers) or a scripted solver.
Solver = Literal["policy", "reference", "novice"]
DatasetFactory = Callable[[int, int, Sequence[int], int], TaskDataset]


@dataclass(frozen=True)
class EnvSpec:
    """Everything a run needs to know about one kind of environment.

    `make_dataset(num_train, num_heldout, difficulties, seed)` builds the tasks; `make_env(task)`
    builds a fresh environment for one episode; `reference_policy(env, history)` returns the next
    assistant action a perfect solver takes, given the messages so far (observations included).
    `novice_policy`, where given, is the same solver with one typical human mistake: its
    demonstrations make an imperfect behaviour-cloning set that RL then has to correct
    (`sft.novice_fraction`).
    """

    name: str
    make_dataset: DatasetFactory
    make_env: Callable[[Task], Environment]
    reference_policy: ReferencePolicy
    difficulties: tuple[int, ...]
    description: str = ""
    defaults: dict = field(default_factory=dict)
    novice_policy: ReferencePolicy | None = None

    def solver(self, name: Solver) -> ReferencePolicy:
        """The scripted solver called `name` ("reference" or "novice")."""
        if name == "reference":
            return self.reference_policy
        if name == "novice" and self.novice_policy is not None:
            return self.novice_policy
        raise ValueError(f"environment {self.name!r} has no {name!r} solver")


class UnknownEnvironmentError(ValueError):
    """Raised by `get_env_spec` for a name that is neither registered nor importable."""


_REGISTRY: dict[str, EnvSpec] = {}
_BUILTINS_LOADED = False


def register_env(spec: EnvSpec, *, overwrite: bool = False) -> EnvSpec:
    """Add `spec` under `spec.name`; registering a different spec under a taken name is an error."""
    existing = _REGISTRY.get(spec.name)
    if existing is not None and existing is not spec and not overwrite:
        raise ValueError(f"environment {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        importlib.import_module("envs.suite")  # registers the bundled environments


def list_envs() -> list[str]:
    """Names of the registered environments (the bundled suite included)."""
    _load_builtins()
    return sorted(_REGISTRY)


def _import_spec(path: str) -> EnvSpec:
    if ":" in path:
        module_name, attr_path = path.split(":", 1)
    else:
        module_name, _, attr_path = path.rpartition(".")
    if not module_name or not attr_path:
        raise ImportError(f"not an import path: {path!r}")
    obj: object = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, EnvSpec) and callable(obj):
        obj = obj()  # a zero-argument factory returning the spec
    if not isinstance(obj, EnvSpec):
        raise TypeError(f"{path!r} is a {type(obj).__name__}, not an EnvSpec")
    return obj


def get_env_spec(name: str) -> EnvSpec:
    """The spec registered as `name`, or the `EnvSpec` at an import path `pkg.module:attr`.

    `pkg.module.attr` works too, and the attribute may be a zero-argument function returning a spec.
    """
    _load_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if "." in name or ":" in name:
        try:
            return _import_spec(name)
        except (ImportError, AttributeError, TypeError) as err:
            raise UnknownEnvironmentError(
                f"cannot load environment spec {name!r}: {type(err).__name__}: {err}") from err
    known = ", ".join(sorted(_REGISTRY)) or "(none)"
    raise UnknownEnvironmentError(
        f"unknown environment {name!r}; known: {known}; or give an import path 'pkg.module:SPEC'")
