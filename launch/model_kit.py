"""`labrl build-model --preset NAME --out DIR [--vocab-size N] [--seed S]`, and the run's own build.

Builds a model-kit directory (models/chat_kit.py: byte-level BPE tokenizer, tool-declaring chat
template, random Qwen2 weights) that `model.path` can point at like any Hugging Face checkpoint.
The tokenizer's corpus includes reference-solver transcripts of every bundled environment: played
here because `models` may not import `envs`. A run with `model.build=chat` and no `model.path`
builds one into its run directory (launch/components.prepare_model).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import replace
from pathlib import Path

from envs.registry import get_env_spec, list_envs
from envs.testing import play_episode
from models.chat_kit import PRESETS, save_chat_model
from models.corpus import ChatEpisode

logger = logging.getLogger("labrl")


def _module_of(obj: object) -> str:
    return getattr(getattr(obj, "func", obj), "__module__", "") or ""


async def _play(seed: int, per_difficulty: int) -> list[ChatEpisode]:
    episodes = []
    for name in list_envs(configurable=False):
        spec = get_env_spec(name)
        # The bundled suite only: tests and users may register environments of their own.
        if not spec.has_reference or not _module_of(spec.make_env).startswith("envs.suite."):
            continue
        dataset = spec.make_dataset(per_difficulty * len(spec.difficulties), len(spec.difficulties),
                                    spec.difficulties, seed)
        for task in dataset.tasks("train"):
            record = await play_episode(spec.make_env(task), spec.reference_policy)
            episodes.append(ChatEpisode([m.to_chat() for m in record.messages], [t.schema for t in record.tools]))
    return episodes


def reference_episodes(seed: int = 0, per_difficulty: int = 6) -> list[ChatEpisode]:
    """Reference-solver transcripts of every bundled environment at every difficulty."""
    return asyncio.run(_play(seed, per_difficulty))


def build_chat_policy(out: str | Path, preset: str, vocab_size: int, seed: int) -> str:
    """Build the kit model `preset` (weights and corpus seeded by `seed`) into `out`."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model-kit preset {preset!r}; choose one of {sorted(PRESETS)}")
    spec = replace(PRESETS[preset], seed=seed)
    return str(save_chat_model(out, spec, vocab_size, episodes=reference_episodes(seed)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="labrl build-model", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="chat-cpu", choices=sorted(PRESETS))
    p.add_argument("--out", type=Path, required=True, help="directory to write (model.path=DIR then)")
    p.add_argument("--vocab-size", type=int, default=16384)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = build_chat_policy(args.out, args.preset, args.vocab_size, args.seed)
    logger.info("built %s: train with model.path=%s", args.preset, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
