"""Behaviour cloning: supervised fine-tuning on reference-solver demonstrations before RL.

Demonstrations are trajectories produced by the environment's own solver through the same agent
loop as RL, so the loss mask already covers exactly the assistant tokens. This warm start gives
GRPO a policy that succeeds sometimes; from zero success a group-normalised advantage is all zeros.
"""

from __future__ import annotations

import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM

from rollout.trajectory import Trajectory

logger = logging.getLogger(__name__)


@dataclass
class SFTSettings:
    steps: int = 150
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 10
    seed: int = 0
    progress_bar: bool = True


def pad_batch(seqs: list[list[int]], masks: list[list[int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-pad token ids and loss masks into [B, T] tensors plus an attention mask."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((len(seqs), width), dtype=torch.float32)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        ids[i, : len(s)] = torch.tensor(s)
        loss_mask[i, : len(m)] = torch.tensor(m, dtype=torch.float32)
        attention[i, : len(s)] = 1
    return ids, loss_mask, attention


def masked_nll(model, ids: torch.Tensor, loss_mask: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
    targets, mask = ids[:, 1:], loss_mask[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return (nll * mask).sum() / mask.sum().clamp(min=1)


def train_sft(model_dir: str, out_dir: str | Path, demos: list[Trajectory], settings: SFTSettings,
              pad_id: int) -> dict[str, float]:
    """Fine-tune `model_dir` on `demos`, save the result (weights + tokenizer files) to `out_dir`."""
    if not demos:
        raise ValueError("SFT needs at least one demonstration")
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, settings.warmup_steps))
        * max(0.05, 1 - s / max(1, settings.steps)))
    losses: list[float] = []
    for _ in tqdm(range(settings.steps), desc="sft", disable=not settings.progress_bar):
        batch = rng.sample(demos, min(settings.batch_size, len(demos)))
        ids, loss_mask, attention = pad_batch([t.token_ids for t in batch],
                                              [t.loss_mask for t in batch], pad_id)
        loss = masked_nll(model, ids, loss_mask, attention)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    _save_like(model, model_dir, out_dir)
    tail = losses[-10:] or [float("nan")]
    logger.info("SFT: %d steps on %d demos, final loss %.4f", settings.steps, len(demos), sum(tail) / len(tail))
    return {"sft/final_loss": sum(tail) / len(tail), "sft/num_demos": float(len(demos))}


def _save_like(model, source_dir: str, out_dir: str | Path) -> None:
    """Save weights and carry over every non-weight file (tokenizer, markers) from the source."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in Path(source_dir).iterdir():
        if f.is_file() and ".safetensors" not in f.name and f.name not in ("config.json", "pytorch_model.bin"):
            shutil.copy2(f, out / f.name)
    model.save_pretrained(out, safe_serialization=True)
