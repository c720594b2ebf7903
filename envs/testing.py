"""Text-level episode driver and a random policy, for tests and quick checks of environments.

Why not the agent loop: environment tests must run without a tokenizer, a model or Ray. This
driver renders each action to text and parses it back (as a model's text would be), so the
reference policy's demonstrations are checked through the same parser the agent loop uses.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass, field
from typing import Any

from envs.core import Environment, Message, reward_reason
from envs.parsing import format_assistant, parse_assistant
from envs.registry import ReferencePolicy as Policy
from envs.tools import Tool


@dataclass
class EpisodeRecord:
    """What one text-level episode produced."""

    messages: list[Message] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    reward: float = 0.0
    reason: str = "in_progress"
    done: bool = False
    truncated: bool = False
    turns: int = 0

    def transcript(self) -> str:
        """One line per message, for reports and debugging."""
        return "\n".join(f"{m.role}: {format_assistant(m) if m.role == 'assistant' else m.content}"
                         for m in self.messages)


async def play_episode(env: Environment, policy: Policy, max_turns: int = 32,
                       through_text: bool = True) -> EpisodeRecord:
    """Run `policy` against `env` until the episode ends or `max_turns` turns have passed.

    With `through_text`, each action is rendered with `format_assistant` and re-parsed, so what
    the environment sees is exactly what a model emitting that text would produce.
    """
    observations, tools = await env.reset()
    record = EpisodeRecord(messages=list(observations), tools=tools)
    try:
        while record.turns < max_turns:
            action = await policy(env, list(record.messages))
            if through_text:
                action = parse_assistant(format_assistant(action)) if not action.parse_error else action
            record.turns += 1
            observations, reward, done, truncated = await env.step(action)
            record.messages += [action, *observations]
            if done or truncated:
                record.reward, record.reason = float(reward), reward_reason(reward)
                record.done, record.truncated = done, truncated
                break
    finally:
        await env.close()
    return record


def _random_value(rng: random.Random, schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    if "enum" in schema and rng.random() < 0.7:
        return rng.choice(schema["enum"])
    if rng.random() < 0.15:  # deliberately the wrong type
        return rng.choice([None, True, [], {}, "x", 3, 2.5])
    if kind == "string":
        return "".join(rng.choice(string.ascii_letters + string.digits + "+-*/() ")
                       for _ in range(rng.randint(0, 8)))
    if kind == "integer":
        return rng.randint(-5, 100)
    if kind == "number":
        return round(rng.uniform(-10, 500), rng.randint(0, 4))
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "array":
        return [_random_value(rng, schema.get("items", {})) for _ in range(rng.randint(0, 3))]
    return rng.choice(["a", 1, 1.5, None])


def random_policy(seed: int, tools: list[Tool] | None = None) -> Policy:
    """A policy that emits random calls (valid and not), garbage text and malformed JSON.

    It reads the tool list from `tools` or, when None, from the episode's `env.tools` attribute.
    """
    rng = random.Random(seed)

    async def act(env: Environment, history: list[Message]) -> Message:
        available = tools if tools is not None else list(getattr(env, "tools", []))
        roll = rng.random()
        if roll < 0.1:
            return parse_assistant("".join(rng.choice(string.printable) for _ in range(20)))
        if roll < 0.2:
            return parse_assistant('<tool_call>{"name": "calc", "arguments": {"expr": </tool_call>')
        if roll < 0.25 or not available:
            name = "".join(rng.choice(string.ascii_lowercase) for _ in range(5))
            return parse_assistant(f'<tool_call>{{"name": "{name}", "arguments": {{}}}}</tool_call>')
        tool = rng.choice(available)
        props = tool.parameters.get("properties", {})
        args = {k: _random_value(rng, v) for k, v in props.items() if rng.random() < 0.95}
        text = json.dumps({"name": tool.name, "arguments": args})
        return parse_assistant(f"<tool_call>{text}</tool_call>")

    return act
