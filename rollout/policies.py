"""Turn policies the agent loop can drive: the sampler (vLLM workers) and the reference solver.

The reference solver produces demonstrations for behaviour cloning through the very same agent
loop and chat rendering as RL, so SFT and GRPO see identically formatted episodes.
"""

from __future__ import annotations

import zlib
from dataclasses import replace
from typing import TYPE_CHECKING

from actors.types import SamplingSpec
from envs.chat import ChatCodec
from envs.parsing import format_assistant
from envs.registry import ReferencePolicy
from rollout.agent_loop import PolicyTurn, TurnContext

if TYPE_CHECKING:
    from actors.router import GenerationRouter


class SamplerTurnPolicy:
    """Samples turns from the generation workers (token ids in, token ids + logprobs out).

    With a base seed in `spec.seed`, every request gets its own seed derived from (base seed,
    `stream`, turn number): an episode replayed on the same weights (a rerun, a resumed run) samples
    the same tokens, while group members (different streams) still differ.
    """

    def __init__(self, router: GenerationRouter, spec: SamplingSpec, stream: str = ""):
        self.router = router
        self.spec = spec
        self.stream = stream

    def request_spec(self, ctx: TurnContext) -> SamplingSpec:
        seed = self.spec.seed
        if seed is not None:
            turn = sum(m.role == "assistant" for m in ctx.history)
            seed = zlib.crc32(f"{seed}/{self.stream}/{turn}".encode()) & 0x7FFFFFFF
        return replace(self.spec, max_tokens=ctx.max_tokens, seed=seed)

    async def act(self, ctx: TurnContext) -> PolicyTurn:
        out = await self.router.generate(ctx.prompt_token_ids, self.request_spec(ctx))
        return PolicyTurn(out.token_ids, out.logprobs, out.finish_reason, out.policy_version,
                          out.newest_policy_version)


class ReferenceTurnPolicy:
    """Plays the environment's reference solver, tokenized as the model would have produced it."""

    def __init__(self, solver: ReferencePolicy, codec: ChatCodec):
        self.solver = solver
        self.codec = codec

    async def act(self, ctx: TurnContext) -> PolicyTurn:
        action = await self.solver(ctx.env, ctx.history)
        ids = self.codec.encode(format_assistant(action)) + [self.codec.eos_token_id]
        if len(ids) > ctx.max_tokens:
            return PolicyTurn(ids[: ctx.max_tokens], [0.0] * ctx.max_tokens, "length", -1)
        return PolicyTurn(ids, [0.0] * len(ids), "stop", -1)
