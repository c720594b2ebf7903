"""One agent episode's side of the endpoint: prompts as token ids, sampling, and the record.

Why prompts re-use sampled ids: an agent re-sends its whole history every turn. Rendering that
history through the chat template and tokenizing it again does not always give back the ids the
engine sampled (BPE merges across a boundary, JSON whitespace the parser normalised, content the
agent stripped), and a trainer fed the re-tokenized text would train on tokens the policy never
produced. So every completion leaves a *prefix*: the messages the agent sent plus the assistant
message it got back, and the exact ids (prompt + sampled). When a later request starts with those
messages unchanged, its prompt is that prefix's ids plus only the newly appended messages' tokens,
as the native agent loop builds them. When the agent changed its history, the request is rendered
afresh; `assembly.assemble_segments` then finds that the prompt does not extend what was sampled
(a fork) and starts a new segment. Either way the trajectory holds only ids the engine saw.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from actors.types import GenerationOutput, SamplingSpec
from envs.chat import ChatCodec
from envs.core import Message
from envs.parsing import parse_assistant
from rollout.openai_api.types import ChatParams, Choice, CompletionResult, EndpointError

if TYPE_CHECKING:
    from actors.types import GenFinishReason

logger = logging.getLogger(__name__)
_OVERRIDE_LOGGED = False


class Generator(Protocol):
    """What a session samples from (a `GenerationRouter`, or a scripted one in unit tests)."""

    async def generate(self, prompt_token_ids: list[int], spec: SamplingSpec) -> GenerationOutput: ...


@dataclass
class RecordedCompletion:
    """One sampled completion exactly as the engine saw and produced it."""

    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    policy_version: int
    newest_policy_version: int | None
    finish_reason: GenFinishReason
    choice_index: int  # > 0: an extra choice of a request with n > 1 (a sibling, not a fork)


@dataclass
class _Prefix:
    """A state an agent can continue from: the messages up to an assistant reply, and its ids."""

    keys: list[tuple]
    tools_key: str
    messages: list[Message]
    token_ids: list[int]


def message_key(m: Message) -> tuple:
    """What must be equal for a re-sent message to count as unchanged: role, text (stripped, as the
    parser strips it) and calls (arguments compared as data, so re-serialised JSON still matches).
    Tool-call ids are left out: templates do not render them."""
    calls = tuple((c.name, json.dumps(c.arguments, sort_keys=True)) for c in m.tool_calls)
    return m.role, (m.content or "").strip(), calls, m.name


@dataclass
class EpisodeSession:
    """Serves one episode's chat completions and records them (see the module doc).

    Limits: `max_turns` requests (the episode's turn budget), `max_model_len` tokens of prompt plus
    completion, and the run's `sampling.max_tokens` per completion (a request asking for more is
    capped). A request past a limit is refused with an `EndpointError`, and `limit` says which one
    ("budget" or "context"), so an agent that gives up there ends as truncated, not as an error.
    """

    codec: ChatCodec
    router: Generator
    sampling: SamplingSpec
    max_model_len: int
    max_turns: int
    stream: str = ""
    model_name: str = "labrl-policy"
    completions: list[RecordedCompletion] = field(default_factory=list)
    turns: int = 0
    tool_calls: int = 0
    unparsed_calls: int = 0
    generation_s: float = 0.0
    sampling_overrides: int = 0  # requests whose temperature / top_p were replaced by the run's
    limit: str | None = None
    transcript: list[dict[str, Any]] = field(default_factory=list)  # the latest turn's conversation
    _prefixes: list[_Prefix] = field(default_factory=list)

    async def complete(self, messages: list[Message], tools: list[dict[str, Any]] | None,
                       params: ChatParams) -> CompletionResult:
        if self.turns >= self.max_turns:
            self.limit = "budget"
            raise EndpointError(400, "turn_budget_exhausted",
                                f"this episode's turn budget ({self.max_turns} completions) is spent")
        offered = tools if params.tool_choice == "auto" else None
        codec = ChatCodec(self.codec.tokenizer, offered)
        prompt = self._prompt_ids(messages, codec, _tools_key(offered))
        room = self.max_model_len - len(prompt)
        if room <= 0:
            self.limit = "context"
            raise EndpointError(400, "context_length_exceeded",
                                f"the prompt has {len(prompt)} tokens; the policy's context is "
                                f"{self.max_model_len} (generation.max_model_len)", param="messages")
        spec = self._spec(params, room)
        self.turns += 1
        clock = time.monotonic()
        outputs = await asyncio.gather(*(self.router.generate(prompt, self._seeded(spec, params, i))
                                         for i in range(params.n)))
        self.generation_s += time.monotonic() - clock
        choices = [self._record(i, out, prompt, messages, codec, params) for i, out in enumerate(outputs)]
        return CompletionResult(choices=choices, prompt_tokens=len(prompt),
                                policy_version=min(o.policy_version for o in outputs))

    def _prompt_ids(self, messages: list[Message], codec: ChatCodec, tools_key: str) -> list[int]:
        """The recorded ids of the longest unchanged prefix plus the new messages' tokens, or the
        whole conversation rendered afresh when nothing recorded matches."""
        keys = [message_key(m) for m in messages]
        best = max((p for p in self._prefixes
                    if p.tools_key == tools_key and len(p.keys) < len(keys) and keys[:len(p.keys)] == p.keys),
                   key=lambda p: len(p.keys), default=None)
        if best is None:
            return codec.prompt_tokens(messages)
        return best.token_ids + codec.continuation_tokens(messages[:len(best.keys)], messages[len(best.keys):])

    def _spec(self, params: ChatParams, room: int) -> SamplingSpec:
        stop_ids = list(self.sampling.stop_token_ids)
        for text in params.stop:
            ids = self.codec.encode(text)
            if len(ids) != 1:
                raise EndpointError(400, "invalid_stop", f"stop string {text!r} is {len(ids)} tokens of the "
                                    "policy's vocabulary; the engine stops on single tokens only", param="stop")
            stop_ids += ids
        self._note_sampling_override(params)
        asked = params.max_tokens or self.sampling.max_tokens
        return replace(self.sampling, max_tokens=min(asked, self.sampling.max_tokens, room),
                       stop_token_ids=stop_ids)

    def _note_sampling_override(self, params: ChatParams) -> None:
        """Completions are sampled at the run's temperature and top_p, whatever the agent asks: the
        trainer optimises softmax(logits / generation.temperature), and tokens drawn from another
        distribution would enter the update with mismatched logprobs. Overrides are counted and
        logged once per process."""
        global _OVERRIDE_LOGGED
        asked = {"temperature": params.temperature, "top_p": params.top_p}
        run = {"temperature": self.sampling.temperature, "top_p": self.sampling.top_p}
        differing = [k for k, v in asked.items() if v is not None and v != run[k]]
        if differing:
            self.sampling_overrides += 1
            if not _OVERRIDE_LOGGED:
                _OVERRIDE_LOGGED = True
                logger.warning("agent asked for %s; completions use the run's %s (the trainer's distribution)",
                               {k: asked[k] for k in differing}, {k: run[k] for k in differing})

    def _seeded(self, spec: SamplingSpec, params: ChatParams, choice: int) -> SamplingSpec:
        """The request's seed, else one derived from the run's seed, the episode and the turn (as
        native episodes derive theirs), so reruns on the same weights sample the same tokens."""
        base = params.seed if params.seed is not None else spec.seed
        if base is None:
            return spec
        key = f"{base}/{self.stream}/{self.turns}/{choice}" if params.seed is None else f"{base}/{choice}"
        return replace(spec, seed=zlib.crc32(key.encode()) & 0x7FFFFFFF)

    def _record(self, index: int, out: GenerationOutput, prompt: list[int], messages: list[Message],
                codec: ChatCodec, params: ChatParams) -> Choice:
        self.completions.append(RecordedCompletion(
            prompt_ids=prompt, token_ids=list(out.token_ids), logprobs=list(out.logprobs),
            policy_version=out.policy_version, newest_policy_version=out.newest_policy_version,
            finish_reason=out.finish_reason, choice_index=index))
        choice = self._choice(out, params)
        if index == 0:
            self.transcript = [m.to_chat() for m in [*messages, choice.message]]
        if out.token_ids and out.token_ids[-1] == self.codec.eos_token_id:
            # Only a turn closed by EOS can be continued token-exactly (continuation_tokens' rule).
            history = [*messages, choice.message]
            self._prefixes.append(_Prefix([message_key(m) for m in history], _tools_key(codec.tools),
                                          history, prompt + list(out.token_ids)))
        return choice

    def _choice(self, out: GenerationOutput, params: ChatParams) -> Choice:
        ids = out.token_ids
        if ids and out.finish_reason == "stop" and ids[-1] != self.codec.eos_token_id:
            ids = ids[:-1]  # a stop token the agent asked for: OpenAI leaves it out of the text
        text = self.codec.assistant_text(ids)
        # One decode per token: only for a request that asked for logprobs (which carry them).
        tokens = [self.codec.decode([i]) for i in out.token_ids] if params.logprobs else []
        if params.tool_choice == "none":
            return Choice(Message("assistant", content=text), _finish(out.finish_reason, False),
                          list(out.token_ids), list(out.logprobs), tokens)
        parsed = parse_assistant(text)
        if parsed.parse_error:  # comes back as text, counted
            self.unparsed_calls += 1
            return Choice(Message("assistant", content=text), _finish(out.finish_reason, False),
                          list(out.token_ids), list(out.logprobs), tokens, parse_failed=True)
        self.tool_calls += len(parsed.tool_calls)
        return Choice(parsed, _finish(out.finish_reason, bool(parsed.tool_calls)), list(out.token_ids),
                      list(out.logprobs), tokens)


def _finish(engine_finish: str, has_calls: bool) -> str:
    if engine_finish == "length":
        return "length"
    return "tool_calls" if has_calls else "stop"


def _tools_key(tools: list[dict[str, Any]] | None) -> str:
    return json.dumps(tools or [], sort_keys=True)
