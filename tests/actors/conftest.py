"""Shared fixtures: one local Ray for the whole session, a tiny policy built on this machine."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import ray

REPO_ROOT = str(Path(__file__).resolve().parents[2])


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray (4 logical CPUs on 2 cores is fine: the actors here are mostly idle)."""
    started = False
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level=logging.WARNING,
                 runtime_env={"env_vars": {"PYTHONPATH": REPO_ROOT}})
        started = True
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    from models.tiny import save_tiny_model

    return str(save_tiny_model(tmp_path_factory.mktemp("tiny_policy")))
