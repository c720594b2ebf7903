"""Stoichiometry as an agent program written against the official `openai` client.

The bundled `stoichiometry` environment (envs/suite/stoichiometry.py) rewritten the way agents are
usually written outside labrl: a loop that calls `client.chat.completions.create(..., tools=...)`,
runs the tool calls itself and returns an answer, which `verify` scores. labrl trains it through
its OpenAI-compatible endpoint (envs/agent.py, rollout/openai_api/): each episode's `client` points
at a private URL served by the policy being trained.

Why it mirrors the native environment message for message: so that the two can be compared. The
agent opens with the messages `StoichiometryEnv.reset()` gives, offers the same tool schemas, runs
the same tool functions, answers each bad turn with the error text the environment gives (unknown
tool, bad arguments, a turn without a call, a call that does not parse) and spends the same tool
budget. The policy therefore sees token-identical prompts either way
(tests/envs/test_openai_agent_example.py), and held-out success can be set side by side.

Train it (an agent program has no scripted solver: start from a policy warmed up on the native
environment, whose tasks, splits and seeds this one shares):

    labrl train env.name=examples.openai_agent_lab.agent:SPEC sft.enabled=false \\
        model.path=<a checkpoint warmed up on stoichiometry>
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from typing import Any

from envs.agent import agent_env_spec
from envs.core import Message, Reward, ToolCall
from envs.dataset import Task
from envs.parsing import parse_assistant
from envs.suite.stoichiometry import DIFFICULTIES, StoichiometryEnv, make_dataset
from envs.tool_env import NO_CALL_TEXT, error_reason
from envs.tools import Tool, error_message, run_tool_call

logger = logging.getLogger(__name__)

# labrl's endpoint serves the policy being trained whatever model name is asked for.
MODEL = "labrl-policy"
NO_CALL_ID = "no_call"


@dataclass(frozen=True)
class Outcome:
    """How an episode ended: the submitted number, or None and the reason there is none (the
    reason the native environment gives an episode that spent its budget without a submit)."""

    answer: float | None
    reason: str = "submitted"


@dataclass
class Turn:
    """What one assistant turn did: the observations for the model, the tool calls it spent, the
    submitted answer if it submitted, and its first error reason (as a native step reports it)."""

    observations: list[Message] = field(default_factory=list)
    spent: int = 0
    answer: float | None = None
    error: str | None = None


def _accept_answer(answer: float) -> float:
    """The agent's `submit`: the (validated) answer itself; only `verify` knows the right one."""
    return answer


def agent_tools(tools: list[Tool]) -> dict[str, Tool]:
    """The environment's own tools by name, its verifier (`submit`) turned into an answer collector
    that keeps the verifier's schema and argument checks."""
    return {t.name: replace(t, fn=_accept_answer) if t.ends_episode else t for t in tools}


def _arguments(text: str | None) -> Any:
    """Decoded call arguments. Text that is not JSON goes to the tool as it is, which refuses it
    ("arguments must be an object") like any malformed call."""
    try:
        return json.loads(text or "{}")
    except json.JSONDecodeError:
        return text


def as_action(message: Any) -> Message:
    """The endpoint's assistant message (`openai.types.chat.ChatCompletionMessage`) as the native
    environment reads the same reply.

    labrl's endpoint returns a reply whose `<tool_call>` does not parse as plain text without tool
    calls. The native environment runs the calls in it that do parse and reports the error, so such
    text is read with labrl's parser (the endpoint's own) to do the same.
    """
    if message.tool_calls:
        calls = [ToolCall(c.id, c.function.name, _arguments(c.function.arguments)) for c in message.tool_calls]
        return Message(role="assistant", content=message.content or "", tool_calls=calls)
    return parse_assistant(message.content or "")


def tool_message(observation: Message) -> dict[str, Any]:
    """An observation as an OpenAI tool message. OpenAI's format wants the id of the call a tool
    message answers; the error of a turn that made no parseable call answers none (the native one
    has no id), so it carries `NO_CALL_ID`. Chat templates do not render ids: the prompt is the same."""
    return {"role": "tool", "tool_call_id": observation.tool_call_id or NO_CALL_ID,
            "content": observation.content}


async def run_turn(action: Message, tools: dict[str, Tool], left: int, env: StoichiometryEnv) -> Turn:
    """Execute one assistant turn under the native rules (envs/tool_env.py): each call, a turn with
    no call and a turn whose call did not parse cost one call of the budget (`left` remain); a
    successful `submit` ends the episode; a call past the budget is not run and the episode ends.
    Calls run with `env`'s limits (time per call, argument size), as the native ones do."""
    turn = Turn()
    if not action.tool_calls and not action.parse_error:
        turn.spent, turn.error = 1, "invalid_format"
        turn.observations.append(error_message(None, NO_CALL_TEXT))
    for call in action.tool_calls:
        if turn.spent >= left:
            break
        turn.spent += 1
        result = await run_tool_call(call, tools, None, env.tool_timeout_s, env.max_arg_chars)
        if result.error is not None:
            turn.error = turn.error or error_reason(result.error)
        elif result.tool is not None and result.tool.ends_episode:
            turn.answer = result.value
            return turn
        turn.observations.append(result.message)
    if action.parse_error:
        turn.spent = min(turn.spent + 1, left)
        turn.observations.append(error_message(None, f"invalid tool call: {action.parse_error}"))
        turn.error = turn.error or "invalid_format"
    return turn


async def agent(task: Task, client: Any) -> Outcome:
    """One episode: ask the policy, run its tool calls, until it submits or the budget is spent.

    `client` is an `openai.AsyncOpenAI`. The endpoint's refusals (the run's turn budget, the
    context length) propagate as `openai.BadRequestError`: labrl then ends the episode as truncated,
    as it ends a native one (rollout/agent_episode.py).
    """
    env = StoichiometryEnv(task)
    opening, env_tools = await env.reset()
    schemas = [t.schema for t in env_tools]
    tools = agent_tools(env_tools)
    messages: list[dict[str, Any]] = [m.to_chat() for m in opening]
    spent = 0
    while True:
        response = await client.chat.completions.create(model=MODEL, messages=messages, tools=schemas)
        choice = response.choices[0]
        # Re-sent exactly as returned, so the endpoint recognises the ids it sampled (no fork).
        messages.append(choice.message.model_dump(exclude_none=True))
        if choice.finish_reason == "length":
            # A turn cut at generation.max_new_tokens ends a native episode unscored as well
            # (env.score_truncated_turns=false, the default).
            return Outcome(None, "truncated_length")
        turn = await run_turn(as_action(choice.message), tools, env.max_tool_calls - spent, env)
        if turn.answer is not None:
            return Outcome(turn.answer)
        spent += turn.spent
        if spent >= env.max_tool_calls:
            logger.debug("%s: tool budget spent without a submit", task.id)
            return Outcome(None, turn.error or "budget_exceeded")
        messages += [tool_message(m) for m in turn.observations]


def verify(task: Task, outcome: Outcome) -> Reward:
    """The native outcome rule: the environment's own `submit` check (within 1%: `correct`, else
    `wrong_value`); no answer scores 0 with the reason the native environment would give."""
    if outcome.answer is None:
        return Reward(0.0, outcome.reason)
    return StoichiometryEnv(task).submit(outcome.answer)


SPEC = agent_env_spec(
    name="stoichiometry_openai_agent", make_dataset=make_dataset, agent=agent, verify=verify,
    difficulties=DIFFICULTIES,
    description="stoichiometry (envs/suite/stoichiometry.py) as an OpenAI-client agent program")
