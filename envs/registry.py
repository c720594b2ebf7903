"""Environment registry: a name (or an import path to a user's spec) -> `EnvSpec`.

Why specs and not classes: a training run needs more than an environment class. It needs the task
dataset (with held-out split), a way to build one environment per task, and a reference solver for
demonstrations and tests; an `EnvSpec` keeps those together under one name that a config can refer to.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Literal, Mapping, Sequence

from envs.core import Environment, Message
from envs.dataset import Task, TaskDataset

if TYPE_CHECKING:
    from envs.agent import AgentProgramSpec

logger = logging.getLogger(__name__)

ReferencePolicy = Callable[[Environment, list[Message]], Awaitable[Message]]
# Who plays an episode: the policy being trained (through the generation workers) or a scripted solver.
Solver = Literal["policy", "reference", "novice"]
DatasetFactory = Callable[[int, int, Sequence[int], int], TaskDataset]


async def no_reference_policy(env: Environment, history: list[Message]) -> Message:
    """The reference solver of an environment that has none (an adapter to tasks written elsewhere).

    Runs that need demonstrations (`sft.enabled`) are refused before Ray starts (launch/preflight.py)."""
    raise NotImplementedError(f"{type(env).__name__} has no reference solver")


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
    # An agent program (envs/agent.py): its episodes run through labrl's OpenAI-compatible endpoint
    # instead of `make_env`; None for environments.
    agent: AgentProgramSpec | None = None

    @property
    def has_reference(self) -> bool:
        return self.reference_policy is not no_reference_policy

    def solver(self, name: Solver) -> ReferencePolicy:
        """The scripted solver called `name` ("reference" or "novice")."""
        if name == "reference":
            return self.reference_policy
        if name == "novice" and self.novice_policy is not None:
            return self.novice_policy
        raise ValueError(f"environment {self.name!r} has no {name!r} solver")


class UnknownEnvironmentError(ValueError):
    """Raised by `get_env_spec` for a name that is neither registered nor importable, or whose
    factory rejects `env.options`."""


# A spec built from the run's `env.options` (e.g. a server URL and a task file); it raises
# ValueError/TypeError naming the bad option.
SpecFactory = Callable[..., EnvSpec]

_REGISTRY: dict[str, EnvSpec] = {}
_FACTORIES: dict[str, SpecFactory] = {}
_BUILTINS_LOADED = False


def register_env(spec: EnvSpec, *, overwrite: bool = False) -> EnvSpec:
    """Add `spec` under `spec.name`; registering a different spec under a taken name is an error."""
    existing = _REGISTRY.get(spec.name)
    if existing is not None and existing is not spec and not overwrite:
        raise ValueError(f"environment {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def register_env_factory(name: str, factory: SpecFactory) -> SpecFactory:
    """Register `factory(**env.options) -> EnvSpec` under `name`: an environment that needs
    settings (the adapters to NeMo Gym, MCP and Aviary servers) before it exists."""
    if name in _REGISTRY or (name in _FACTORIES and _FACTORIES[name] is not factory):
        raise ValueError(f"environment {name!r} is already registered")
    _FACTORIES[name] = factory
    return factory


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        importlib.import_module("envs.suite")  # registers the bundled environments
        importlib.import_module("envs.adapters")  # and the adapters built from env.options


def list_envs(configurable: bool = True) -> list[str]:
    """Names of the registered environments (the bundled suite included); `configurable=False`
    leaves out those built from `env.options` (the adapters), which need settings to exist."""
    _load_builtins()
    return sorted([*_REGISTRY, *(_FACTORIES if configurable else ())])


def _build(factory: SpecFactory, name: str, options: Mapping[str, Any]) -> EnvSpec:
    try:
        spec = factory(**options)
    except (TypeError, ValueError) as err:
        # The option names, not their values: a value may be a credential (a header, a key).
        raise UnknownEnvironmentError(f"environment {name!r} rejects env.options {sorted(options)}: "
                                      f"{type(err).__name__}: {err}") from err
    if not isinstance(spec, EnvSpec):
        raise UnknownEnvironmentError(f"{name!r} returned a {type(spec).__name__}, not an EnvSpec")
    return spec


def _import_spec(path: str, options: Mapping[str, Any]) -> EnvSpec:
    if ":" in path:
        module_name, attr_path = path.split(":", 1)
    else:
        module_name, _, attr_path = path.rpartition(".")
    if not module_name or not attr_path:
        raise ImportError(f"not an import path: {path!r}")
    obj: object = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    if isinstance(obj, EnvSpec):
        if options:
            raise TypeError(f"{path!r} is an EnvSpec, which takes no env.options ({sorted(options)})")
        return obj
    if callable(obj):
        return _build(obj, path, options)  # a factory: called with env.options as keywords
    raise TypeError(f"{path!r} is a {type(obj).__name__}, not an EnvSpec")


def get_env_spec(name: str, options: Mapping[str, Any] | None = None) -> EnvSpec:
    """The spec registered as `name`, or the `EnvSpec` at an import path `pkg.module:attr`.

    `pkg.module.attr` works too, and the attribute may be a function returning a spec: it is
    called with `options` (the run's `env.options`) as keyword arguments, as are registered
    factories (`register_env_factory`). A plain spec takes no options.
    """
    _load_builtins()
    options = dict(options or {})
    if name in _REGISTRY:
        if options:
            raise UnknownEnvironmentError(f"environment {name!r} takes no env.options ({sorted(options)})")
        return _REGISTRY[name]
    if name in _FACTORIES:
        return _build(_FACTORIES[name], name, options)
    if "." in name or ":" in name:
        try:
            return _import_spec(name, options)
        except (ImportError, AttributeError, TypeError) as err:
            raise UnknownEnvironmentError(
                f"cannot load environment spec {name!r}: {type(err).__name__}: {err}") from err
    known = ", ".join(list_envs()) or "(none)"
    raise UnknownEnvironmentError(
        f"unknown environment {name!r}; known: {known}; or give an import path 'pkg.module:SPEC'")
