"""Behaviour cloning: supervised fine-tuning on reference-solver demonstrations before RL.

Demonstrations are trajectories produced by the environment's own solver through the same agent
loop as RL (the launcher turns them into `TrainSample`s), so the loss mask already covers exactly the
assistant tokens. This warm start gives GRPO a policy that succeeds sometimes; from zero success a
group-normalised advantage is all zeros.

A chat model's demonstrations of one environment start with the same long system prompt (its tool
schemas as JSON: ~260 of ~420 tokens per stoichiometry episode with the model kit's BPE). A batch
then runs that prompt once and every demonstration's own tokens on its cached keys and values
(`trainers.prompt_cache`), as the GRPO trainer does. The character-level policy's short
system prompt saves less: its batches stay padded, bit for bit the computation they always had.
"""

from __future__ import annotations

import logging
import random
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM

from configs.schema import SFTConfig
from trainers.batching import MicroBatch, TrainSample, collate, shifted_logits

logger = logging.getLogger(__name__)

WARMUP_STEPS = 10  # linear warmup of the SFT learning rate, then a linear decay to 5%
# Read when torch / MKL / oneDNN load, so they are set on the process that trains (`sft_process_env`).
# ATen's AVX2 kernels are its own code: the same on every AVX2 CPU. MKL's reproducibility branches
# other than COMPATIBLE are honoured on Intel CPUs only (elsewhere MKL falls back to its automatic
# dispatch), so only COMPATIBLE gives AMD and Intel the same GEMMs (MKL developer guide, "Specifying
# Code Branches"; measured stand-in: tests/trainers/test_trainer_sft.py).
_PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
NUMERICS_ENV: dict[str, dict[str, str]] = {
    "any_x86": {**_PINNED, "MKL_CBWR": "COMPATIBLE"},
    "intel_x86": {**_PINNED, "MKL_CBWR": "AVX2,STRICT"},
    "this_machine": {},
}


def sft_process_env(sft: SFTConfig) -> dict[str, str]:
    """Environment variables of the process that runs `train_sft`."""
    threads = str(sft.num_threads)  # else Ray's default for a task without CPUs: one thread
    return {**NUMERICS_ENV[sft.numerics], "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def batch_nll(model, batch: Sequence[TrainSample], pad_token_id: int) -> torch.Tensor:
    """Mean NLL of the loss-mask tokens of `batch`; a long shared prompt runs once (module doc)."""
    b = collate(MicroBatch(list(batch)), pad_token_id, cache_prompt=True)
    logits = shifted_logits(model, b, model.config._attn_implementation, torch.float32)
    return _mean_nll(logits, b.from_first_logit(b.target_ids), b.from_first_logit(b.mask))


def _mean_nll(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    return (nll * mask).sum() / mask.sum().clamp(min=1)


def train_sft(policy_dir: str, out_dir: str | Path, samples: Sequence[TrainSample], sft: SFTConfig,
              seed: int, pad_token_id: int, progress_bar: bool = True) -> dict[str, float]:
    """Fine-tune `policy_dir` on `samples` for `sft.steps` AdamW steps (`sft.batch_size` samples
    drawn per step, peak lr `sft.lr`); save the result (weights + tokenizer files) to `out_dir`.

    Only `token_ids` and `loss_mask` (1: learn this token) of each sample are read. `sft.enabled`,
    `num_demos` and `novice_fraction` are the caller's business (which demos)."""
    pool = list(samples)
    if not pool:
        raise ValueError("SFT needs at least one demonstration")
    torch.set_num_threads(sft.num_threads)
    if sft.numerics != "this_machine":
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=sft.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / WARMUP_STEPS) * max(0.05, 1 - s / max(1, sft.steps)))
    losses: list[float] = []
    for _ in tqdm(range(sft.steps), desc="sft", disable=not progress_bar):
        batch = rng.sample(pool, min(sft.batch_size, len(pool)))
        loss = batch_nll(model, batch, pad_token_id)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    _save_like(model, policy_dir, out_dir)
    tail = losses[-10:] or [float("nan")]
    final = sum(tail) / len(tail)
    logger.info("SFT: %d steps on %d demos, final loss %.4f", sft.steps, len(pool), final)
    return {"sft/final_loss": final, "sft/num_demos": float(len(pool))}


def _save_like(model, source_dir: str, out_dir: str | Path) -> None:
    """Save weights and carry over every non-weight file (tokenizer, markers) from the source."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in Path(source_dir).iterdir():
        if f.is_file() and ".safetensors" not in f.name and f.name not in ("config.json", "pytorch_model.bin"):
            shutil.copy2(f, out / f.name)
    model.save_pretrained(out, safe_serialization=True)
