"""From an episode's recorded completions to trainable token segments.

The rule (documented in the README): completions are taken in the order they were made. One whose
prompt ids start with all the ids of a segment built so far extends the longest such segment: the
prompt's remaining ids join it with loss mask 0, the sampled ids with mask 1 and their sampler
logprobs. Any other completion starts a new segment: its whole prompt with mask 0 (even ids an
earlier turn sampled: they are trained once, in the segment that sampled them), then its sampled
ids. Segments are trained as separate sequences with the episode's advantage. So every token with
loss mask 1 is one the engine sampled, at the position it was sampled, after exactly the context
it was sampled in.

A new segment started by the first choice of a request is a *fork* (the agent's history no longer
extended what the policy produced: it edited or dropped messages, or a turn could not be continued
token-exactly); extra choices of a request with n > 1 start sibling segments, which are not forks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rollout.openai_api.session import RecordedCompletion
from rollout.trajectory import TokenSegment


@dataclass
class Assembly:
    """The segments in order of creation, the index of the one holding the last completion, the
    number of forks and the policy versions that sampled each completion."""

    segments: list[TokenSegment] = field(default_factory=list)
    last: int = -1
    forks: int = 0
    versions: list[int] = field(default_factory=list)
    truncated_turns: int = 0  # completions cut at their token limit


def assemble_segments(completions: list[RecordedCompletion]) -> Assembly:
    out = Assembly()
    for c in completions:
        index = _extended_segment(out.segments, c.prompt_ids)
        if index is None:
            if out.segments and c.choice_index == 0:
                out.forks += 1
            out.segments.append(TokenSegment([], [], []))
            index = len(out.segments) - 1
        segment = out.segments[index]
        segment.extend(c.prompt_ids[len(segment.token_ids):], generated=False)
        segment.extend(c.token_ids, generated=True, logprobs=c.logprobs)
        out.last = index
        out.versions.append(c.policy_version)
        if c.newest_policy_version not in (None, c.policy_version):
            out.versions.append(c.newest_policy_version)
        out.truncated_turns += c.finish_reason == "length"
    return out


def _extended_segment(segments: list[TokenSegment], prompt: list[int]) -> int | None:
    """Index of the longest segment whose ids are a prefix of `prompt` (None if none is)."""
    best, best_len = None, -1
    for i, s in enumerate(segments):
        n = len(s.token_ids)
        if n > best_len and n <= len(prompt) and prompt[:n] == s.token_ids:
            best, best_len = i, n
    return best
