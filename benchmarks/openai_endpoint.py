"""What the OpenAI-compatible endpoint costs per request, and how often agents' turns fork.

    python -m benchmarks.openai_endpoint                       # random tiny policy, 64 requests x 2 rounds
    python -m benchmarks.openai_endpoint --model runs/<run>/sft_model --episodes 32

1. Overhead: the same prompt and the same number of sampled tokens (min_tokens = max_tokens), on
   one vLLM engine (a GenerationWorker actor), asked for (a) directly through the
   `GenerationRouter`, as native episodes do, and (b) by the official `openai` client through
   `AgentEndpoint` and an `EpisodeSession` (HTTP, JSON, chat rendering, tool-call parsing), at
   concurrency 1 and 16, alternating rounds. Reported: ms per request and the endpoint's overhead.
2. Forks: every bundled environment played by a generic OpenAI-client agent (it sends the
   environment's messages and tools, passes each reply to `env.step`, and appends the
   observations), through the endpoint. Reported per environment: turns, forks (a turn whose prompt
   did not extend the episode's ids) and how many turns a naive re-render of the agent's history
   would have tokenized differently from what the engine saw (what the endpoint's re-use of
   sampled ids avoids).

Fails if a measurement is empty (no request timed, no follow-up turn played).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from statistics import median
from typing import Any

import openai
import ray

from actors.generation import GenerationWorker
from actors.router import GenerationRouter
from actors.types import EngineSpec, SamplingSpec
from benchmarks.common import emit, ratio, setup_logging, start_local_ray
from configs.loading import load_config
from envs.chat import ChatCodec
from envs.core import Environment, Message
from envs.registry import get_env_spec, list_envs
from models.loading import load_tokenizer
from models.tiny import save_tiny_model
from monitor.text_table import format_table
from rollout.openai_api.assembly import assemble_segments
from rollout.openai_api.protocol import convert_messages
from rollout.openai_api.server import AgentEndpoint
from rollout.openai_api.session import EpisodeSession

logger = logging.getLogger("benchmarks.openai_endpoint")
PROMPT = [Message("user", "Molar mass of Na2S in g/mol?")]
OVERHEAD_COLUMNS = [("concurrency", "concurrency", "d"), ("direct ms/req", "direct_ms", ".1f"),
                    ("endpoint ms/req", "endpoint_ms", ".1f"), ("overhead ms", "overhead_ms", ".1f"),
                    ("endpoint/direct", "ratio", ".2f")]
FORK_COLUMNS = [("environment", "env", "s"), ("episodes", "episodes", "d"), ("follow-up turns", "follow_ups", "d"),
                ("forks", "forks", "d"), ("naive re-render differs", "naive_differs", "d")]


class Bench:
    """One engine, one endpoint, and the pieces both measurements share."""

    def __init__(self, model_dir: str, max_tokens: int):
        cfg = load_config(None, ["generation.max_model_len=1024", f"generation.max_new_tokens={max_tokens}"])
        self.worker = GenerationWorker.as_actor(EngineSpec.from_config(cfg, model_dir), name="bench-gen")
        ray.get(self.worker.ready.remote())
        self.router = GenerationRouter([self.worker])
        self.codec = ChatCodec(load_tokenizer(model_dir))
        self.sampling = SamplingSpec(max_tokens=max_tokens, stop_token_ids=[self.codec.eos_token_id])
        self.endpoint = AgentEndpoint()

    def session(self, sampling: SamplingSpec, max_turns: int = 1000) -> EpisodeSession:
        return EpisodeSession(self.codec, self.router, sampling, 1024, max_turns)


async def _timed(calls: list, concurrency: int) -> float:
    """Wall seconds per request for `calls` (coroutine factories) run `concurrency` at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(call):
        async with gate:
            await call()

    start = time.perf_counter()
    await asyncio.gather(*(one(c) for c in calls))
    return (time.perf_counter() - start) / len(calls)


async def overhead(bench: Bench, requests: int, rounds: int, concurrencies: list[int]) -> list[dict[str, Any]]:
    fixed = replace(bench.sampling, min_tokens=bench.sampling.max_tokens)  # every request samples max_tokens
    prompt = bench.codec.prompt_tokens(PROMPT)
    session = bench.session(fixed)
    client = openai.AsyncOpenAI(base_url=bench.endpoint.open_episode(session), api_key="bench", max_retries=0)
    messages = [m.to_chat() for m in PROMPT]

    def direct():
        return bench.router.generate(prompt, fixed)

    def endpoint():
        return client.chat.completions.create(model="policy", messages=messages)

    await _timed([direct, endpoint] * 4, 4)  # warm both paths
    rows = []
    for concurrency in concurrencies:
        times: dict[str, list[float]] = {"direct": [], "endpoint": []}
        for _ in range(rounds):
            times["direct"].append(await _timed([direct] * requests, concurrency))
            times["endpoint"].append(await _timed([endpoint] * requests, concurrency))
        d, e = median(times["direct"]) * 1e3, median(times["endpoint"]) * 1e3
        rows.append({"concurrency": concurrency, "direct_ms": d, "endpoint_ms": e, "overhead_ms": e - d,
                     "ratio": ratio(e, d)})
        logger.info("concurrency %d: direct %.1f ms, endpoint %.1f ms per request", concurrency, d, e)
    await client.close()
    if session.turns < requests:
        raise SystemExit("the endpoint served fewer requests than were timed: nothing measured")
    return rows


async def play_as_agent(env: Environment, client: Any, codec: ChatCodec, max_turns: int) -> list[list[int]]:
    """Play `env` the way an OpenAI-client agent would; returns, per turn, the prompt ids a naive
    re-render of the agent's messages gives (to compare with what the engine was sent)."""
    observations, tools = await env.reset()
    schemas = [t.schema for t in tools]
    naive_codec = ChatCodec(codec.tokenizer, schemas)
    messages = [o.to_chat() for o in observations]
    naive = []
    for _ in range(max_turns):
        naive.append(naive_codec.prompt_tokens(convert_messages(messages)))
        response = await client.chat.completions.create(model="policy", messages=messages, tools=schemas)
        messages.append(response.choices[0].message.model_dump(exclude_none=True))
        observations, _, done, truncated = await env.step(convert_messages(messages[-1:])[0])
        messages += [o.to_chat() for o in observations]
        if done or truncated:
            break
    return naive


async def forks(bench: Bench, episodes: int, max_turns: int) -> list[dict[str, Any]]:
    rows = []
    for name in list_envs(configurable=False):
        spec = get_env_spec(name)
        tasks = spec.make_dataset(episodes, 1, spec.difficulties[:1], 0).tasks("train")[:episodes]
        sessions = [bench.session(bench.sampling) for _ in tasks]

        async def episode(task, session):
            client = openai.AsyncOpenAI(base_url=bench.endpoint.open_episode(session), api_key="b", max_retries=0)
            try:
                return await play_as_agent(spec.make_env(task), client, bench.codec, max_turns)
            finally:
                await client.close()

        naive = await asyncio.gather(*(episode(t, s) for t, s in zip(tasks, sessions)))
        follow_ups = sum(max(0, len(s.completions) - 1) for s in sessions)
        differs = sum(n != c.prompt_ids for s, ns in zip(sessions, naive) for n, c in zip(ns[1:], s.completions[1:]))
        rows.append({"env": name, "episodes": len(tasks), "follow_ups": follow_ups,
                     "forks": sum(assemble_segments(s.completions).forks for s in sessions), "naive_differs": differs})
        logger.info("%s: %d follow-up turns, %d forks, naive re-render differs on %d", name, follow_ups,
                    rows[-1]["forks"], differs)
    if not sum(r["follow_ups"] for r in rows):
        raise SystemExit("no environment played a follow-up turn: no fork could be measured")
    return rows


async def run(args: argparse.Namespace, model_dir: str) -> dict[str, Any]:
    bench = Bench(model_dir, args.max_tokens)
    await bench.endpoint.start()
    try:
        return {"overhead": await overhead(bench, args.requests, args.rounds, args.concurrency),
                "forks": await forks(bench, args.episodes, args.max_turns)}
    finally:
        await bench.endpoint.stop()


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="policy directory (default: a random tiny policy built here)")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--episodes", type=int, default=16, help="per environment, for the fork counts")
    p.add_argument("--max-turns", type=int, default=6)
    args = p.parse_args(argv)
    setup_logging()
    start_local_ray(2)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or str(save_tiny_model(tmp))
        result = asyncio.run(run(args, model_dir))
    ray.shutdown()
    tables = (format_table(result["overhead"], OVERHEAD_COLUMNS) + "\n\n"
              + format_table(result["forks"], FORK_COLUMNS))
    return emit("openai_endpoint", {"config": vars(args), **result}, tables)


if __name__ == "__main__":
    main()
