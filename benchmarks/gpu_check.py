"""Single-GPU checks of the parts of labrl that CPU cannot show, without Ray or vLLM.

    python -m benchmarks.gpu_check --out results/gpu_check.json
    python -m benchmarks.gpu_check --stages 3 --ipc-models 0.5b      # a quicker subset

Written for a lent GPU machine that has torch and transformers but neither Ray nor vLLM (their
wheels exceed what can be carried there), so it drives the real classes directly:

1. Trainer: one `PolicyTrainerRank` (the class the Ray group wraps) in bf16 on CUDA with NCCL,
   per ZeRO stage in a fresh process: set-up, an on-policy first step (sampler logprobs from the
   trainer itself: the IS ratio must be ~1 and the PPO KL ~0), then timed GRPO steps (tokens/s,
   peak GPU memory). ZeRO-3 also saves a checkpoint, steps, reloads and repeats the step: the two
   losses must agree.
2. CUDA IPC weight sync data plane: a sender packs the policy into buckets in one reused GPU
   buffer (`pack_buckets`), passes each bucket's IPC handle to a receiver process, which opens it
   with `open_bucket` (what the vLLM worker's CudaIpcReceiver uses) and copies the tensors into its
   own model. Reported: GB/s against the device-to-device copy floor; for the 0.5B model, logprobs
   of the receiver against the sender after the sync (and that they differed before it).

Prints a table per part and one JSON line; `--out` also writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("benchmarks.gpu_check")

# Qwen2-shaped models: (hidden, layers, heads, kv_heads, intermediate, vocab).
SHAPES = {"0.5b": (896, 24, 14, 2, 4864, 151936), "7b": (3584, 28, 28, 4, 18944, 152064)}


def qwen2_config(shape: str) -> Any:
    from transformers import Qwen2Config

    hidden, layers, heads, kv, inter, vocab = SHAPES[shape]
    return Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                       max_position_embeddings=4096, tie_word_embeddings=shape == "0.5b",
                       pad_token_id=0, eos_token_id=1)


def save_model(shape: str, out_dir: Path) -> str:
    """Random-weight Qwen2 of `shape`, saved in HF format (built on the GPU: seconds, not minutes)."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(qwen2_config(shape)).to(torch.bfloat16)
    model.save_pretrained(out_dir)
    return str(out_dir)


# ------------------------------------------------------------------------------------- trainer
def trainer_stage(model_path: str, stage: int, samples: int, steps: int, checkpoint: bool,
                  gpus_per_rank: float = 1.0) -> dict[str, Any]:
    """One ZeRO stage on one GPU (runs in its own process: DeepSpeed state is per process)."""
    from transformers import AutoConfig

    from actors.calls import free_port
    from benchmarks.trainer import make_batch
    from configs.schema import GRPOConfig, TrainerConfig
    from trainers.batching import plan_micro_batches, plan_train_step
    from trainers.metrics import merge_states
    from trainers.policy_trainer import PolicyTrainerRank
    from trainers.spec import TrainerSpec

    trainer = TrainerConfig(gpus_per_rank=gpus_per_rank, zero_stage=stage, lr=1e-6, micro_batch_tokens=16384,
                            gradient_checkpointing=True)
    t0 = time.perf_counter()
    rank = PolicyTrainerRank(TrainerSpec(model_path, trainer), 0, 1)
    info = rank.setup("127.0.0.1", free_port())
    setup_s = time.perf_counter() - t0
    batch = make_batch(samples, 256, 1024, AutoConfig.from_pretrained(model_path).vocab_size)
    # On-policy: the sampler's logprobs are the trainer's own (eval-mode forward).
    for idx, lp in rank.compute_logprobs(plan_micro_batches(batch, 1, trainer.micro_batch_tokens)[0]):
        batch[idx].sampler_logprobs = lp
    cfg = GRPOConfig(clip_high=0.2, importance_sampling="none")  # the settings this check was measured with

    def step() -> dict[str, float]:
        plan = plan_train_step(batch, 1, 1, trainer.micro_batch_tokens)[0]
        return merge_states([rank.train_step(plan, cfg)])

    first = step()
    rates, times = [], []
    for _ in range(steps):
        m = step()
        rates.append(m["train/num_tokens"] / m["train/step_time_s"])
        times.append(m["train/step_time_s"])
    row = {"zero_stage": stage, "params_m": info["num_params"] / 1e6, "setup_s": setup_s,
           "tokens_per_step": int(first["train/num_tokens"]), "step_s": sorted(times)[len(times) // 2],
           "tokens_per_s": sorted(rates)[len(rates) // 2],
           "peak_gpu_gb": first["train/peak_memory_gb"],
           "first_is_ratio_mean": first["train/is_ratio_mean"], "first_is_ratio_max": first["train/is_ratio_max"],
           "first_approx_kl": first["train/approx_kl"],
           "first_sampler_logprob_diff_max": first["train/sampler_logprob_diff_max"]}
    if checkpoint:
        with tempfile.TemporaryDirectory(prefix="labrl_gpu_ckpt_") as ckpt:
            tag = rank.save_checkpoint(ckpt)
            after_save = step()["train/loss"]
            rank.load_checkpoint(ckpt, tag)
            after_load = step()["train/loss"]
        row.update({"resume_loss_uninterrupted": after_save, "resume_loss_reloaded": after_load})
    return row


def run_trainer_stages(model_path: str, stages: list[int], samples: int, steps: int) -> list[dict[str, Any]]:
    rows = []
    for stage in stages:
        cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--trainer-child", model_path, str(stage),
               str(samples), str(steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            rows.append({"zero_stage": stage, "error": proc.stderr[-3000:]})
            logger.error("ZeRO-%d failed:\n%s", stage, proc.stderr[-3000:])
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        logger.info("trainer %s", rows[-1])
    return rows


# ----------------------------------------------------------------------------------- CUDA IPC
@torch.no_grad()
def _receiver(shape: str, model_path: str | None, inbox: Any, outbox: Any) -> None:
    """Receiver process: open each bucket like the vLLM worker does, copy into its own weights."""
    from actors.weight_sync.cuda_ipc import open_bucket

    device = torch.device("cuda", 0)
    params, model = _load_params(shape, model_path)
    outbox.put("ready")
    while (msg := inbox.get()) is not None:
        if msg == "logprobs":
            outbox.put(_logprobs(model))
            continue
        for name, tensor in open_bucket(pickle.loads(msg), device):
            params[name].copy_(tensor)
        torch.cuda.synchronize()
        outbox.put("ok")


def _load_params(shape: str, model_path: str | None) -> tuple[dict[str, Any], Any]:
    """bf16 parameters by name, and the HF model holding them (None: bare tensors of `shape`)."""
    from transformers import Qwen2ForCausalLM

    if model_path is not None:
        model = Qwen2ForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16).cuda().eval()
        return dict(model.named_parameters()), model
    with torch.device("meta"):
        model = Qwen2ForCausalLM(qwen2_config(shape)).to(torch.bfloat16)
    return {n: torch.empty(p.shape, dtype=p.dtype, device="cuda") for n, p in model.named_parameters()}, None


@torch.no_grad()
def _logprobs(model: Any) -> torch.Tensor:
    gen = torch.Generator(device="cuda").manual_seed(1)
    ids = torch.randint(2, model.config.vocab_size, (2, 128), device="cuda", generator=gen)
    return torch.log_softmax(model(input_ids=ids).logits.float(), -1).cpu()


def memcpy_gb_s(nbytes: int = 2 << 30) -> float:
    """Device-to-device copy rate (bytes moved per second, each byte counted once)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 5 * nbytes / (time.perf_counter() - t0) / 1e9


def _answer(outbox: Any, child: Any, timeout_s: float = 120.0) -> Any:
    """The receiver's next message; fails at once if the receiver died."""
    import queue

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return outbox.get(timeout=0.5)
        except queue.Empty:
            if not child.is_alive():
                raise RuntimeError(f"receiver process died (exit code {child.exitcode})") from None
    raise TimeoutError(f"receiver gave no answer within {timeout_s:.0f} s")


def ipc_sync(shape: str, model_path: str | None, bucket_mb: int, floor_gb_s: float) -> dict[str, Any]:
    """Sync sender -> receiver process over CUDA IPC; time it; check the receiver's logprobs."""
    from actors.weight_sync.buckets import pack_buckets
    from actors.weight_sync.cuda_ipc import device_uuid, ipc_bucket

    ctx = mp.get_context("spawn")
    inbox, outbox = ctx.Queue(), ctx.Queue()
    child = ctx.Process(target=_receiver, args=(shape, model_path, inbox, outbox), daemon=True)
    child.start()
    params, model = _load_params(shape, model_path)
    with torch.no_grad():  # the trainer's new weights: differ from what the receiver holds
        for p in params.values():
            p.add_(torch.randn_like(p) * 0.02)
    if _answer(outbox, child, 300) != "ready":
        raise RuntimeError("receiver did not start")
    before = None
    if model_path is not None:
        inbox.put("logprobs")
        before = (_answer(outbox, child) - _logprobs(model)).abs().max().item()
    buffer: list[Any] = []
    uuid = device_uuid(0)

    def get_buffer(index: int, nbytes: int) -> Any:
        if not buffer or buffer[0].numel() < nbytes:
            buffer[:] = [torch.empty(nbytes, dtype=torch.uint8, device="cuda")]
        return buffer[0]

    def ship(index: int, buf: Any, entries: list) -> None:  # what CudaIpcSender._ship sends
        used = entries[-1].offset + entries[-1].nbytes
        torch.cuda.synchronize()
        inbox.put(pickle.dumps(ipc_bucket(buf[:used], uuid, entries)))
        if _answer(outbox, child) != "ok":
            raise RuntimeError(f"receiver failed on bucket {index}")

    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        num_buckets, total = pack_buckets(params.items(), bucket_mb << 20, get_buffer, ship)
        times.append(time.perf_counter() - t0)
    seconds = min(times)
    row = {"model": shape, "bucket_mb": bucket_mb, "gb": total / 1e9, "buckets": num_buckets,
           "seconds": seconds, "gb_per_s": total / seconds / 1e9,
           "floor_s": total / (floor_gb_s * 1e9), "ratio_to_floor": seconds * floor_gb_s * 1e9 / total}
    if model_path is not None:
        inbox.put("logprobs")
        row["max_logprob_diff_before"] = before
        row["max_logprob_diff_after"] = (_answer(outbox, child) - _logprobs(model)).abs().max().item()
    inbox.put(None)
    child.join(timeout=60)
    return row


# ------------------------------------------------------------------------------------- output
def _table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    """The rows under `keys`, floats in 4 significant digits (a failed check's row shows its error)."""
    from monitor.text_table import format_table  # dependency-free, like this script

    columns = [(k, lambda r, k=k: r.get(k, "-"), "") for k in keys]
    floats = [{k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    return format_table(floats, columns) + "\n"


def _guarded(check: Any, *args: Any) -> dict[str, Any]:
    """Run one check; a failure becomes a row with its error, so the other checks still run."""
    try:
        return check(*args)
    except Exception as err:
        logger.exception("%s%s failed", check.__name__, args[:1])
        return {"check": check.__name__, "args": repr(args[:2]), "error": f"{type(err).__name__}: {err}"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--trainer-child":
        logging.basicConfig(level=logging.WARNING)
        model_path, stage, samples, steps = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
        sys.stdout.write(json.dumps(trainer_stage(model_path, stage, samples, steps, stage == 3)) + "\n")
        return {}
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stages", type=int, nargs="*", default=[0, 1, 2, 3])
    p.add_argument("--samples", type=int, default=48, help="GRPO samples per step (256-1024 tokens each)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--ipc-models", nargs="*", default=["0.5b", "7b"], choices=sorted(SHAPES))
    p.add_argument("--bucket-mb", type=int, nargs="+", default=[256])
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    # Its own format: the GPU machine runs this file without labrl's dependencies (no monitor/).
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu_check needs a CUDA GPU")
    result: dict[str, Any] = {"benchmark": "gpu_check", "device": torch.cuda.get_device_name(0),
                              "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="labrl_gpu_") as tmp:
        model_path = save_model("0.5b", Path(tmp) / "0.5b")
        result["memcpy_gb_s"] = floor = memcpy_gb_s()
        result["ipc"] = [_guarded(ipc_sync, shape, model_path if shape == "0.5b" else None, mb, floor)
                         for shape in args.ipc_models for mb in args.bucket_mb]
        sys.stdout.write(_table(result["ipc"], ["model", "bucket_mb", "gb", "seconds", "gb_per_s",
                                                "ratio_to_floor", "max_logprob_diff_after"]))
        result["trainer"] = run_trainer_stages(model_path, args.stages, args.samples, args.steps)
        sys.stdout.write(_table(result["trainer"], ["zero_stage", "tokens_per_s", "step_s", "peak_gpu_gb",
                                                    "setup_s", "first_is_ratio_max", "first_approx_kl"]))
    line = json.dumps(result)
    sys.stdout.write(line + "\n")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")
    return result


if __name__ == "__main__":
    main()
