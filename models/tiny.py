"""A tiny policy built entirely on this machine: a character-level tokenizer and a small Qwen2.

No downloads: the tokenizer is built with `tokenizers`, the model from a transformers config. The
chat format is Qwen's (`<|im_start|>role ... <|im_end|>`, `<tool_call>` / `<tool_response>`), so the
same agent loop and tool-call parser serve the tiny model and real instruct models. The template
omits tool schemas from the prompt: the tiny model learns its tools from demonstrations, and
character-level prompts must stay short. An assistant message's tool calls render as the parser's
canonical `<tool_call>{json}</tool_call>` text (envs/parsing.py), as a Qwen template renders them.
"""

from __future__ import annotations

import json
import logging
import string
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from models.loading import TINY_MARKER
from models.markup import ENDOFTEXT, IM_END, IM_START, MARKUP_TOKENS

logger = logging.getLogger(__name__)

EOS = ENDOFTEXT

CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m.role == 'tool' -%}"
    "{{ '<|im_start|>user\\n<tool_response>' }}{{ m.content }}{{ '</tool_response><|im_end|>\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + m.role + '\\n' }}{{ m.content }}"
    "{%- for c in m.tool_calls or [] -%}"
    "{{ '<tool_call>' }}{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}{{ '</tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of the tiny Qwen2 policy. Defaults give about 0.9M parameters."""

    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 1024
    seed: int = 0


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer: every printable ASCII character is one token."""
    specials = [EOS, IM_START, IM_END]
    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    vocab = {tok: i for i, tok in enumerate(specials + MARKUP_TOKENS + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=EOS))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(specials)
    core.add_tokens(MARKUP_TOKENS)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=IM_END, pad_token=EOS,
                                  bos_token=None, unk_token=EOS)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model(vocab_size: int, spec: TinyModelSpec) -> Qwen2ForCausalLM:
    torch.manual_seed(spec.seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    return Qwen2ForCausalLM(config)


def save_tiny_model(path: str | Path, spec: TinyModelSpec = TinyModelSpec()) -> Path:
    """Build and save a randomly initialised tiny policy in Hugging Face format."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    model = build_model(len(tok), spec)
    model.config.eos_token_id = tok.convert_tokens_to_ids(IM_END)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    (path / TINY_MARKER).write_text(json.dumps({"spec": spec.__dict__}))
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("saved tiny policy (%.2fM parameters, vocab %d) to %s", n_params / 1e6, len(tok), path)
    return path
