"""One episode of an agent program (envs/agent.py): the agent's own loop, run against a private
URL of the OpenAI-compatible endpoint, then its verifier; the trajectory is assembled from what the
endpoint recorded (rollout/openai_api/assembly.py), never from the agent's text.

Outcomes, as native episodes have them: the verifier's reward ends the episode (`env_done`; or
`budget` / `length`, truncated, when its reason is `budget_exceeded` / `truncated_length`); an
agent that outlives `env.episode_timeout_s` ends as `timeout` (reward 0, truncated); one that
raises after the endpoint refused a request for the turn budget or the context length ends as
`budget` / `length` (reward 0, truncated); one that raises otherwise, or whose verifier raises, or
that never asked the policy anything, is a failed episode (`error`, dropped and counted by the
pipeline: its zero reward would say nothing about the policy).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
import openai

from envs.agent import AgentProgramSpec
from envs.core import reward_reason
from envs.dataset import Task
from rollout.openai_api.assembly import assemble_segments
from rollout.openai_api.server import AgentEndpoint
from rollout.openai_api.session import EpisodeSession
from rollout.trajectory import FinishReason, TokenSegment, Trajectory

logger = logging.getLogger(__name__)
_EPISODE_CONNECTIONS = 16  # an agent may ask several completions at once (parallel branches, n > 1)

_LIMIT_OUTCOMES: dict[str, tuple[FinishReason, str]] = {
    "budget": ("budget", "budget_exceeded"), "context": ("length", "context_exhausted")}


# A verifier's reason that says the agent ran out of room ends the episode as native ones that
# ran out do: truncated, with the same finish reason.
_CUT_REASONS: dict[str, tuple[FinishReason, bool]] = {
    "budget_exceeded": ("budget", True), "truncated_length": ("length", True)}


@dataclass
class _Outcome:
    finish: FinishReason = "error"
    reason: str = "agent_error"
    reward: float = 0.0
    masked: bool = False
    truncated: bool = False


async def run_agent_episode(program: AgentProgramSpec, task: Task, group_id: str, session: EpisodeSession,
                            endpoint: AgentEndpoint, timeout_s: float) -> Trajectory:
    """Play `task` once with `program` through `endpoint`; never raises for episode failures."""
    base_url = endpoint.open_episode(session)
    # One small HTTP client per episode: a pool shared by hundreds of concurrent episodes made
    # httpcore scan every pooled connection on each request (~8 ms of CPU a request, profiled).
    # Plain HTTP on 127.0.0.1: no TLS context to build (verify=False costs ~1.4 ms, the default ~50).
    http = httpx.AsyncClient(verify=False, timeout=None, limits=httpx.Limits(max_connections=_EPISODE_CONNECTIONS))
    client = openai.AsyncOpenAI(base_url=base_url, api_key="labrl", http_client=http, max_retries=0)
    started = time.monotonic()
    try:
        outcome = await _play(program, task, client, session, timeout_s)
    finally:
        endpoint.close_episode(base_url)
        await http.aclose()
    return _trajectory(task, group_id, session, outcome, time.monotonic() - started)


async def _play(program: AgentProgramSpec, task: Task, client: Any, session: EpisodeSession,
                timeout_s: float) -> _Outcome:
    try:
        answer = await asyncio.wait_for(program.run(task, client), timeout=timeout_s)
    except asyncio.TimeoutError:
        logger.warning("agent episode %s ran past %.0f s", task.id, timeout_s)
        return _Outcome("timeout", "timeout", truncated=True)
    except Exception as err:  # noqa: BLE001 - the agent's failure is the episode's, not the worker's
        if session.limit in _LIMIT_OUTCOMES:
            finish, reason = _LIMIT_OUTCOMES[session.limit]
            return _Outcome(finish, reason, truncated=True)
        logger.warning("agent episode %s raised %s: %s", task.id, type(err).__name__, err)
        return _Outcome("error", "agent_error")
    if not session.completions:
        logger.warning("agent episode %s never asked the policy: nothing to train", task.id)
        return _Outcome("error", "no_completions")
    try:
        reward = program.verify(task, answer)
        if inspect.isawaitable(reward):
            reward = await reward
    except Exception as err:  # noqa: BLE001
        logger.warning("verifier of %s raised %s: %s", task.id, type(err).__name__, err)
        return _Outcome("error", "verify_error")
    reason = reward_reason(reward)
    finish, cut = _CUT_REASONS.get(reason, ("env_done", False))
    return _Outcome(finish, reason, float(reward), masked=bool(getattr(reward, "masked", False)),
                    truncated=cut or session.limit is not None)


def _trajectory(task: Task, group_id: str, session: EpisodeSession, outcome: _Outcome,
                elapsed_s: float) -> Trajectory:
    built = assemble_segments(session.completions)
    last = built.segments[built.last] if built.segments else TokenSegment([], [], [])
    return Trajectory(
        task_id=task.id, group_id=group_id, env_name=task.env_name, token_ids=last.token_ids,
        loss_mask=last.loss_mask, sampler_logprobs=last.sampler_logprobs, reward=outcome.reward,
        reward_reason=outcome.reason, finish_reason=outcome.finish, policy_versions=built.versions,
        difficulty=task.difficulty, num_turns=session.turns, num_tool_calls=session.tool_calls + session.unparsed_calls,
        num_invalid_tool_calls=session.unparsed_calls,
        truncated=outcome.truncated or built.truncated_turns > 0, masked=outcome.masked,
        generation_s=session.generation_s, env_s=max(0.0, elapsed_s - session.generation_s),
        messages=session.transcript, num_forks=built.forks,
        forked_segments=[s for i, s in enumerate(built.segments) if i != built.last])
