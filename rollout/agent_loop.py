"""The agent loop: one episode of (prompt -> policy turn -> parse tool calls -> env.step) -> Trajectory.

Everything that can go wrong inside an episode (a turn cut by length, the turn budget, the
wall-clock timeout, an environment that raises) ends the episode with a recorded finish reason and
reward reason; it never propagates. Only tokens the policy generated carry loss.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from configs.schema import EnvConfig, GenerationConfig
from envs.chat import ChatCodec
from envs.core import Environment, Message, reward_reason
from envs.dataset import Task
from envs.parsing import parse_assistant
from rollout.trajectory import TokenSegment, Trajectory

logger = logging.getLogger(__name__)


@dataclass
class PolicyTurn:
    """What a policy produced for one assistant turn (token ids include the closing EOS if any)."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" | "length"
    policy_version: int
    newest_policy_version: int | None = None  # a turn that spanned an in-flight weight update


@dataclass
class TurnContext:
    prompt_token_ids: list[int]
    history: list[Message]
    env: Environment
    max_tokens: int


class TurnPolicy(Protocol):
    async def act(self, ctx: TurnContext) -> PolicyTurn: ...


@dataclass
class _EpisodeState:
    seq: TokenSegment = field(default_factory=lambda: TokenSegment([], [], []))
    history: list[Message] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    turns: int = 0
    tool_calls: int = 0
    invalid_calls: int = 0
    reward: float = 0.0
    generation_s: float = 0.0
    env_s: float = 0.0
    reason: str = "in_progress"
    finish: str = "budget"
    truncated: bool = False
    masked: bool = False


async def run_episode(env: Environment, task: Task, group_id: str, policy: TurnPolicy, codec: ChatCodec,
                      env_cfg: EnvConfig, generation: GenerationConfig) -> Trajectory:
    """Run one episode to its end and return the trajectory; never raises for episode failures.

    Limits: `env_cfg.max_turns`, `env_cfg.episode_timeout_s`, `env_cfg.score_truncated_turns` (a
    turn cut at `generation.max_new_tokens` ends the episode unscored when false, or its text goes
    to the environment like any turn when true; either way the trajectory counts as truncated) and
    `generation.max_new_tokens` / `generation.max_model_len` (per turn / whole episode).
    """
    state = _EpisodeState()
    started = time.monotonic()
    try:
        await asyncio.wait_for(_play(env, policy, codec, env_cfg, generation, state),
                               timeout=env_cfg.episode_timeout_s)
    except asyncio.TimeoutError:
        state.finish, state.reason, state.truncated = "timeout", "timeout", True
        state.reward = 0.0
        logger.warning("episode %s timed out after %.0fs", task.id, time.monotonic() - started)
    except Exception as err:  # noqa: BLE001 - one failing episode must not kill the worker
        state.finish, state.reason, state.reward = "error", "env_error", 0.0
        logger.warning("episode %s failed: %s: %s", task.id, type(err).__name__, err)
    finally:
        await _close_quietly(env)
    return Trajectory(
        task_id=task.id, group_id=group_id, env_name=task.env_name, token_ids=state.seq.token_ids,
        loss_mask=state.seq.loss_mask, sampler_logprobs=state.seq.sampler_logprobs, reward=float(state.reward),
        reward_reason=state.reason, finish_reason=state.finish, policy_versions=state.versions,
        difficulty=task.difficulty, num_turns=state.turns, num_tool_calls=state.tool_calls,
        num_invalid_tool_calls=state.invalid_calls, truncated=state.truncated, masked=state.masked,
        generation_s=state.generation_s, env_s=state.env_s,
        messages=[m.to_chat() for m in state.history])


async def _play(env: Environment, policy: TurnPolicy, codec: ChatCodec, env_cfg: EnvConfig,
                generation: GenerationConfig, state: _EpisodeState) -> None:
    clock = time.monotonic()
    observations, tools = await env.reset()
    state.env_s += time.monotonic() - clock
    codec = codec.with_tools(tools)
    state.history = list(observations)
    state.seq.extend(codec.prompt_tokens(observations), generated=False)
    while state.turns < env_cfg.max_turns:
        room = generation.max_model_len - len(state.seq.token_ids)
        if room <= 0:
            state.finish, state.reason, state.truncated = "length", "context_exhausted", True
            return
        clock = time.monotonic()
        turn = await policy.act(TurnContext(state.seq.token_ids, state.history, env,
                                            min(generation.max_new_tokens, room)))
        state.generation_s += time.monotonic() - clock
        state.turns += 1
        state.versions.append(turn.policy_version)
        if turn.newest_policy_version not in (None, turn.policy_version):
            state.versions.append(turn.newest_policy_version)
        state.seq.extend(turn.token_ids, generated=True, logprobs=turn.logprobs)
        if turn.finish_reason == "length":
            state.truncated = True
            if not env_cfg.score_truncated_turns:
                # The turn never closed: what it would have said is unknown, so the episode ends here.
                state.finish, state.reason = "length", "truncated_length"
                return
        action = parse_assistant(codec.assistant_text(_text_ids(turn, codec.eos_token_id)))
        state.tool_calls += len(action.tool_calls) + (1 if action.parse_error else 0)
        clock = time.monotonic()
        observations, reward, done, truncated = await env.step(action)
        state.env_s += time.monotonic() - clock
        state.invalid_calls += sum(1 for m in observations if m.is_error)
        state.history.append(action)
        if done or truncated:
            state.reward, state.reason = float(reward), reward_reason(reward)
            state.masked = bool(getattr(reward, "masked", False))
            # A spent budget ends the episode (done) but as truncated: report it as the budget.
            state.finish = "budget" if truncated else "env_done"
            state.truncated = state.truncated or bool(truncated)
            state.history += observations
            return
        if state.turns >= env_cfg.max_turns:
            # No turn follows: tokens appended now would reach the trainer but never the policy.
            state.history += observations
            break
        continuation = _closing(turn, codec.eos_token_id) + codec.continuation_tokens(state.history, observations)
        state.history += observations
        if len(state.seq.token_ids) + len(continuation) >= generation.max_model_len:
            # Kept out for the same reason, and the trajectory stays within max_model_len.
            state.finish, state.reason, state.truncated = "length", "context_exhausted", True
            return
        state.seq.extend(continuation, generated=False)
    state.finish, state.reason, state.truncated = "budget", "budget_exceeded", True


def _closing(turn: PolicyTurn, eos_token_id: int) -> list[int]:
    """The EOS that closes a turn the policy did not close with it: one cut by length (and scored), or
    one stopped by another end token of the model (vLLM stops on every eos id of its generation
    config, e.g. `<|endoftext|>` beside `<|im_end|>`). The template closes every turn so, and the next
    prompt must read as the chat it renders; the policy did not sample this EOS, so it carries no loss."""
    return [] if turn.token_ids[-1:] == [eos_token_id] else [eos_token_id]


def _text_ids(turn: PolicyTurn, eos_token_id: int) -> list[int]:
    """The ids whose text the parser reads: without the end token that stopped the turn."""
    ids = turn.token_ids
    if turn.finish_reason == "stop" and ids and ids[-1] != eos_token_id:
        return ids[:-1]  # another of the model's end tokens (see `_closing`); EOS is dropped by the codec
    return ids


async def _close_quietly(env: Environment) -> None:
    try:
        await env.close()
    except Exception as err:  # noqa: BLE001 - closing is best effort
        logger.debug("env.close failed: %s", err)
