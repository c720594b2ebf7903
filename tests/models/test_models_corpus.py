"""The generated tokenizer corpus: deterministic, and made of what the policy will read and write."""

from __future__ import annotations

import dataclasses
import json
import re

from envs.parsing import parse_assistant
from models.corpus import build_corpus


def test_corpus_is_deterministic_and_follows_the_seed(episodes, corpus, corpus_spec):
    assert build_corpus(episodes, corpus_spec) == corpus
    other = build_corpus(episodes, dataclasses.replace(corpus_spec, seed=1))
    assert other != corpus and len(other) > 0


def test_corpus_holds_every_environment_prompt_and_schema(episodes, corpus):
    text = "\n".join(corpus)
    for episode in episodes:
        first_user = next(m["content"] for m in episode.messages if m["role"] == "user")
        assert first_user in text
        for schema in episode.tools:
            assert json.dumps(schema["function"]) in corpus
    assert len({e.tools[0]["function"]["name"] for e in episodes}) >= 5  # several environments


def test_corpus_has_general_text_numbers_and_parsable_calls(corpus):
    text = "\n".join(corpus)
    assert len(re.findall(r"[A-Z][a-z]+ [a-z]+ [a-z]+", text)) > 100  # English sentences
    assert re.search(r"\d+ [-+*/] \d+ = -?[\d.]+", text)  # arithmetic with results
    calls = [d for d in corpus if d.lstrip().startswith("<tool_call>") or d.endswith("</tool_call>")]
    assert len(calls) >= 50
    for doc in calls:
        message = parse_assistant(doc)
        assert message.parse_error is None and message.tool_calls
    assert any(c.arguments == {} for d in calls for c in parse_assistant(d).tool_calls)
