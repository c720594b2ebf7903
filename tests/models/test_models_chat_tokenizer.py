"""The kit's byte-level BPE tokenizer: markup tokens, lossless round trips, reload through AutoTokenizer."""

from __future__ import annotations

import random
import string

import pytest
from transformers import AutoTokenizer

from models.chat_template import CHAT_TEMPLATE
from models.chat_tokenizer import (
    ALL_MARKUP,
    ENDOFTEXT,
    IM_END,
    MARKUP_TOKENS,
    train_tokenizer,
)
from models.corpus import build_corpus

SAMPLES = [
    "Molar mass of Na2S in g/mol? 78.04",
    "ünïcödé: 日本語, emoji 🧪🔬, Ελληνικά, العربية, tab\there\r\nand CRLF",
    "-0.000123 1e-12 3.14159 100000000000 12/7 45% (2*1.008+15.999)**2",
    "  leading spaces, trailing spaces   \n\n\n",
    '{"name": "calc", "arguments": {"expr": "32*3+87*2"}}',
    "",
]


def test_markup_tokens_are_single_ids_in_order(kit_tokenizer):
    ids = [kit_tokenizer.convert_tokens_to_ids(t) for t in ALL_MARKUP]
    assert ids == list(range(len(ALL_MARKUP)))
    for token, token_id in zip(ALL_MARKUP, ids):
        assert kit_tokenizer.encode(token, add_special_tokens=False) == [token_id]
    assert kit_tokenizer.eos_token == IM_END and kit_tokenizer.pad_token == ENDOFTEXT
    assert kit_tokenizer.bos_token is None


def test_markup_survives_encode_decode_inside_text(kit_tokenizer):
    text = ('<|im_start|>assistant\nok<tool_call>{"name": "f", "arguments": {}}</tool_call><|im_end|>\n'
            "<|im_start|>user\n<tool_response>3</tool_response><|im_end|>\n<|endoftext|>")
    ids = kit_tokenizer.encode(text, add_special_tokens=False)
    assert kit_tokenizer.decode(ids) == text
    for token in ALL_MARKUP:
        assert kit_tokenizer.convert_tokens_to_ids(token) in ids
    # Tool markup is not "special": dropping special tokens keeps the calls readable.
    kept = kit_tokenizer.decode(ids, skip_special_tokens=True)
    assert all(t in kept for t in MARKUP_TOKENS) and "<|im_start|>" not in kept


@pytest.mark.parametrize("text", SAMPLES)
def test_byte_level_round_trip(kit_tokenizer, text):
    ids = kit_tokenizer.encode(text, add_special_tokens=False)
    assert kit_tokenizer.decode(ids) == text
    assert kit_tokenizer.unk_token_id is None  # byte-level: nothing is unknown


def test_digits_are_split_and_merges_were_learned(kit_tokenizer, corpus):
    tokens = kit_tokenizer.tokenize("12345")
    assert len(tokens) == 5  # one token per digit, whatever the corpus
    text = "\n".join(corpus)
    n_tokens = len(kit_tokenizer.encode(text, add_special_tokens=False))
    assert n_tokens < len(text.encode()) / 2.5  # BPE compresses its own corpus well below bytes
    assert 1000 < len(kit_tokenizer) <= 2000


def test_training_is_deterministic(corpus, kit_tokenizer):
    again = train_tokenizer(corpus, 2000)
    assert again.get_vocab() == kit_tokenizer.get_vocab()
    assert again.backend_tokenizer.to_str() == kit_tokenizer.backend_tokenizer.to_str()


def test_too_small_vocab_is_refused(corpus):
    with pytest.raises(ValueError, match="no room"):
        train_tokenizer(corpus[:5], 260)


def test_auto_tokenizer_reloads_identical_ids_and_template(kit_dir, kit_tokenizer, corpus):
    reloaded = AutoTokenizer.from_pretrained(kit_dir)
    saved_vocab = len(reloaded)
    assert reloaded.chat_template == CHAT_TEMPLATE
    assert reloaded.eos_token == IM_END and reloaded.pad_token == ENDOFTEXT
    for text in SAMPLES + corpus[::7]:
        a = reloaded.encode(text, add_special_tokens=False)
        assert reloaded.decode(a) == text
    # The directory's tokenizer was trained on the same corpus and size as the fixture's.
    assert saved_vocab == len(kit_tokenizer)
    for text in SAMPLES + corpus[::7]:
        assert reloaded.encode(text, add_special_tokens=False) == kit_tokenizer.encode(text, add_special_tokens=False)


def test_extra_text_grows_the_vocabulary(episodes, corpus_spec, kit_tokenizer):
    rng = random.Random(0)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 9))) for _ in range(600)]
    extra = [" ".join(rng.choices(words, k=50)) for _ in range(200)]
    docs = build_corpus(episodes, corpus_spec, extra=extra)
    assert docs[-len(extra):] == extra
    assert len(train_tokenizer(docs, 4000)) > len(kit_tokenizer) + 500
