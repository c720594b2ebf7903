"""Fixtures for the model kit tests: the bundled environments' reference episodes as chat dicts,
a small trained kit tokenizer, and a saved kit directory (test preset), built once per session.

`reference_episodes` (launch/model_kit.py) is the glue between `envs` and `models`, independent layers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from launch.model_kit import reference_episodes
from models.chat_kit import PRESETS, save_chat_model
from models.chat_tokenizer import train_tokenizer
from models.corpus import ChatEpisode, CorpusSpec, build_corpus

# Small enough that corpus and BPE training take well under a second.
SMALL_CORPUS = CorpusSpec(english_sentences=200, number_lines=100, synthetic_calls=60, seed=0)
SMALL_VOCAB = 2000


@pytest.fixture(scope="session")
def episodes() -> list[ChatEpisode]:
    return reference_episodes(seed=0, per_difficulty=1)


@pytest.fixture(scope="session")
def corpus_spec() -> CorpusSpec:
    return SMALL_CORPUS


@pytest.fixture(scope="session")
def corpus(episodes: list[ChatEpisode]) -> list[str]:
    return build_corpus(episodes, SMALL_CORPUS)


@pytest.fixture(scope="session")
def kit_tokenizer(corpus: list[str]):
    return train_tokenizer(corpus, SMALL_VOCAB)


@pytest.fixture(scope="session")
def kit_dir(tmp_path_factory: pytest.TempPathFactory, episodes: list[ChatEpisode]) -> Path:
    path = tmp_path_factory.mktemp("kit") / "model"
    return save_chat_model(path, PRESETS["test"], SMALL_VOCAB, episodes=episodes, corpus=SMALL_CORPUS)
