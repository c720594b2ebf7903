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

from actors.gc_heap import freeze_startup_heap
from actors.types import SamplingSpec
from configs.schema import EnvConfig, GenerationConfig, LabrlConfig
from envs.chat import ChatCodec
from envs.dataset import Task
from envs.registry import Solver, get_env_spec
from models.loading import load_tokenizer
from rollout.agent_episode import run_agent_episode
from rollout.agent_loop import TurnPolicy, run_episode
from rollout.openai_api.server import AgentEndpoint
from rollout.openai_api.session import EpisodeSession
from rollout.policies import ReferenceTurnPolicy, SamplerTurnPolicy
from rollout.trajectory import Trajectory

if TYPE_CHECKING:
    from actors.router import GenerationRouter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnvWorkerSpec:
    """What an EnvWorker needs: the run's `env` and `generation` sections as they are (episode
    limits, tool timeout, environment name) plus the values derived from the run.

    `sampling` is how policy turns are sampled (its `max_tokens` is replaced per turn by what the
    context has room for); `max_concurrent_episodes` caps the episodes one worker plays at once.
    """

    env: EnvConfig
    generation: GenerationConfig
    tokenizer_path: str
    sampling: SamplingSpec
    max_concurrent_episodes: int = 64

    @classmethod
    def from_config(cls, cfg: LabrlConfig, model_dir: str) -> "EnvWorkerSpec":
        """The spec of run `cfg` whose policy (and tokenizer) lives in `model_dir`."""
        tokenizer = load_tokenizer(model_dir)
        stop = [tokenizer.convert_tokens_to_ids(tokenizer.eos_token)]
        return cls(env=cfg.env, generation=cfg.generation, tokenizer_path=model_dir,
                   sampling=SamplingSpec.from_config(cfg, stop),
                   max_concurrent_episodes=cfg.rollout.max_concurrent_episodes)


class EnvWorker:
    """Hosts environment instances; `run_group` plays one task `group_size` times concurrently.

    For an agent program (`EnvSpec.agent`, envs/agent.py) it also serves the OpenAI-compatible
    endpoint the programs talk to (started with the first such episode, on 127.0.0.1), and each
    episode gets its own URL there.
    """

    def __init__(self, spec: EnvWorkerSpec, router: GenerationRouter | None = None):
        logging.basicConfig(level=logging.INFO)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per adapter request otherwise
        self.spec = spec
        self.env_spec = get_env_spec(spec.env.name, spec.env.options)
        self.codec = ChatCodec(load_tokenizer(spec.tokenizer_path))
        self.router = router
        self._slots = asyncio.Semaphore(spec.max_concurrent_episodes)
        self._endpoint: AgentEndpoint | None = None
        self._endpoint_lock = asyncio.Lock()
        freeze_startup_heap("env worker")

    def _policy(self, solver: Solver, stream: str) -> TurnPolicy:
        if solver != "policy":
            return ReferenceTurnPolicy(self.env_spec.solver(solver), self.codec)
        if self.router is None:
            raise RuntimeError("EnvWorker has no generation router: only scripted-solver episodes can run")
        return SamplerTurnPolicy(self.router, self.spec.sampling, stream)

    async def _episode(self, task: Task, group_id: str, policy: TurnPolicy) -> Trajectory:
        async with self._slots:
            if self.env_spec.agent is not None:
                return await self._agent_episode(task, group_id, policy)
            env = self.env_spec.make_env(task)
            env.tool_timeout_s = self.spec.env.tool_timeout_s
            return await run_episode(env, task, group_id, policy, self.codec, self.spec.env,
                                     self.spec.generation)

    async def _agent_episode(self, task: Task, group_id: str, policy: TurnPolicy) -> Trajectory:
        if not isinstance(policy, SamplerTurnPolicy):
            raise ValueError(f"{self.env_spec.name!r} is an agent program: only the policy can play it")
        async with self._endpoint_lock:  # the group's episodes arrive together; one endpoint starts
            if self._endpoint is None:
                endpoint = AgentEndpoint()
                await endpoint.start()
                self._endpoint = endpoint
        session = EpisodeSession(self.codec, policy.router, self.spec.sampling, self.spec.generation.max_model_len,
                                 self.spec.env.max_turns, stream=policy.stream)
        return await run_agent_episode(self.env_spec.agent, task, group_id, session, self._endpoint,
                                       self.spec.env.episode_timeout_s)

    async def run_group(self, task: Task, group_size: int, group_id: str,
                        solver: Solver = "policy") -> list[Trajectory]:
        """Play `task` `group_size` times with the current policy (or a scripted solver)."""
        return list(await asyncio.gather(
            *(self._episode(task, group_id, self._policy(solver, f"{group_id}/{member}"))
              for member in range(group_size))))

    async def set_router(self, router: GenerationRouter) -> None:
        """Point at a new set of generation workers (a replacement, an engine added or retired).
        Adopted in place: running episodes hold this router, and their next turn must not go to
        an engine that is being retired."""
        if self.router is None:
            self.router = router
        else:
            self.router.timeout_s = router.timeout_s
            self.router.set_workers(router.workers)

    async def ping(self) -> bool:
        return True
