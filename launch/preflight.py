"""Checks that need a registry above `configs/` (environments, advantage estimators, weight-sync
transports, the model on disk), run on the validated config before Ray starts.

Together with the schema's own validators this is the whole of "a bad config fails before any
actor starts": every check raises `ConfigError` naming the field.
"""

from __future__ import annotations

import logging

from actors.weight_sync import check_transport
from configs.loading import ConfigError
from configs.schema import LabrlConfig
from envs.registry import EnvSpec, UnknownEnvironmentError, get_env_spec
from models.chat_kit import PRESETS as CHAT_PRESETS
from models.loading import resolve_model_path
from trainers.grpo.advantages import ADVANTAGE_ESTIMATORS

logger = logging.getLogger(__name__)


def preflight(cfg: LabrlConfig) -> EnvSpec:
    """Raise `ConfigError` for anything that would fail once actors run; returns the env spec."""
    try:
        spec = get_env_spec(cfg.env.name, cfg.env.options)
    except UnknownEnvironmentError as err:
        raise ConfigError(f"env.name: {err}") from None
    if cfg.grpo.advantage_estimator not in ADVANTAGE_ESTIMATORS:
        raise ConfigError(f"grpo.advantage_estimator={cfg.grpo.advantage_estimator!r} is not registered; "
                          f"known: {sorted(ADVANTAGE_ESTIMATORS)}")
    try:
        check_transport(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.rollout.autoscale.enabled and cfg.placement.mode == "colocated":
        raise ConfigError("rollout.autoscale.enabled: placement.mode=colocated binds each engine to a trainer "
                          "rank's GPU, so engines cannot be added or retired during the run")
    if cfg.model.path is not None:
        resolve_model_path(cfg.model.path)  # raises ModelNotFoundError naming the path
    elif cfg.model.build == "chat" and cfg.model.chat_preset not in CHAT_PRESETS:
        raise ConfigError(f"model.chat_preset={cfg.model.chat_preset!r} is not a model-kit preset; "
                          f"known: {sorted(CHAT_PRESETS)}")
    if cfg.sft.enabled and spec.agent is not None:
        raise ConfigError(f"sft.enabled: {cfg.env.name!r} is an agent program, which has no scripted solver to "
                          "play demonstrations; set sft.enabled=false (and model.path= a warmed-up checkpoint)")
    if cfg.sft.enabled and not spec.has_reference:
        raise ConfigError(f"sft.enabled: environment {cfg.env.name!r} has no reference solver to play "
                          "demonstrations; give it one (see its adapter's options) or set sft.enabled=false")
    if cfg.sft.enabled and cfg.sft.novice_fraction > 0 and spec.novice_policy is None:
        logger.warning("sft.novice_fraction=%g: environment %r has no novice solver; its demonstrations "
                       "are all played by the reference solver", cfg.sft.novice_fraction, cfg.env.name)
    return spec


def novice_fraction(cfg: LabrlConfig, spec: EnvSpec) -> float:
    """The share of demonstrations the novice solver plays (0 where the environment has none)."""
    return cfg.sft.novice_fraction if spec.novice_policy is not None else 0.0
