"""Stoichiometry with realistic tool latency: every tool call waits 100-500 ms before it answers.

A stand-in for environments whose tools are slow simulated experiments or remote services. Config:
`env.name=benchmarks.latency_env:SPEC` (env workers import it by that path; the repository root is on
their PYTHONPATH). Tasks, tools, rewards and the reference solver are stoichiometry's; only the
waiting differs. The latency of each call is drawn from a generator seeded by the task's seed, so
runs with the same tasks wait the same total time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import random
from typing import Any, Callable

from envs.dataset import Task
from envs.registry import EnvSpec, register_env
from envs.suite import stoichiometry
from envs.tools import Tool

NAME = "stoichiometry_latency"
LATENCY_S = (0.1, 0.5)


def with_latency(fn: Callable[..., Any], rng: random.Random, latency_s: tuple[float, float]) -> Callable[..., Any]:
    """`fn` as a coroutine function that first sleeps a random time in `latency_s`."""
    @functools.wraps(fn)
    async def slow(**kwargs: Any) -> Any:
        await asyncio.sleep(rng.uniform(*latency_s))
        result = fn(**kwargs)
        return await result if inspect.isawaitable(result) else result

    return slow


class LatencyStoichiometryEnv(stoichiometry.StoichiometryEnv):
    """Stoichiometry whose every tool call takes 100-500 ms (asyncio sleep: the worker stays free)."""

    latency_s = LATENCY_S

    def __init__(self, task: Task, **kwargs: Any):
        self._latency_rng = random.Random(task.seed)
        super().__init__(task, **kwargs)

    def make_tools(self) -> list[Tool]:
        return [dataclasses.replace(t, fn=with_latency(t.fn, self._latency_rng, self.latency_s))
                for t in super().make_tools()]


SPEC = register_env(EnvSpec(
    name=NAME, make_dataset=stoichiometry.make_dataset, make_env=LatencyStoichiometryEnv,
    reference_policy=stoichiometry.reference_policy, difficulties=stoichiometry.DIFFICULTIES,
    description="stoichiometry with 100-500 ms of latency per tool call"))
