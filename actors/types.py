"""Plain data crossing actor boundaries: what the env workers ask for and what they get back, and
what a GenerationWorker is built from.

These are dataclasses (not vLLM types) so that env workers and the trainer never import vLLM; they
pickle cheaply through Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from configs.schema import GenerationConfig, LabrlConfig

GenFinishReason = Literal["stop", "length"]
PauseMode = Literal["wait", "abort", "keep", "recompute"]  # sync.pause_mode; see GenerationWorker.set_pause_mode


@dataclass
class SamplingSpec:
    """How to sample one completion (token-in/token-out: stops are token ids, never strings).
    Built from the config by `from_config`; the schema has checked every value."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop_token_ids: list[int] = field(default_factory=list)
    seed: int | None = None
    # Stop tokens are suppressed until this many tokens exist (vLLM's min_tokens). The returned
    # logprobs then exclude the stop tokens' probability mass, which the trainer's do not.
    min_tokens: int = 0

    @classmethod
    def from_config(cls, cfg: LabrlConfig, stop_token_ids: list[int],
                    temperature: float | None = None) -> SamplingSpec:
        """Training rollouts' sampling (`temperature`: another one, e.g. `labrl eval`'s)."""
        g = cfg.generation
        return cls(max_tokens=g.max_new_tokens, min_tokens=g.min_new_tokens,
                   temperature=g.temperature if temperature is None else temperature, top_p=g.top_p,
                   stop_token_ids=list(stop_token_ids), seed=cfg.seed if g.seeded_sampling else None)


@dataclass
class GenerationOutput:
    """One completion.

    `logprobs[i]` is the log-probability of `token_ids[i]` under the distribution it was sampled
    from (vLLM `processed_logprobs`: log_softmax(logits / temperature), after top-p truncation and
    renormalisation), which the trainer recomputes at the rollout temperature; keep top_p = 1.0 or
    the trainer's log_softmax(logits / T) will not match. `policy_version` is the weight version
    that produced its first token; `newest_policy_version` the one serving when it finished. They
    differ only when an in-flight weight update (pause_mode "keep" or "recompute") ran meanwhile.
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: GenFinishReason
    policy_version: int
    newest_policy_version: int | None = None  # None: policy_version
    cached_prompt_tokens: int = 0  # prompt tokens whose KV came from vLLM's prefix cache, not prefill


@dataclass
class EngineSpec:
    """What one vLLM engine (one GenerationWorker) is built from: the generation section as it is,
    plus the few values from other sections. `generation.kv_cache_gb` is the CPU KV cache
    (VLLM_CPU_KVCACHE_SPACE); on GPUs `gpu_memory_utilization` applies instead. `sleep_level > 0`
    turns on vLLM's sleep mode (its cumem allocator) so `GenerationWorker.sleep` can release GPU
    memory; platforms without it (CPU) keep their memory while "asleep"."""

    model_path: str
    generation: GenerationConfig
    dtype: str = "float32"
    seed: int = 0
    pause_mode: PauseMode = "wait"

    @classmethod
    def from_config(cls, cfg: LabrlConfig, model_path: str) -> EngineSpec:
        return cls(model_path=model_path, generation=cfg.generation, dtype=cfg.model.dtype, seed=cfg.seed,
                   pause_mode=cfg.sync.pause_mode)


# vLLM caches (and shares between requests) a prompt's KV only in whole blocks; on CPU it defaults
# to 128-token blocks, so GRPO groups with shorter prompts prefilled their prompt once per member.
# Measured on this VM (30M model, 8 prompts x 8 samples, 35-token prompts, 32 new tokens, 1 thread):
# 64-request prefill 2.2-2.4 s with 128-token blocks, 0.5-0.6 s with 32; whole batch 5.3-5.9 s
# against 3.4-3.5 s. vLLM's CPU attention prefers multiples of 32.
CPU_KV_BLOCK_SIZE = 32


class WorkerUnhealthyError(RuntimeError):
    """The worker's weights are in an unknown state after a failed reload; use another worker.

    Defined here, with the other torch-free types, so env workers can catch it without importing
    the weight-sync machinery (and torch)."""
