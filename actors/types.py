"""Plain data crossing actor boundaries: what the env workers ask for and what they get back.

These are dataclasses (not vLLM types) so that env workers and the trainer never import vLLM; they
pickle cheaply through Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

GenFinishReason = Literal["stop", "length"]


@dataclass
class SamplingSpec:
    """How to sample one completion (token-in/token-out: stops are token ids, never strings)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop_token_ids: list[int] = field(default_factory=list)
    seed: int | None = None
    # Stop tokens are suppressed until this many tokens exist (vLLM's min_tokens). The returned
    # logprobs then exclude the stop tokens' probability mass, which the trainer's do not.
    min_tokens: int = 0

    def __post_init__(self) -> None:
        if self.max_tokens <= 0:
            raise ValueError(f"SamplingSpec.max_tokens must be > 0, got {self.max_tokens}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"SamplingSpec.min_tokens must be in [0, max_tokens={self.max_tokens}], "
                             f"got {self.min_tokens}")
        if self.temperature < 0:
            raise ValueError(f"SamplingSpec.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingSpec.top_p must be in (0, 1], got {self.top_p}")


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
class EngineConfig:
    """Settings of one vLLM engine (one GenerationWorker).

    `kv_cache_gb` is the CPU KV cache (VLLM_CPU_KVCACHE_SPACE); on GPUs `gpu_memory_utilization`
    applies instead. fp32 + eager is the CPU default; GPU runs would use bfloat16 and
    enforce_eager=False. `enable_sleep_mode` lets `GenerationWorker.sleep` release GPU memory
    (vLLM's cumem allocator); platforms without it (CPU) keep their memory while "asleep".
    """

    model_path: str
    max_model_len: int
    kv_cache_gb: float = 1.0
    kv_block_size: int | None = None  # None: CPU_KV_BLOCK_SIZE on CPU, vLLM's default elsewhere
    gpu_memory_utilization: float = 0.5
    tensor_parallel_size: int = 1
    enforce_eager: bool = True
    dtype: str = "float32"
    seed: int = 0
    enable_sleep_mode: bool = False


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
