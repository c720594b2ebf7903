"""The local model kit: a byte-level BPE tokenizer and a Qwen2 model of any size, built here.

`save_chat_model` writes a standard Hugging Face directory (tokenizer, chat template, weights,
generation config) that `AutoTokenizer`, `AutoModelForCausalLM` and vLLM load unchanged: unlike
the character-level tiny policy (models/tiny.py) it needs no special loading path. The weights are
random, drawn from the spec's seed; the point is a realistic tokenizer and shape, so that runs,
benchmarks and memory estimates behave as with a real small instruct model, without a download.

Parameter counts come from the shape alone (`count_parameters`), so a 0.5B spec can be checked
without allocating it; `meta_parameter_count` builds the module on the `meta` device to confirm.
torch is imported inside the functions that need it: reading `CHAT_KIT_MARKER` stays cheap.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

from models.chat_tokenizer import ENDOFTEXT, IM_END, train_tokenizer
from models.corpus import ChatEpisode, CorpusSpec, build_corpus

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

logger = logging.getLogger(__name__)

# Marks a directory built by this kit (not models.loading.TINY_MARKER: a kit tokenizer loads
# through AutoTokenizer like any Qwen2 checkpoint, and must not take the tiny model's path).
CHAT_KIT_MARKER = "labrl_chat_kit.json"
KIT_VERSION = 1


@dataclass(frozen=True)
class ChatModelSpec:
    """Shape and seed of a Qwen2 decoder; the vocabulary size comes from the tokenizer."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    rms_norm_eps: float = 1e-6
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim < 32:
            # vLLM's CPU attention kernels stop the engine on smaller heads ("Unsupported CPU
            # attention configuration: head_dim=16"), measured with vLLM 0.32 on this CPU.
            raise ValueError(f"head_dim {self.head_dim} (hidden_size / num_heads) is below 32, which vLLM's "
                             "CPU attention does not run")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


PRESETS: dict[str, ChatModelSpec] = {
    # For tests: loads and runs a forward pass in well under a second.
    "test": ChatModelSpec(hidden_size=64, intermediate_size=256, num_layers=2, num_heads=2,
                          num_kv_heads=1, max_position_embeddings=1024),
    # configs/chat-cpu.yaml's policy: 12.6M parameters with a 16k vocabulary, 6.9M with the ~1.5k tokens of
    # the generated corpus. Four layers, not eight: its 15-minute budget buys twice the SFT steps.
    "chat-cpu": ChatModelSpec(hidden_size=384, intermediate_size=1024, num_layers=4, num_heads=6,
                              num_kv_heads=2, max_position_embeddings=4096),
    # Exactly the shape of Qwen2.5-0.5B (494M parameters with its 151,936-token vocabulary).
    "qwen2.5-0.5b": ChatModelSpec(hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14,
                                  num_kv_heads=2, max_position_embeddings=32768, rope_theta=1e6),
}


def count_parameters(spec: ChatModelSpec, vocab_size: int) -> int:
    """Parameters of `Qwen2ForCausalLM` with this shape, from the architecture: q/k/v projections
    carry biases, the output projection and the SwiGLU MLP do not, two RMSNorms per layer plus a
    final one, and the output head shares the embedding matrix when tied."""
    h, kv = spec.hidden_size, spec.num_kv_heads * spec.head_dim
    attention = (h * h + h) + 2 * (h * kv + kv) + h * h
    mlp = 3 * h * spec.intermediate_size
    layer = attention + mlp + 2 * h
    embeddings = vocab_size * h * (1 if spec.tie_word_embeddings else 2)
    return embeddings + spec.num_layers * layer + h


def qwen2_config(spec: ChatModelSpec, vocab_size: int, eos_token_id: int | None = None,
                 pad_token_id: int | None = None) -> "Qwen2Config":
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, max_position_embeddings=spec.max_position_embeddings,
        rope_theta=spec.rope_theta, tie_word_embeddings=spec.tie_word_embeddings,
        rms_norm_eps=spec.rms_norm_eps, use_sliding_window=False, bos_token_id=None,
        eos_token_id=eos_token_id, pad_token_id=pad_token_id)


def meta_parameter_count(spec: ChatModelSpec, vocab_size: int) -> int:
    """Parameters of the real module, built on the `meta` device (no memory for the weights)."""
    import torch
    from transformers import Qwen2ForCausalLM

    with torch.device("meta"):
        model = Qwen2ForCausalLM(qwen2_config(spec, vocab_size))
    return sum(p.numel() for p in model.parameters())  # a tied head is counted once


def build_chat_model(spec: ChatModelSpec, tokenizer: "PreTrainedTokenizerFast") -> "Qwen2ForCausalLM":
    """Randomly initialised weights drawn from `spec.seed`, with the tokenizer's eos and pad ids."""
    import torch
    from transformers import Qwen2ForCausalLM

    config = qwen2_config(spec, len(tokenizer), tokenizer.convert_tokens_to_ids(IM_END),
                          tokenizer.convert_tokens_to_ids(ENDOFTEXT))
    torch.manual_seed(spec.seed)
    return Qwen2ForCausalLM(config)


def build_chat_tokenizer(vocab_size: int, episodes: Sequence[ChatEpisode] = (),
                         corpus: CorpusSpec = CorpusSpec(), extra: Sequence[str] = ()) -> "PreTrainedTokenizerFast":
    """Generate the corpus (environment `episodes`, general text, `extra`) and train the tokenizer."""
    return train_tokenizer(build_corpus(episodes, corpus, extra), vocab_size)


def save_chat_model(path: str | Path, spec: ChatModelSpec, vocab_size: int = 16384,
                    episodes: Sequence[ChatEpisode] = (), corpus: CorpusSpec | None = None,
                    extra_documents: Sequence[str] = (), dtype: Literal["float32", "bfloat16"] = "float32") -> Path:
    """Train a tokenizer, build a random model of shape `spec`, and save both in HF format.

    `episodes` are environment transcripts for the corpus (the caller plays them: `models` may not
    import `envs`); `corpus` defaults to general text seeded with `spec.seed`; `extra_documents`
    is further training text (the generated corpus alone gives about 1.5k tokens). Writes the
    `CHAT_KIT_MARKER` file that records how the directory was built.
    """
    import torch
    from transformers import GenerationConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    corpus = corpus or CorpusSpec(seed=spec.seed)
    tok = build_chat_tokenizer(vocab_size, episodes, corpus, extra_documents)
    tok.model_max_length = spec.max_position_embeddings
    model = build_chat_model(spec, tok).to(getattr(torch, dtype))
    eos, pad = model.config.eos_token_id, model.config.pad_token_id
    # Token ids only: sampling settings here would silently become vLLM's defaults.
    model.generation_config = GenerationConfig(eos_token_id=[eos, pad], pad_token_id=pad)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    n_params = sum(p.numel() for p in model.parameters())
    marker = {"kit_version": KIT_VERSION, "spec": asdict(spec), "vocab_size": len(tok),
              "vocab_size_requested": vocab_size, "corpus": asdict(corpus), "episodes": len(episodes),
              "extra_documents": len(extra_documents),
              "parameters": n_params, "dtype": dtype}
    (path / CHAT_KIT_MARKER).write_text(json.dumps(marker, indent=2))
    logger.info("saved kit model (%.1fM parameters, vocab %d, %s) to %s", n_params / 1e6, len(tok),
                dtype, path)
    return path
