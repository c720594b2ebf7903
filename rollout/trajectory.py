"""The trajectory: the one record that flows from environment workers to the trainer.

Token-in/token-out: `token_ids` hold the whole multi-turn episode exactly as the sampler saw and
produced it; text the model generated is never re-tokenized. `loss_mask` is 1 only on tokens the
policy generated, and `sampler_logprobs` holds the sampler's logprob of each such token (0 elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "env_done", "error", "timeout", "budget"]


@dataclass
class TokenSegment:
    """One token sequence the trainer scores: ids, loss mask (1 = sampled by the policy) and the
    sampler's logprobs (0 where the mask is 0)."""

    token_ids: list[int]
    loss_mask: list[int]
    sampler_logprobs: list[float]

    def extend(self, ids: list[int], generated: bool, logprobs: list[float] | None = None) -> None:
        self.token_ids += ids
        self.loss_mask += [1 if generated else 0] * len(ids)
        self.sampler_logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)


@dataclass
class Trajectory:
    task_id: str
    group_id: str
    env_name: str
    token_ids: list[int]
    loss_mask: list[int]
    sampler_logprobs: list[float]
    reward: float
    reward_reason: str
    finish_reason: FinishReason
    policy_versions: list[int]
    difficulty: int = 0
    num_turns: int = 0
    num_tool_calls: int = 0
    num_invalid_tool_calls: int = 0
    truncated: bool = False
    masked: bool = False  # the verifier could not judge it (Reward.masked): dropped, never trained
    generation_s: float = 0.0  # wall time waiting for the policy, summed over turns
    env_s: float = 0.0  # wall time in reset/step (tools, simulated experiments)
    messages: list[dict[str, Any]] = field(default_factory=list)
    # Agent programs (rollout/openai_api): segments a fork cut off before the one above, trained
    # as separate sequences with this trajectory's advantage; `num_forks` counts the forks.
    forked_segments: list[TokenSegment] = field(default_factory=list)
    num_forks: int = 0

    def __post_init__(self) -> None:
        for s in self.segments:
            n = len(s.token_ids)
            if len(s.loss_mask) != n or len(s.sampler_logprobs) != n:
                raise ValueError(
                    f"trajectory {self.task_id}: token_ids ({n}), loss_mask ({len(s.loss_mask)}) and "
                    f"sampler_logprobs ({len(s.sampler_logprobs)}) must have the same length")

    @property
    def segments(self) -> list[TokenSegment]:
        """Every sequence to train, the episode's last one at the end."""
        return [*self.forked_segments, TokenSegment(self.token_ids, self.loss_mask, self.sampler_logprobs)]

    @property
    def policy_version(self) -> int:
        """The oldest policy version that sampled any turn: what staleness is measured against."""
        return min(self.policy_versions) if self.policy_versions else -1

    @property
    def num_generated_tokens(self) -> int:
        return sum(sum(s.loss_mask) for s in self.segments)

    @property
    def success(self) -> bool:
        return self.reward_reason == "correct"
