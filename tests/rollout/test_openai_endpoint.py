"""The OpenAI-compatible endpoint, driven by the official `openai` client: tool calls in OpenAI's
format, streaming equal to non-streaming, n and logprobs, unparseable calls as text, 400s naming
the unsupported parameter, /models, per-episode URLs that never mix, and 404 for a closed episode.

A real `AgentEndpoint` serves real `EpisodeSession`s over the tiny char tokenizer; only the engine is
scripted (it returns the tokens of canned assistant texts), so these run in seconds. The real-engine
runs are in tests/e2e.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import openai
import pytest

from actors.types import GenerationOutput, SamplingSpec
from envs.chat import ChatCodec
from models.tiny import build_tokenizer
from rollout.openai_api.protocol import (chat_completion_chunks, chat_completion_response, parse_request)
from rollout.openai_api.server import AgentEndpoint
from rollout.openai_api.session import EpisodeSession
from rollout.openai_api.types import EndpointError

CALL = '<tool_call>{"name": "mass", "arguments": {"element": "Na"}}</tool_call>'
ANSWER = "Na weighs 22.99 g/mol."
MASS_TOOL = {"type": "function", "function": {
    "name": "mass", "description": "Molar mass of an element in g/mol.",
    "parameters": {"type": "object", "properties": {"element": {"type": "string"}}, "required": ["element"]}}}
QUESTION = [{"role": "system", "content": "You are a chemist."},
            {"role": "user", "content": "What is the molar mass of sodium?"}]
CODEC = ChatCodec(build_tokenizer())
LOGPROB = -0.5


class ScriptedRouter:
    """Answers each generate call with the next canned assistant text (its char ids + EOS)."""

    def __init__(self, texts: list[str], delay_s: float = 0.0, version: int = 3):
        self.texts, self.delay_s, self.version = list(texts), delay_s, version
        self.prompts: list[list[int]] = []

    async def generate(self, prompt_token_ids: list[int], spec: SamplingSpec) -> GenerationOutput:
        self.prompts.append(list(prompt_token_ids))
        text = self.texts.pop(0)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        ids = CODEC.encode(text) + [CODEC.eos_token_id]
        return GenerationOutput(ids, [LOGPROB] * len(ids), "stop", self.version)


class CrashingRouter:
    async def generate(self, prompt_token_ids: list[int], spec: SamplingSpec) -> GenerationOutput:
        raise RuntimeError("engine exploded")


def _session(router, max_turns: int = 6) -> EpisodeSession:
    spec = SamplingSpec(max_tokens=128, stop_token_ids=[CODEC.eos_token_id])
    return EpisodeSession(CODEC, router, spec, max_model_len=1024, max_turns=max_turns, model_name="tiny-policy")


def _serve(test) -> None:
    """Run `test(endpoint, open_client)` against a started endpoint; `open_client(session)` opens an
    episode and returns (client, base_url)."""

    async def main() -> None:
        endpoint = AgentEndpoint()
        await endpoint.start()
        clients: list[openai.AsyncOpenAI] = []

        def open_client(session) -> tuple[openai.AsyncOpenAI, str]:
            url = endpoint.open_episode(session)
            clients.append(openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0, timeout=30))
            return clients[-1], url

        try:
            await test(endpoint, open_client)
        finally:
            for client in clients:
                await client.close()
            await endpoint.stop()

    asyncio.run(main())


async def _tool_agent(client: openai.AsyncOpenAI, **kwargs):
    """A two-turn tool-using agent written as users write them: it appends the response message
    object itself, runs the tool, and asks again. Returns both responses and the messages sent."""
    messages: list = list(QUESTION)
    first = await client.chat.completions.create(model="gpt-4o", messages=messages, tools=[MASS_TOOL], **kwargs)
    message = first.choices[0].message
    messages.append(message)
    for call in message.tool_calls or []:
        args = json.loads(call.function.arguments)
        messages.append({"role": "tool", "tool_call_id": call.id, "content": f"{args['element']}: 22.99"})
    second = await client.chat.completions.create(model="gpt-4o", messages=messages, tools=[MASS_TOOL], **kwargs)
    return first, second


def test_multi_turn_tool_use_returns_openai_tool_calls_and_turn_two_extends_turn_one() -> None:
    router = ScriptedRouter([CALL, ANSWER])
    session = _session(router)

    async def test(endpoint, open_client) -> None:
        client, _ = open_client(session)
        first, second = await _tool_agent(client)
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        [call] = choice.message.tool_calls
        assert call.type == "function" and call.function.name == "mass"
        assert json.loads(call.function.arguments) == {"element": "Na"}
        assert first.id.startswith("chatcmpl-") and first.object == "chat.completion"
        assert first.model == "tiny-policy" and first.system_fingerprint == "labrl-policy-v3"
        assert first.usage.prompt_tokens == len(router.prompts[0])
        assert first.usage.completion_tokens == len(CODEC.encode(CALL)) + 1
        assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
        assert first.choices[0].logprobs is None
        assert second.choices[0].message.content == ANSWER and second.choices[0].finish_reason == "stop"
        assert not second.choices[0].message.tool_calls
        # The echoed message went through the wire and back: turn 2's prompt is turn 1's exact ids.
        sampled = session.completions[0].token_ids
        assert router.prompts[1][:len(router.prompts[0]) + len(sampled)] == router.prompts[0] + sampled
        assert endpoint.stats() == {"requests": 2, "refused": 0, "failed": 0, "open_episodes": 1}

    _serve(test)
    assert session.turns == 2 and session.tool_calls == 1 and session.unparsed_calls == 0


async def _stream(client: openai.AsyncOpenAI, **kwargs) -> tuple[list[dict], object]:
    """Assemble a streamed completion's deltas into one message per choice, as clients do."""
    stream = await client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    choices: dict[int, dict] = {}
    usage = None
    async for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            msg = choices.setdefault(c.index, {"role": None, "content": "", "calls": {}, "finish": None, "lp": []})
            msg["role"] = c.delta.role or msg["role"]
            msg["content"] += c.delta.content or ""
            msg["finish"] = c.finish_reason or msg["finish"]
            msg["lp"] += [t.logprob for t in (c.logprobs.content if c.logprobs else None) or []]
            for tc in c.delta.tool_calls or []:
                call = msg["calls"].setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = tc.id or call["id"]
                call["name"] += tc.function.name or ""
                call["arguments"] += tc.function.arguments or ""
    return [choices[i] for i in sorted(choices)], usage


def test_streaming_gives_the_same_message_as_non_streaming() -> None:
    async def test(endpoint, open_client) -> None:
        client, _ = open_client(_session(ScriptedRouter([CALL, ANSWER])))
        plain = await client.chat.completions.create(model="m", messages=QUESTION, tools=[MASS_TOOL], logprobs=True)
        streamed_client, _ = open_client(_session(ScriptedRouter([CALL, ANSWER])))
        [streamed], usage = await _stream(streamed_client, model="m", messages=QUESTION, tools=[MASS_TOOL],
                                          logprobs=True)
        want = plain.choices[0]
        assert streamed["role"] == "assistant" and streamed["content"] == ""
        assert streamed["finish"] == want.finish_reason == "tool_calls"
        [call] = streamed["calls"].values()
        assert call["id"].startswith("call_")
        assert (call["name"], json.loads(call["arguments"])) == ("mass", {"element": "Na"})
        assert streamed["lp"] == [t.logprob for t in want.logprobs.content]
        assert usage.model_dump() == plain.usage.model_dump()
        # Turn 2 streamed: plain text content.
        [answer], _ = await _stream(streamed_client, model="m", messages=[
            *QUESTION, {"role": "assistant", "content": None, "tool_calls": [
                {"id": call["id"], "type": "function", "function": {"name": "mass", "arguments": call["arguments"]}}]},
            {"role": "tool", "tool_call_id": call["id"], "content": "Na: 22.99"}])
        assert answer["content"] == ANSWER and answer["finish"] == "stop" and not answer["calls"]

    _serve(test)


def test_n_choices_and_logprobs_of_every_sampled_token() -> None:
    router = ScriptedRouter(["first answer", CALL])

    async def test(endpoint, open_client) -> None:
        client, _ = open_client(_session(router))
        resp = await client.chat.completions.create(model="m", messages=QUESTION, tools=[MASS_TOOL], n=2,
                                                    logprobs=True, temperature=0.7, top_p=1.0, max_tokens=64,
                                                    seed=5, parallel_tool_calls=True, user="someone")
        assert [c.index for c in resp.choices] == [0, 1]
        assert resp.choices[0].message.content == "first answer" and resp.choices[0].finish_reason == "stop"
        assert resp.choices[1].message.tool_calls[0].function.name == "mass"
        for choice, text in zip(resp.choices, ["first answer", CALL]):
            tokens = choice.logprobs.content
            assert "".join(t.token for t in tokens) == text + "<|im_end|>"  # the EOS is a sampled token too
            assert all(t.logprob == LOGPROB and t.top_logprobs == [] for t in tokens)
            assert all(bytes(t.bytes) == t.token.encode() for t in tokens)
        assert resp.usage.completion_tokens == len(CODEC.encode("first answer" + CALL)) + 2
        assert len(router.prompts) == 2 and router.prompts[0] == router.prompts[1]

    _serve(test)


def test_a_call_that_does_not_parse_comes_back_as_text_and_is_counted() -> None:
    broken = '<tool_call>{"name": "mass", "arguments": {"element": </tool_call>'
    session = _session(ScriptedRouter([broken]))

    async def test(endpoint, open_client) -> None:
        client, _ = open_client(session)
        resp = await client.chat.completions.create(model="m", messages=QUESTION, tools=[MASS_TOOL])
        assert resp.choices[0].message.content == broken
        assert not resp.choices[0].message.tool_calls and resp.choices[0].finish_reason == "stop"

    _serve(test)
    assert session.unparsed_calls == 1 and session.tool_calls == 0


@pytest.mark.parametrize("kwargs, param", [
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "mass"}}}, "tool_choice"),
    ({"top_logprobs": 3, "logprobs": True}, "top_logprobs"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"temperature": "hot"}, "temperature"),
    ({"n": 0}, "n"),
    ({"max_tokens": 10, "max_completion_tokens": 20}, "max_tokens"),
    ({"stop": "no such token"}, "stop"),  # the engine stops on single tokens: the session refuses
    ({"extra_body": {"guided_json": {}}}, "guided_json"),
])
def test_unsupported_or_invalid_parameters_are_400s_naming_the_parameter(kwargs, param) -> None:
    router = ScriptedRouter([ANSWER])

    async def test(endpoint, open_client) -> None:
        client, _ = open_client(_session(router))
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="m", messages=QUESTION, tools=[MASS_TOOL], **kwargs)
        assert caught.value.status_code == 400 and caught.value.param == param
        assert param in caught.value.message
        assert endpoint.stats()["refused"] == 1

    _serve(test)
    assert router.prompts == []  # refused before anything was sampled


def test_models_lists_the_policy_and_bad_bodies_are_openai_errors() -> None:
    async def test(endpoint, open_client) -> None:
        client, url = open_client(_session(ScriptedRouter([])))
        assert [m.id for m in (await client.models.list()).data] == ["tiny-policy"]
        assert (await client.models.retrieve("tiny-policy")).owned_by == "labrl"
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("gpt-4o")
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/chat/completions", data=b"{not json") as resp:
                assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_json"
            async with http.get(f"{url}/embeddings") as resp:
                assert resp.status == 404 and "error" in await resp.json()

    _serve(test)


def test_concurrent_episodes_on_two_urls_never_mix() -> None:
    routers = [ScriptedRouter([CALL, f"answer {i}"], delay_s=0.02, version=i) for i in range(2)]
    sessions = [_session(r) for r in routers]

    async def test(endpoint, open_client) -> None:
        (a, url_a), (b, url_b) = open_client(sessions[0]), open_client(sessions[1])
        assert url_a != url_b and url_a.startswith(endpoint.url + "/episodes/") and url_a.endswith("/v1")
        results = await asyncio.gather(_tool_agent(a), _tool_agent(b))
        for i, (first, second) in enumerate(results):
            assert second.choices[0].message.content == f"answer {i}"
            assert first.system_fingerprint == f"labrl-policy-v{i}"

    _serve(test)
    for router, session in zip(routers, sessions):
        assert len(router.prompts) == 2 and session.turns == 2
        assert [c.prompt_ids for c in session.completions] == router.prompts


def test_unknown_or_closed_episode_is_404_and_a_crash_is_500_that_leaves_the_server_up(caplog) -> None:
    async def test(endpoint, open_client) -> None:
        client, url = open_client(_session(ScriptedRouter([ANSWER, ANSWER])))
        await client.chat.completions.create(model="m", messages=QUESTION)
        endpoint.close_episode(url)
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="m", messages=QUESTION)
        stranger = openai.AsyncOpenAI(base_url=f"{endpoint.url}/episodes/nope/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.NotFoundError) as caught:
            await stranger.models.list()
        await stranger.close()
        assert caught.value.code == "episode_not_found"
        crashing, crash_url = open_client(_session(CrashingRouter()))
        with pytest.raises(openai.InternalServerError) as crashed:
            await crashing.chat.completions.create(model="m", messages=QUESTION)
        assert "RuntimeError" in crashed.value.message
        # The endpoint logs the crash with its traceback, not the episode's key (a capability; the
        # client's own httpx log shows URLs, which is the agent's business).
        ours = "\n".join(r.getMessage() + str(r.exc_info) for r in caplog.records if r.name.startswith("rollout."))
        assert "engine exploded" in ours and crash_url.split("/")[-2] not in ours
        healthy, _ = open_client(_session(ScriptedRouter([ANSWER])))
        resp = await healthy.chat.completions.create(model="m", messages=QUESTION)
        assert resp.choices[0].message.content == ANSWER
        assert endpoint.stats() == {"requests": 5, "refused": 2, "failed": 1, "open_episodes": 2}

    _serve(test)


# -- the wire format alone -------------------------------------------------------------------------


def test_messages_convert_to_labrl_messages() -> None:
    parsed = parse_request({"model": "m", "logit_bias": None, "messages": [
        {"role": "developer", "content": [{"type": "text", "text": "be brief"}, {"type": "text", "text": "cite"}]},
        {"role": "user", "content": "mass of Na?", "name": "ada"},
        {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "mass", "arguments": '{"element": "Na"}'}},
            {"id": "c2", "type": "function", "function": {"name": "mass", "arguments": {"element": "Cl"}}}]},
        {"role": "tool", "tool_call_id": "c2", "content": "35.45"}]})
    system, user, assistant, tool = parsed.messages
    assert (system.role, system.content) == ("system", "be brief\ncite")
    assert (user.role, user.content, user.name) == ("user", "mass of Na?", "ada")
    assert [(c.id, c.name, c.arguments) for c in assistant.tool_calls] == [
        ("c1", "mass", {"element": "Na"}), ("c2", "mass", {"element": "Cl"})]
    assert assistant.content == ""
    assert (tool.tool_call_id, tool.name, tool.content) == ("c2", "mass", "35.45")  # name from the call
    assert parsed.tools is None and parsed.params.n == 1 and not parsed.stream

    bad = [({"messages": []}, "messages"),
           ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content"),
           ({"messages": [{"role": "assistant", "tool_calls": [
               {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
            "messages[0].tool_calls[0].function.arguments"),
           ({"messages": [{"role": "tool", "content": "x", "tool_call_id": 7}]}, "messages[0].tool_call_id"),
           ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
           ({"messages": [{"role": "user", "content": "x", "audio": {"id": "a"}}]}, "messages[0].audio")]
    for body, param in bad:
        with pytest.raises(EndpointError) as caught:
            parse_request({"model": "m", **body})
        assert caught.value.status == 400 and caught.value.param == param and param in caught.value.message


def test_response_and_chunks_have_openai_shape() -> None:
    async def sample():
        session = _session(ScriptedRouter(["hi " + CALL]))
        return await session.complete(parse_request({"messages": QUESTION}).messages, [MASS_TOOL],
                                      parse_request({"messages": QUESTION}).params)

    result = asyncio.run(sample())
    body = chat_completion_response(result, "p", "chatcmpl-abc", 7, want_logprobs=False)
    message = body["choices"][0]["message"]
    assert message["content"] == "hi" and body["choices"][0]["finish_reason"] == "tool_calls"
    assert message["tool_calls"][0]["function"] == {"name": "mass", "arguments": '{"element": "Na"}'}
    chunks = chat_completion_chunks(result, "p", "chatcmpl-abc", 7, want_logprobs=False, include_usage=True)
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == body["usage"] and all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    ids = [d["id"] for c in chunks for ch in c["choices"] for d in ch["delta"].get("tool_calls", []) if "id" in d]
    assert ids == [message["tool_calls"][0]["id"]]
