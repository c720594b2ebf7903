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

    def __post_init__(self) -> None:
        n = len(self.token_ids)
        if len(self.loss_mask) != n or len(self.sampler_logprobs) != n:
            raise ValueError(
                f"trajectory {self.task_id}: token_ids ({n}), loss_mask ({len(self.loss_mask)}) and "
                f"sampler_logprobs ({len(self.sampler_logprobs)}) must have the same length")

    @property
    def policy_version(self) -> int:
        """The oldest policy version that sampled any turn: what staleness is measured against."""
        return min(self.policy_versions) if self.policy_versions else -1

    @property
    def num_generated_tokens(self) -> int:
        return sum(self.loss_mask)

    @property
    def success(self) -> bool:
        return self.reward_reason == "correct"
