"""Adapters to environments written elsewhere. Importing this package registers the ones that are
built from `env.options` (`nemo_gym`, `aviary_http`, `mcp`); each imports its client library only when a run uses it."""

from __future__ import annotations

from typing import Any

from envs.registry import EnvSpec, register_env_factory


def _nemo_gym(**options: Any) -> EnvSpec:
    from envs.adapters.nemo_gym.spec import nemo_gym_spec

    return nemo_gym_spec(**options)


def _aviary_http(**options: Any) -> EnvSpec:
    from envs.adapters.aviary import aviary_http_spec

    return aviary_http_spec(**options)


def _mcp(**options: Any) -> EnvSpec:
    from envs.adapters.mcp import make_mcp_spec

    return make_mcp_spec(**options)


register_env_factory("nemo_gym", _nemo_gym)
register_env_factory("aviary_http", _aviary_http)
register_env_factory("mcp", _mcp)
