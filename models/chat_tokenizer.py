"""A byte-level BPE tokenizer trained here, on the kit's own corpus (models/corpus.py).

Why the Qwen2 pre-tokenization: a kit directory is a `model_type: qwen2` checkpoint, and
transformers 5 loads every such tokenizer through its `Qwen2Tokenizer` class, which rebuilds the
normalizer and pre-tokenizer from its own definition and keeps only our vocabulary and merges
(vLLM loads tokenizers the same way). Training with that very pipeline, taken from the installed
transformers rather than written out again, is what makes `AutoTokenizer.from_pretrained(dir)`
give the ids we trained. It is a byte-level BPE (any text encodes, no unknown token) that splits
digits one by one (numbers stay readable for arithmetic) and NFC-normalises text.

Ids 0-6 are the chat and tool markup tokens below, one id each. `<|endoftext|>` and the ChatML
markers are special tokens; the tool markup tokens are ordinary added tokens, as in Qwen's
tokenizers, so decoding with `skip_special_tokens=True` keeps the tool calls.
"""

from __future__ import annotations

import logging
import re
from typing import Iterable, Iterator

from tokenizers import AddedToken, Tokenizer, models, trainers
from tokenizers.pre_tokenizers import ByteLevel
from transformers import PreTrainedTokenizerFast

from models.chat_template import CHAT_TEMPLATE
from models.markup import ENDOFTEXT, IM_END, IM_START, MARKUP_TOKENS

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]
ALL_MARKUP = SPECIAL_TOKENS + MARKUP_TOKENS  # ids 0..6 in this order

_MARKUP_RE = re.compile("|".join(re.escape(t) for t in ALL_MARKUP))


def _strip_markup(docs: Iterable[str]) -> Iterator[str]:
    """The text between markup tokens: the trainer does not split added tokens out by itself, and
    merges spent on pieces of `<|im_start|>` would be wasted (the marker is one id anyway)."""
    for doc in docs:
        for piece in _MARKUP_RE.split(doc):
            if piece:
                yield piece


def _qwen2_pipeline(core: Tokenizer) -> None:
    """Give `core` the normalizer, pre-tokenizer and decoder that transformers' Qwen2Tokenizer
    rebuilds on load (see the module docstring)."""
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    reference = Qwen2Tokenizer().backend_tokenizer
    core.normalizer = reference.normalizer
    core.pre_tokenizer = reference.pre_tokenizer
    core.decoder = reference.decoder


def train_tokenizer(docs: Iterable[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of at most `vocab_size` tokens (markup and the 256 bytes included)
    on `docs`, wrapped with the kit's chat template; eos `<|im_end|>`, pad `<|endoftext|>`.

    The vocabulary comes out smaller than asked when the corpus has too few pairs worth merging
    (the kit's generated corpus alone stops near 1.5k tokens; see `build_corpus(extra=...)`).
    """
    if vocab_size < len(ALL_MARKUP) + 256 + 1:
        raise ValueError(f"vocab_size={vocab_size} leaves no room for merges (need > 263)")
    core = Tokenizer(models.BPE())
    _qwen2_pipeline(core)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=ALL_MARKUP, initial_alphabet=ByteLevel.alphabet(),
                                  show_progress=False)
    core.train_from_iterator(_strip_markup(docs), trainer=trainer)
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKUP_TOKENS])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=IM_END, pad_token=ENDOFTEXT,
                                  bos_token=None, unk_token=None)
    tok.chat_template = CHAT_TEMPLATE
    if len(tok) < 0.9 * vocab_size:
        # The generated corpus has few distinct words: merges run out long before 8k-32k tokens.
        logger.warning("trained byte-level BPE: %d tokens, asked for %d (the corpus has no more pairs "
                       "seen %d+ times; pass more varied text to grow it)", len(tok), vocab_size, min_frequency)
    else:
        logger.info("trained byte-level BPE: %d tokens (asked for %d)", len(tok), vocab_size)
    return tok
