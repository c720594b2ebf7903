"""Full-parameter iteration, HF export and resumable checkpoints for the DeepSpeed policy.

Cross-rank protocol for full parameters (weight sync, export, tests): EVERY rank runs
`iter_full_parameters` over the same parameter list in the same order. Under ZeRO-3 each bucket of
parameters is all-gathered (a collective: every rank must take part, in the same order), and only
the source rank (rank 0) yields the gathered tensors; the others drive the gathers and yield
nothing. Below ZeRO-3 every rank already holds full parameters and no collective is needed. The
iterator is lazy, so the consumer (a bucketed weight sender or a shard writer) holds at most one
bucket of gathered parameters at a time.

Resumable checkpoints: DeepSpeed saves model, optimizer and LR scheduler (each rank its ZeRO
partition); we add every rank's RNG states (python, numpy, torch, cuda) and the step counter, so
a resumed run draws the same random numbers as an uninterrupted one. The directory must be on a
filesystem every rank can reach (shared storage on multi-node clusters).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json", ".msgpack", ".h5")
RNG_FILE = "rng_rank{rank}.pt"
STEP_KEY = "labrl_step"


def _is_zero3_param(p: torch.nn.Parameter) -> bool:
    return hasattr(p, "ds_id")


def _param_bytes(p: torch.nn.Parameter) -> int:
    numel = p.ds_numel if _is_zero3_param(p) else p.numel()
    return numel * p.element_size()


def _buckets(named: list[tuple[str, torch.nn.Parameter]],
             bucket_bytes: int) -> Iterator[list[tuple[str, torch.nn.Parameter]]]:
    bucket: list[tuple[str, torch.nn.Parameter]] = []
    size = 0
    for name, p in named:
        if bucket and size + _param_bytes(p) > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, p))
        size += _param_bytes(p)
    if bucket:
        yield bucket


def iter_full_parameters(module: torch.nn.Module, *, is_source: bool,
                         bucket_bytes: int = 256 << 20) -> Iterator[tuple[str, Tensor]]:
    """Yield `(name, full tensor)` for every parameter, lazily; see the module docstring.

    Names are the HF checkpoint names (tied weights appear once). Under ZeRO-3 the yielded tensors
    are copies (the gathered storage is released when the bucket's context exits); otherwise they
    are detached views of the live parameters, valid until the next optimizer step.
    """
    named = list(module.named_parameters())
    if not any(_is_zero3_param(p) for _, p in named):
        if is_source:
            for name, p in named:
                yield name, p.detach()
        return
    import deepspeed

    for bucket in _buckets(named, bucket_bytes):
        with deepspeed.zero.GatheredParameters([p for _, p in bucket], modifier_rank=None):
            copies = [(name, p.detach().clone()) for name, p in bucket] if is_source else []
        yield from copies


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def copy_model_files(source_dir: str | Path, out_dir: str | Path, dtype: torch.dtype | None) -> None:
    """Copy everything but weights (config, tokenizer, chat template, markers) from `source_dir`,
    and set the config's dtype to what was exported so loaders do not cast silently."""
    src, out = Path(source_dir), Path(out_dir)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(f, out / f.name)
    cfg_path = out / "config.json"
    if dtype is not None and cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        cfg["dtype"] = _dtype_name(dtype)
        if "torch_dtype" in cfg:  # older transformers spelling
            cfg["torch_dtype"] = _dtype_name(dtype)
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def write_safetensors_shards(named: Iterator[tuple[str, Tensor]], out_dir: str | Path,
                             shard_bytes: int = 4 << 30) -> torch.dtype | None:
    """Stream `(name, tensor)` pairs into HF-style safetensors shards (+ index when sharded).

    Returns the dtype of the first tensor (the export dtype), None if nothing was written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[list[str]] = []
    current: dict[str, Tensor] = {}
    size, total, dtype = 0, 0, None

    def flush() -> None:
        nonlocal current, size
        if current:
            save_file(current, str(out / f"part-{len(shards):05d}.tmp"), metadata={"format": "pt"})
            shards.append(list(current))
            current, size = {}, 0

    for name, t in named:
        dtype = dtype or t.dtype
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > shard_bytes:
            flush()
        current[name] = t.detach().to("cpu").contiguous()
        size += nbytes
        total += nbytes
    flush()
    if len(shards) == 1:
        (out / "part-00000.tmp").rename(out / "model.safetensors")
        return dtype
    weight_map = {}
    for k, names in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        (out / f"part-{k:05d}.tmp").rename(out / fname)
        weight_map.update({n: fname for n in names})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return dtype


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(engine: Any, ckpt_dir: str | Path, step: int, rank: int, tag: str | None = None) -> str:
    """All ranks call this together. Returns the tag under `ckpt_dir` (default `step_<n>`)."""
    tag = tag or f"step_{step}"
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={STEP_KEY: step})
    # Our own file, written with torch.save: the RNG tuples are not weights-only loadable.
    torch.save(rng_state(), Path(ckpt_dir) / tag / RNG_FILE.format(rank=rank))
    return tag


def load_training_state(engine: Any, ckpt_dir: str | Path, rank: int, tag: str | None = None) -> int:
    """All ranks call this together; restores everything `save_training_state` wrote.

    Returns the step counter. `tag=None` loads the checkpoint named in `ckpt_dir/latest`.
    """
    ckpt_dir = Path(ckpt_dir)
    if tag is None:
        latest = ckpt_dir / "latest"
        if not latest.is_file():
            raise FileNotFoundError(f"no checkpoint in {ckpt_dir} (missing 'latest' file)")
        tag = latest.read_text().strip()
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
    if path is None:
        raise FileNotFoundError(f"DeepSpeed could not load checkpoint {tag!r} from {ckpt_dir}")
    rng_file = ckpt_dir / tag / RNG_FILE.format(rank=rank)
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    else:
        logger.warning("%s missing (saved with another number of ranks?): RNG not restored", rng_file)
    return int((client_state or {}).get(STEP_KEY, 0))
