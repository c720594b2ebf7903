"""Fixtures for the model kit tests: the bundled environments' reference episodes as chat dicts,
a small trained kit tokenizer, and a saved kit directory (test preset), built once per session.

`reference_episodes` is the glue between `envs` and `models` (independent layers, so it cannot
live in models/): a launcher that builds a kit model would hold the same few lines.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from envs.registry import get_env_spec, list_envs
from envs.testing import play_episode
from models.chat_kit import PRESETS, save_chat_model
from models.chat_tokenizer import train_tokenizer
from models.corpus import ChatEpisode, CorpusSpec, build_corpus

# Small enough that corpus and BPE training take well under a second.
SMALL_CORPUS = CorpusSpec(english_sentences=200, number_lines=100, synthetic_calls=60, seed=0)
SMALL_VOCAB = 2000


async def _play(seed: int, per_difficulty: int) -> list[ChatEpisode]:
    episodes = []
    for name in list_envs(configurable=False):
        spec = get_env_spec(name)
        if not spec.has_reference:
            continue
        dataset = spec.make_dataset(per_difficulty * len(spec.difficulties), len(spec.difficulties),
                                    spec.difficulties, seed)
        for task in dataset.tasks("train"):
            record = await play_episode(spec.make_env(task), spec.reference_policy)
            episodes.append(ChatEpisode([m.to_chat() for m in record.messages],
                                        [t.schema for t in record.tools]))
    return episodes


def reference_episodes(seed: int = 0, per_difficulty: int = 1) -> list[ChatEpisode]:
    """Reference-solver transcripts of every bundled environment at every difficulty."""
    return asyncio.run(_play(seed, per_difficulty))


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
