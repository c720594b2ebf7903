"""Token-in/token-out chat rendering for the agent loop.

The episode is one growing list of token ids. Generated tokens are appended exactly as sampled;
only what the environment says (observations, the next generation prompt) is tokenized, as the
*suffix* the chat template adds when those messages are appended. Model text is never
re-tokenized, so the trainer scores exactly the tokens the sampler produced.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from envs.core import Message


class ChatCodec:
    """Renders messages with the model's chat template into token-id deltas."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, tools: list[dict[str, Any]] | None = None):
        self.tokenizer = tokenizer
        self.tools = tools or None
        self.eos_token_id: int = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
        self.eos_text: str = tokenizer.eos_token

    def with_tools(self, tools: list[Any]) -> "ChatCodec":
        """A codec whose prompts declare `tools` (objects with an OpenAI `.schema`)."""
        return ChatCodec(self.tokenizer, [t.schema for t in tools])

    def _render(self, messages: list[Message], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            [m.to_chat() for m in messages], tools=self.tools, tokenize=False,
            add_generation_prompt=add_generation_prompt)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=False)

    def prompt_tokens(self, messages: list[Message]) -> list[int]:
        """Tokens of the opening messages plus the assistant generation prompt."""
        return self.encode(self._render(messages, add_generation_prompt=True))

    def continuation_tokens(self, history: list[Message], new: list[Message]) -> list[int]:
        """Tokens that follow an assistant turn which ended with the EOS token.

        The template may put text after the assistant's EOS (Qwen adds a newline); the sampler
        stopped at EOS, so that tail belongs to the continuation.
        """
        before = self._render(history, add_generation_prompt=False)
        after = self._render(history + new, add_generation_prompt=True)
        if not after.startswith(before):
            raise ValueError("chat template is not prefix-stable: appending messages rewrote earlier text")
        cut = before.rfind(self.eos_text)
        tail = before[cut + len(self.eos_text):] if cut >= 0 else ""
        return self.encode(tail + after[len(before):])

    def assistant_text(self, generated_ids: list[int]) -> str:
        """Decoded assistant text without the closing EOS token."""
        if generated_ids and generated_ids[-1] == self.eos_token_id:
            generated_ids = generated_ids[:-1]
        return self.decode(generated_ids)
