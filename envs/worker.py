"""EnvWorker: a Ray actor that runs many episodes concurrently (asyncio) against the generation workers.

Each worker hosts its own environment instances and calls the generation workers through a
`GenerationRouter`, so environments scale out independently of generation and training. A failing
episode ends as a trajectory with finish reason `error`; it never takes the worker down.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from actors.types import SamplingSpec
from envs.agent_loop import EpisodeLimits, TurnPolicy, run_episode
from envs.chat import ChatCodec
from envs.dataset import Task
from envs.policies import ReferenceTurnPolicy, SamplerTurnPolicy
from envs.registry import Solver, get_env_spec
from models.loading import load_tokenizer
from rollout.trajectory import Trajectory

if TYPE_CHECKING:
    from actors.router import GenerationRouter

logger = logging.getLogger(__name__)


@dataclass
class EnvWorkerSettings:
    env_name: str
    tokenizer_path: str
    sampling: SamplingSpec
    limits: EpisodeLimits
    max_concurrent_episodes: int = 64


class EnvWorker:
    """Hosts environment instances; `run_group` plays one task `group_size` times concurrently."""

    def __init__(self, settings: EnvWorkerSettings, router: GenerationRouter | None = None):
        logging.basicConfig(level=logging.INFO)
        self.settings = settings
        self.spec = get_env_spec(settings.env_name)
        self.codec = ChatCodec(load_tokenizer(settings.tokenizer_path))
        self.router = router
        self._slots = asyncio.Semaphore(settings.max_concurrent_episodes)

    def _policy(self, solver: Solver, stream: str) -> TurnPolicy:
        if solver != "policy":
            return ReferenceTurnPolicy(self.spec.solver(solver), self.codec)
        if self.router is None:
            raise RuntimeError("EnvWorker has no generation router: only scripted-solver episodes can run")
        return SamplerTurnPolicy(self.router, self.settings.sampling, stream)

    async def _episode(self, task: Task, group_id: str, policy: TurnPolicy) -> Trajectory:
        async with self._slots:
            env = self.spec.make_env(task)
            return await run_episode(env, task, group_id, policy, self.codec, self.settings.limits)

    async def run_group(self, task: Task, group_size: int, group_id: str,
                        solver: Solver = "policy") -> list[Trajectory]:
        """Play `task` `group_size` times with the current policy (or a scripted solver)."""
        return list(await asyncio.gather(
            *(self._episode(task, group_id, self._policy(solver, f"{group_id}/{member}"))
              for member in range(group_size))))

    async def set_router(self, router: GenerationRouter) -> None:
        """Point at a new set of generation workers (after a replacement)."""
        self.router = router

    async def ping(self) -> bool:
        return True
