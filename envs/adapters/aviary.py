"""Run an Aviary (`fhaviary`, import name `aviary`) environment unchanged behind our `Environment`,
in process or served over HTTP by Aviary's own `TaskDatasetServer`.

Why: Aviary is the reference API for scientific agent environments; wrapping instead of porting
lets existing Aviary environments train here as they are. The wrapped environment executes its
own tools; we only translate messages and tool schemas, and make sure nothing it raises escapes.

Aviary gives plain float rewards; the adapter records a reason: at the end of an episode
`correct` (reward >= 1), `partial` (> 0) or `wrong_value`; `budget_exceeded` when it was truncated;
otherwise `in_progress`, or the step's first error (`tool_error`, `timeout`, `invalid_format`).

Failed tool calls: an Aviary tool response carries no error flag, on either side of HTTP; the only
signal is Aviary's own wording (`Environment.exec_tool_calls`, fhaviary 0.37), and exactly that is
recognised (`aviary_call_error`): a tool message whose content starts with
"Encountered exception during tool call: " (the tool raised, was called with bad arguments or ran
past `exec_timeout`; needs `handle_tool_exc=True`, else the exception fails the step), or is exactly
"Invalid tool call: <its tool name>" (an unknown tool). Those observations get `is_error=True`;
nothing else does. The one ambiguity: a tool whose normal output starts with that exact sentence.

An action with no tool call (plain text, or text that could not be parsed into a call) never
reaches the Aviary environment: it gets our own error observation (reason `invalid_format`), as in
`ToolEnvironment`, and costs a turn of the run's `env.max_turns`, nothing on the Aviary side.
Why not forward it: an empty `ToolRequestMessage` gives an empty observation in most Aviary
environments and an exception (ending the episode as an environment failure) in others.

`aviary_http_spec` (registered as `aviary_http` by envs/adapters/__init__.py) trains on a
`TaskDatasetServer`; see README_aviary.md.
fhaviary is optional: importing this module without it raises ImportError with a hint.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import weakref
from typing import Any, Callable, Mapping, Sequence

try:
    import httpx
    from aviary.core import Environment as AviaryEnv
    from aviary.core import Message as AviaryMessage
    from aviary.core import TaskDataset as AviaryTaskDataset
    from aviary.core import TaskDatasetClient
    from aviary.core import ToolCall as AviaryToolCall
    from aviary.core import ToolCallFunction, ToolRequestMessage, ToolResponseMessage
    from aviary.env_client import TaskEnvironmentClient
except ImportError as err:  # pragma: no cover - exercised only without fhaviary
    raise ImportError("envs.adapters.aviary needs fhaviary: pip install fhaviary") from err

from pydantic import BaseModel, ConfigDict, Field, ImportString, field_validator

from envs.core import Environment, Message, Reward
from envs.dataset import Task, TaskDataset
from envs.registry import EnvSpec, ReferencePolicy, no_reference_policy
from envs.tool_env import NO_CALL_TEXT, outcome_reason
from envs.tools import Tool, error_message

logger = logging.getLogger(__name__)

AVIARY_EXCEPTION_PREFIX = "Encountered exception during tool call: "
AVIARY_INVALID_CALL = "Invalid tool call: {name}"


def aviary_call_error(msg: AviaryMessage) -> str | None:
    """The reward reason (`tool_error` or `timeout`) of the failed call that `msg` reports, or
    None for anything else (a normal tool result, a user message); the rule is the module's."""
    if not isinstance(msg, ToolResponseMessage):
        return None
    if msg.content.startswith(AVIARY_EXCEPTION_PREFIX):
        # Aviary writes repr(exception) after the prefix; `exec_timeout` raises TimeoutError.
        raised = msg.content[len(AVIARY_EXCEPTION_PREFIX):]
        return "timeout" if raised.startswith("TimeoutError(") else "tool_error"
    if msg.content == AVIARY_INVALID_CALL.format(name=msg.name):
        return "tool_error"
    return None


def message_from_aviary(msg: AviaryMessage) -> Message:
    """Our Message for an Aviary observation (tool responses keep their call id and tool name;
    failed calls are marked `is_error`)."""
    role = msg.role if msg.role in ("system", "user", "assistant", "tool") else "user"
    content = msg.content if isinstance(msg.content, str) else ("" if msg.content is None else str(msg.content))
    if isinstance(msg, ToolResponseMessage):
        return Message(role="tool", content=content, tool_call_id=msg.tool_call_id, name=msg.name,
                       is_error=aviary_call_error(msg) is not None)
    return Message(role=role, content=content)  # type: ignore[arg-type]


def action_to_aviary(action: Message) -> ToolRequestMessage:
    """The Aviary request for our assistant action (calls keep their ids). The arguments go in
    whole: any name the model chose, `id` included, reaches the tool (which rejects it)."""
    calls = [AviaryToolCall(id=c.id or AviaryToolCall.generate_id(),
                            function=ToolCallFunction(name=c.name, arguments=dict(c.arguments)))
             for c in action.tool_calls]
    return ToolRequestMessage(content=action.content or None, tool_calls=calls)


def tool_from_aviary(tool: Any) -> Tool:
    """A schema-only Tool (Aviary executes it) from an Aviary Tool."""
    return Tool.from_schema(tool.model_dump(by_alias=True, exclude_none=True))


def _reason(reward: float, done: bool, truncated: bool, step_error: str | None) -> str:
    if done:
        return outcome_reason(reward)
    return "budget_exceeded" if truncated else step_error or "in_progress"


class AviaryEnvironment(Environment):
    """Wraps one Aviary environment instance for one episode. `task` is the labrl task it plays,
    where known: a reference solver reads it (the Aviary environment may be on another machine)."""

    def __init__(self, env: AviaryEnv, task: Task | None = None):
        self.env = env
        self.task = task
        self.tools: list[Tool] = []

    async def reset(self) -> tuple[list[Message], list[Tool]]:
        observations, tools = await self.env.reset()
        self.tools = [tool_from_aviary(t) for t in tools]
        return [message_from_aviary(m) for m in observations], list(self.tools)

    async def step(self, action: Message) -> tuple[list[Message], float, bool, bool]:
        parse_obs = ([error_message(None, f"invalid tool call: {action.parse_error}")]
                     if action.parse_error else [])
        if not action.tool_calls:  # nothing for Aviary to run: see the module docstring
            return parse_obs or [error_message(None, NO_CALL_TEXT)], Reward(0.0, "invalid_format"), False, False
        try:
            observations, reward, done, truncated = await self.env.step(action_to_aviary(action))
        except Exception as err:  # noqa: BLE001 - a failing environment ends the episode, not the run
            logger.warning("aviary environment step failed: %s: %s", type(err).__name__, err)
            return ([error_message(None, f"environment failed: {type(err).__name__}")],
                    Reward(0.0, "env_error"), True, True)
        errors = [e for e in map(aviary_call_error, observations) if e is not None]
        step_error = errors[0] if errors else "invalid_format" if parse_obs else None
        value = float(reward)
        out = [message_from_aviary(m) for m in observations] + parse_obs
        return out, Reward(value, _reason(value, done, truncated, step_error)), bool(done), bool(truncated)

    async def close(self) -> None:
        await self.env.close()


def aviary_spec(name: str, train: AviaryTaskDataset, heldout: AviaryTaskDataset | None = None,
                reference_policy: ReferencePolicy | None = None,
                make_aviary_env: Callable[[Task], AviaryEnv] | None = None) -> EnvSpec:
    """An EnvSpec over Aviary task datasets (one difficulty level; tasks are dataset indices).

    `make_dataset` takes the first `num_train` / `num_heldout` indices of `train` / `heldout` (all
    when fewer exist); `difficulties` and `seed` are ignored because the Aviary datasets fix them.
    """
    def make_dataset(num_train: int, num_heldout: int, difficulties: Sequence[int] = (1,),
                     seed: int = 0) -> TaskDataset:
        tasks = [Task(f"{name}/train/{i:05d}", name, "train", 1, seed, {"index": i})
                 for i in range(min(num_train, len(train)))]
        if heldout is not None:
            tasks += [Task(f"{name}/heldout/{i:05d}", name, "heldout", 1, seed, {"index": i})
                      for i in range(min(num_heldout, len(heldout)))]
        return TaskDataset(tasks)

    def make_env(task: Task) -> Environment:
        if make_aviary_env is not None:
            return AviaryEnvironment(make_aviary_env(task), task)
        source = train if task.split == "train" or heldout is None else heldout
        return AviaryEnvironment(source.get_new_env_by_idx(task.data["index"]), task)

    return EnvSpec(name=name, make_dataset=make_dataset, make_env=make_env,
                   reference_policy=reference_policy or no_reference_policy, difficulties=(1,),
                   description=f"Aviary environment {name}")


# --- aviary_http: Aviary's TaskDatasetServer over HTTP ---------------------------------------

AVIARY_HTTP = "aviary_http"
API_KEY_HEADER = "X-API-Key"  # what fhaviary's TaskDatasetServer checks (it has no env variable of its own)
# Room for every concurrent episode of an env worker (rollout.max_concurrent_episodes, 64 by default)
# to keep its connection; idle ones close before uvicorn's 5 s keep-alive ends, so a request never
# goes out on a connection the server is closing.
_POOL_LIMITS = httpx.Limits(max_connections=128, max_keepalive_connections=128, keepalive_expiry=4.0)
_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = weakref.WeakKeyDictionary()


def http_pool() -> httpx.AsyncClient:
    """The connection pool of the running event loop, shared by all its episodes. One per loop
    because a connection belongs to the loop that opened it; an env worker (a Ray actor) runs one
    loop, so this is one pool per env worker process."""
    loop = asyncio.get_running_loop()
    pool = _POOLS.get(loop)
    if pool is None or pool.is_closed:
        pool = _POOLS[loop] = httpx.AsyncClient(limits=_POOL_LIMITS)
    return pool


async def close_http_pool() -> None:
    """Close the running loop's pool: for whoever ends a loop (tests), since its connections stay
    open otherwise."""
    pool = _POOLS.pop(asyncio.get_running_loop(), None)
    if pool is not None:
        await pool.aclose()


def _server_detail(response: httpx.Response, limit: int = 300) -> str:
    """The server's reason for an error status: FastAPI's `detail`, cut to its end, where Aviary's
    traceback of a failed environment names the exception."""
    try:
        body = response.json()
    except ValueError:
        body = None
    text = str(body.get("detail", body) if isinstance(body, dict) else response.text).strip()
    return text if len(text) <= limit else "..." + text[-limit:]


class PooledTaskEnvironmentClient(TaskEnvironmentClient):
    """Aviary's client for one environment of a `TaskDatasetServer`, its requests on `http_pool()`.

    Why: Aviary's `_post` opens a new HTTP client, hence a new connection, for every request. Only
    that method is replaced (fhaviary 0.37's `EnvironmentClient._post`), so starting, resetting,
    stepping and closing remain Aviary's code; if a later fhaviary renames it, episodes still
    work, on one connection per request.
    """

    async def _post(self, url: str, json: Mapping[str, Any]) -> httpx.Response:
        headers = {API_KEY_HEADER: self._api_key} if self._api_key else {}
        response = await http_pool().post(url, json=dict(json), headers=headers,
                                          timeout=self._request_timeout)
        if response.is_error:
            # The same error type as Aviary's raise_for_status(), with the server's reason added.
            raise httpx.HTTPStatusError(f"HTTP {response.status_code} from {url}: {_server_detail(response)}",
                                        request=response.request, response=response)
        return response


class AviaryServerError(RuntimeError):
    """The Aviary server cannot be reached, refuses us, or serves a dataset without a length."""


def dataset_size(url: str, api_key: str | None, timeout_s: float) -> int:
    """How many tasks the server's dataset has (`/info`, asked through Aviary's `TaskDatasetClient`)."""
    try:
        return len(TaskDatasetClient(url, request_timeout=timeout_s, api_key=api_key))
    except httpx.HTTPStatusError as err:
        status = err.response.status_code
        hint = " (check the API key: env.options.api_key_env)" if status in (401, 403) else ""
        raise AviaryServerError(f"the Aviary server at {url} refused GET /info{hint}: HTTP {status}: "
                                f"{_server_detail(err.response)}") from None
    except httpx.TransportError as err:
        raise AviaryServerError(f"cannot reach the Aviary server at {url}: {type(err).__name__}: {err}") from None
    except TypeError as err:  # Aviary's len() when /info has no dataset_size
        raise AviaryServerError(f"the Aviary server at {url} serves a dataset without a length; tasks "
                                "are its indices, so its TaskDataset must define __len__") from err


def split_indices(size: int, num_train: int, num_heldout: int, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) indices of a dataset of `size` tasks: a shuffle seeded by `seed`, held-out
    first. Why: the held-out tasks then depend only on (size, seed, num_heldout), not on
    num_train, and no index is in both splits. Fewer training tasks than asked, with a warning, on
    a small dataset; ValueError when the held-out split would leave none."""
    if num_heldout >= size:
        raise ValueError(f"the Aviary dataset has {size} tasks: {num_heldout} held-out tasks leave none "
                         "for training (lower env.num_heldout_tasks and eval.num_tasks)")
    order = list(range(size))
    random.Random(f"{AVIARY_HTTP}:{seed}").shuffle(order)
    heldout, rest = order[:num_heldout], order[num_heldout:]
    if num_train > len(rest):
        logger.warning("the Aviary dataset has %d tasks: %d for training, not %d", size, len(rest), num_train)
    return rest[:num_train], heldout


class AviaryHttpOptions(BaseModel):
    """`env.options` of `aviary_http`; an unknown or mistyped option is a ValueError naming it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="Base URL of the TaskDatasetServer, e.g. http://127.0.0.1:8041.")
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the server's API key (sent as "
                          "X-API-Key), so the key stays out of configs and logs.")
    request_timeout_s: float = Field(120.0, gt=0, description="Limit of one request (start, reset, step, close).")
    reference_policy: ImportString[Callable[..., Any]] | None = Field(
        None, description="`pkg.module:function`, a reference solver `(env, history) -> action` for SFT "
                          "demonstrations; its env is an AviaryEnvironment whose `task.data['index']` is "
                          "the server's task index. Without one, set sft.enabled=false.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, not {url!r}")
        return url.rstrip("/")


def _api_key(variable: str | None) -> str | None:
    """The key held by environment variable `variable`. Read in every process that builds the spec
    (preflight and each env worker), so it must be set where the env workers run."""
    if variable is None:
        return None
    key = os.environ.get(variable)
    if not key:
        raise ValueError(f"api_key_env: environment variable {variable} is not set or empty")
    return key


def aviary_http_spec(**options: Any) -> EnvSpec:
    """`aviary_http`: the tasks of an Aviary `TaskDatasetServer`, played through Aviary's own client.

    Building the spec is offline (it runs in preflight and in every env worker); the server is
    first asked in `make_dataset` (its size). Tasks are the server's indices, one difficulty level
    (`difficulties` is ignored), split by `split_indices`.
    """
    opts = AviaryHttpOptions.model_validate(options)
    api_key = _api_key(opts.api_key_env)

    def make_dataset(num_train: int, num_heldout: int, difficulties: Sequence[int] = (1,),
                     seed: int = 0) -> TaskDataset:
        train, heldout = split_indices(dataset_size(opts.url, api_key, opts.request_timeout_s),
                                       num_train, num_heldout, seed)
        return TaskDataset([Task(f"{AVIARY_HTTP}/{split}/{i:05d}", AVIARY_HTTP, split, 1, seed, {"index": i})
                            for split, indices in (("train", train), ("heldout", heldout))
                            for i in indices])

    def make_env(task: Task) -> Environment:
        client = PooledTaskEnvironmentClient(task.data["index"], opts.url,
                                             request_timeout=opts.request_timeout_s, api_key=api_key)
        return AviaryEnvironment(client, task)

    return EnvSpec(name=AVIARY_HTTP, make_dataset=make_dataset, make_env=make_env,
                   reference_policy=opts.reference_policy or no_reference_policy, difficulties=(1,),
                   description=f"Aviary TaskDatasetServer at {opts.url}")

