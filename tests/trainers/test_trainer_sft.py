"""SFT on plain samples: the masked NLL falls on the demonstrations, and the saved policy loads."""

from __future__ import annotations

import pytest
import torch

from configs.schema import SFTConfig
from trainers.batching import TrainSample
from trainers.sft import masked_nll, pad_batch, train_sft


def demo(token_ids: list[int], loss_mask: list[int]) -> TrainSample:
    return TrainSample(token_ids, loss_mask, [0.0] * len(token_ids), 0.0)


def test_sft_learns_the_demonstrations_and_saves_a_policy(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    demos = [demo([11, 12, 13, 14, 15, 16], [0, 0, 1, 1, 1, 1]), demo([21, 22, 23, 24], [0, 1, 1, 1])]
    ids, mask, attention = pad_batch([d.token_ids for d in demos], [d.loss_mask for d in demos], 0)

    def nll(model_dir: str) -> float:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        with torch.no_grad():
            return masked_nll(model, ids, mask, attention).item()

    out = tmp_path / "sft"
    metrics = train_sft(tiny_model_dir, out, demos, SFTConfig(steps=20, batch_size=2, lr=3e-3), seed=0,
                        pad_token_id=0, progress_bar=False)
    assert metrics["sft/num_demos"] == 2.0 and metrics["sft/final_loss"] < nll(tiny_model_dir)
    assert nll(str(out)) < nll(tiny_model_dir)
    assert (out / "config.json").is_file() and any(out.glob("tokenizer*"))


def test_sft_needs_a_demonstration(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        train_sft("unused", tmp_path, [], SFTConfig(), seed=0, pad_token_id=0, progress_bar=False)
