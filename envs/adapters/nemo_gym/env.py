"""One NeMo Gym task row as a labrl `Environment`, in either of NeMo Gym's two server shapes.

Resources-server shape (`SimpleResourcesServer`): `reset()` POSTs the row to `/seed_session`
(which sets the episode's session cookie); each tool call is `POST /<tool>` with the arguments as
the JSON body, after labrl's argument checks against the row's schema; an assistant turn with no
tool call is the final answer, and the episode ends with `POST /verify` (the row plus the episode
rendered as a Responses-API response). Its `reward` is the episode reward; `failure_kind`, where the
server gives one, is the reward reason (else correct / partial / wrong_value by value); and
`mask_sample: true` marks the reward masked, so the trajectory is dropped and counted, not trained.

Gymnasium shape (`GymnasiumServer`): `reset()` POSTs the row to `/reset`; every assistant turn is
`POST /step` with that turn as a response; the server runs the tools itself and answers with an
observation (a user message), `info.tool_outputs` (tool messages), a reward and terminated /
truncated.

Failures never escape `step()`: a tool call the server rejects or that times out is an error
observation; a `/verify` or `/step` that fails ends the episode with reason `env_error`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from envs.adapters.nemo_gym.http import EpisodeClient
from envs.adapters.nemo_gym.responses import prompt_messages, response, tool_schemas
from envs.core import Environment, Message, Reward, ToolCall
from envs.dataset import Task
from envs.tool_env import outcome_reason
from envs.tools import Tool, error_message, run_tool_call

logger = logging.getLogger(__name__)


def verdict(value: float, failure_kind: str | None, masked: bool) -> Reward:
    """The episode reward with its reason: the server's failure kind, else one from the value."""
    return Reward(value, failure_kind or outcome_reason(value), masked=masked)


class _NemoGymEpisode(Environment):
    """What both shapes share: the row, the episode's HTTP client, and failure handling."""

    def __init__(self, task: Task, url: str, headers: dict[str, str], timeout_s: float,
                 max_connections: int):
        self.task = task
        self.row: dict[str, Any] = task.data["row"]
        self.params: dict[str, Any] = self.row["responses_create_params"]
        self._client_args = (url, headers, timeout_s, max_connections)
        self.client: EpisodeClient | None = None
        self.history: list[Message] = []

    def _open(self) -> EpisodeClient:
        self.client = EpisodeClient(*self._client_args)
        return self.client

    def _failed(self, where: str, err: Exception) -> tuple[list[Message], float, bool, bool]:
        logger.warning("nemo_gym %s failed for %s: %s: %s", where, self.task.id, type(err).__name__, err)
        return ([error_message(None, f"environment failed: {type(err).__name__}")],
                Reward(0.0, "env_error"), True, True)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


class NemoGymResourcesEnvironment(_NemoGymEpisode):
    """A `SimpleResourcesServer` episode: tools are POSTs, the final answer goes to `/verify`."""

    async def reset(self) -> tuple[list[Message], list[Tool]]:
        await self._open().post_text("/seed_session", self.row)
        self.tools = {t.name: t for t in (self._remote_tool(s) for s in tool_schemas(self.params))}
        self.history = prompt_messages(self.params)
        self.prompt_len = len(self.history)
        return list(self.history), list(self.tools.values())

    def _remote_tool(self, schema: dict[str, Any]) -> Tool:
        name = schema["name"]

        async def call(**arguments: Any) -> str:
            assert self.client is not None
            return await self.client.post_text(f"/{name}", arguments)

        return dataclasses.replace(Tool.from_schema(schema), fn=call)

    async def step(self, action: Message) -> tuple[list[Message], float, bool, bool]:
        self.history.append(action)
        if not action.tool_calls and not action.parse_error:
            return await self._verify()
        observations = [await self._call(c) for c in action.tool_calls]
        if action.parse_error:
            observations.append(error_message(None, f"invalid tool call: {action.parse_error}"))
        self.history += observations
        failed = any(m.is_error for m in observations)
        reason = "invalid_format" if action.parse_error else "tool_error" if failed else "in_progress"
        return observations, Reward(0.0, reason), False, False

    async def _call(self, call: ToolCall) -> Message:
        result = await run_tool_call(call, self.tools, None, self.tool_timeout_s)
        return result.message

    async def _verify(self) -> tuple[list[Message], float, bool, bool]:
        assert self.client is not None
        body = {**self.row, "response": response(self.params, self.history[self.prompt_len:])}
        try:  # the client's own time limit (options.timeout_s) bounds a slow verifier
            answer = await self.client.post_json("/verify", body)
        except Exception as err:  # noqa: BLE001 - a failing verifier ends the episode, not the run
            return self._failed("/verify", err)
        reward = verdict(float(answer.get("reward", 0.0)), answer.get("failure_kind"),
                         bool(answer.get("mask_sample", False)))
        return [], reward, True, False


class NemoGymGymnasiumEnvironment(_NemoGymEpisode):
    """A `GymnasiumServer` episode: every turn is one `/step`; the server runs the tools."""

    async def reset(self) -> tuple[list[Message], list[Tool]]:
        answer = await self._open().post_json("/reset", self.row)
        self.history = prompt_messages(self.params)
        if answer.get("observation"):
            self.history.append(Message(role="user", content=str(answer["observation"])))
        return list(self.history), [Tool.from_schema(s) for s in tool_schemas(self.params)]

    async def step(self, action: Message) -> tuple[list[Message], float, bool, bool]:
        assert self.client is not None
        body = {**self.row, "response": response(self.params, [action])}
        try:
            answer = await self.client.post_json("/step", body)
        except Exception as err:  # noqa: BLE001 - a failing server ends the episode, not the run
            return self._failed("/step", err)
        info = answer.get("info") or {}
        observations = [Message(role="tool", content=str(o.get("output", "")), tool_call_id=o.get("call_id"))
                        for o in info.get("tool_outputs", [])]
        if answer.get("observation"):
            observations.append(Message(role="user", content=str(answer["observation"])))
        terminated, truncated = bool(answer.get("terminated")), bool(answer.get("truncated"))
        value = float(answer.get("reward", 0.0))
        if terminated:
            reward = verdict(value, info.get("failure_kind"), bool(info.get("mask_sample", False)))
        else:
            reward = Reward(value, "budget_exceeded" if truncated else "in_progress")
        return observations, reward, terminated or truncated, truncated
