"""What one chat-completion request asks the policy for, and what it gets back.

Plain dataclasses shared by `session` (which samples) and `protocol`/`server` (which speak
OpenAI's wire format), so neither depends on the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from envs.core import Message

ChoiceFinish = Literal["stop", "length", "tool_calls"]


@dataclass
class ChatParams:
    """The sampling parameters of one request, already validated by `protocol.parse_request`.

    None means "the run's setting" (generation.max_new_tokens caps `max_tokens` in any case).
    `temperature` and `top_p` are read but completions are sampled at the run's values, which the
    trainer optimises (session.EpisodeSession counts requests that asked otherwise). `stop` holds
    strings that must each be one token of the policy's vocabulary (the engine stops on token ids).
    `tool_choice` "none" leaves the tools out of the prompt and returns text unparsed.
    """

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    tool_choice: Literal["auto", "none"] = "auto"
    logprobs: bool = False


@dataclass
class Choice:
    """One sampled completion. `message` is the assistant message the agent receives: tool calls
    parsed by labrl's parser; when a call does not parse (`parse_failed`), the whole text comes back
    as content with no tool calls. `tokens` are the sampled ids' texts (only when the
    request asked for `logprobs`)."""

    message: Message
    finish_reason: ChoiceFinish
    token_ids: list[int]
    logprobs: list[float]
    tokens: list[str]
    parse_failed: bool = False


@dataclass
class CompletionResult:
    choices: list[Choice]
    prompt_tokens: int
    policy_version: int

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.choices)


class EndpointError(Exception):
    """A request the endpoint refuses: the HTTP status and an OpenAI-style error body
    (`{"error": {"message", "type", "param", "code"}}`)."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
