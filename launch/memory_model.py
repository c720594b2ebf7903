"""Peak memory of every role of a run, predicted from its config before anything starts.

Roles: each trainer rank (DeepSpeed ZeRO), each vLLM engine, the SFT task (behaviour cloning in a
Ray task on the driver's node, before the engines and ranks start), the driver, the env workers and
Ray's own processes; then the node total on CPU (every role shares host RAM) or each GPU's total.
`launch.preflight` refuses a layout whose prediction exceeds what the machine has;
`benchmarks/memory_model_check.py` measures the same roles and prints predicted / measured.

Units: GB = 1e9 bytes (`generation.kv_cache_gb` is GiB, as vLLM reads it, and is converted). A peak
is the config's worst case: micro-batches filled to `trainer.micro_batch_tokens` (or one
`max_model_len` sequence), SFT batches of `max_model_len` demonstrations. On CPU a peak is resident
memory (VmHWM), which keeps what the allocator freed but did not return, so DeepSpeed's CPU states
are measured multiples of the model (CPU_ZERO_UNITS) rather than the textbook ones (`zero_states`).
On GPU the textbook states (as in the GPU recipes' comments) plus activations and logits are what
torch allocates (checked against benchmarks/gpu_check.py's H200 peak), then the CUDA context and the
caching allocator's slack; an engine takes `gpu_memory_utilization` of its GPU. The node total of a
GPU run counts only the roles in host RAM (SFT, driver, env workers, Ray).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configs.schema import LabrlConfig
from launch.scale_model import count_params

GB, GIB = 1e9, 2**30
# Measured here (2-core EPYC, torch 2.13 CPU, DeepSpeed 0.19.8, vLLM 0.32 CPU, Ray 2.60): peak
# resident memory of each process without the model (imports, Ray's core worker, buffers).
TRAINER_RUNTIME_GB = 0.56     # a DeepSpeed rank (gloo) up to the model load
ENGINE_RUNTIME_GB = 1.42      # a GenerationWorker plus vLLM's engine core, without weights or KV
RAY_WORKER_GB = 0.15          # what a Ray worker process holds beyond the same code run plainly
SFT_RUNTIME_GB = 0.58 + RAY_WORKER_GB  # the SFT Ray task (torch + transformers)
DRIVER_GB = 0.65              # `labrl train`: Ray driver, tokenizer, datasets, W&B (0.57-0.62)
ENV_WORKER_GB = 0.37          # one EnvWorker actor with the tiny policy's tokenizer
ENV_WORKER_BPE_GB = 0.16      # more with a BPE tokenizer and chat template (model kit: 0.52)
RAY_SYSTEM_GB = 0.80          # gcs, raylet, dashboard and runtime-env agents, idle workers (0.78)
SHARED_LIBS_GB = 0.19         # torch & co.'s file pages: in each process's peak, resident once (0.18-0.22)
# DeepSpeed on CPU in fp32, resident per rank after the second GRPO step (it stops growing there),
# in units of the fp32 model U = 4 x params: (unsharded, sharded / num_ranks). Fitted to Qwen2 shapes
# of 90M, 180M and 359M parameters (units per rank, N = 1 / N = 2: stage 0 5.1 / -, 1 7.1 / 5.65,
# 2 7.1 / 5.2, 3 8.6 / 7.0-9.0 over three runs). The textbook states are 4 U at stage 0, then
# 2 + 3/N, 1 + 4/N, 5/N; the rest is DeepSpeed's flat copies, reduce buckets, gathered ZeRO-3
# parameters and freed blocks the allocator keeps. Stage 3 is the costliest per rank on CPU.
CPU_ZERO_UNITS = {0: (5.1, 0.0), 1: (4.2, 2.9), 2: (3.2, 3.9), 3: (7.2, 1.4)}
SFT_UNITS = 4.6               # fp32 AdamW in the SFT task: weights, grads, m, v and temporaries
# Activations live per token and layer at the backward's peak (no checkpointing), in elements of
# the activation dtype, fitted to 180M-parameter steps of 2048-token micro-batches (2.1-2.2 GB above
# the states, the same for 256- and 1024-token sequences: SDPA's CPU kernel keeps no L x L scores,
# even with the packed rows' 4D mask); with checkpointing 0.7 GB measured, 0.5 predicted.
ACT_HIDDEN, ACT_INTERMEDIATE = 8, 3
# Plus, per micro-batch token of a GRPO step whatever the shape: what the tiny policy shows
# (0.4 GB at 8192 tokens against 1024, with 256- or 767-token sequences); SFT shows none.
STEP_TOKEN_BYTES = 35_000
LOGPROB_CHUNK_ROWS = 2048     # trainers/grpo/logits.py: rows of one fp32 log-softmax chunk
ENGINE_BATCH_TOKENS, ENGINE_MAX_SEQS = 2048, 256  # vLLM's CPU scheduler: tokens and sequences per step
GPU_CONTEXT_GB = 0.6          # CUDA context + allocator reserve of one process
GPU_FRAGMENTATION = 0.05      # the caching allocator's slack over what is allocated
WARN_FRACTION = 0.85          # warn when a prediction is above this share of its budget
TINY_VOCAB = 104              # models/tiny.py's character vocabulary (a test checks it)
KIT_CORPUS_VOCAB = 2048       # the model kit's BPE stops near 1.5k tokens on its corpus (README)


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on: parameter count and the shapes activations scale with."""

    params: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> ModelShape:
        return cls(count_params(hf), int(hf["hidden_size"]), int(hf["num_hidden_layers"]),
                   int(hf["num_attention_heads"]), int(hf["intermediate_size"]), int(hf["vocab_size"]))


@dataclass(frozen=True)
class RolePeak:
    """One role's peak in GB, by part; `count` identical instances; `device` "host" or "gpu"."""

    role: str
    parts: dict[str, float]
    count: int = 1
    device: str = "host"

    @property
    def total(self) -> float:
        return sum(self.parts.values())


@dataclass(frozen=True)
class MemoryPrediction:
    shape: ModelShape
    roles: list[RolePeak]
    node_total_gb: float              # host RAM of the node at its peak phase (what CPU runs need)
    per_gpu_gb: dict[int, float] = field(default_factory=dict)  # GPU index -> peak (GPU runs)
    notes: list[str] = field(default_factory=list)

    def role(self, name: str) -> RolePeak:
        return next(r for r in self.roles if r.role == name)


def hf_config_of(cfg: LabrlConfig) -> dict[str, Any]:
    """The policy's HF config: config.json at model.path, else the shape `path: null` builds."""
    m = cfg.model
    if m.path is not None:
        from models.loading import resolve_model_path

        return json.loads((Path(resolve_model_path(m.path)) / "config.json").read_text())
    if m.build == "chat":
        from models.chat_kit import PRESETS

        s = PRESETS[m.chat_preset]
        dims = (s.hidden_size, s.intermediate_size, s.num_layers, s.num_heads, s.num_kv_heads)
        tied, vocab = s.tie_word_embeddings, min(m.vocab_size, KIT_CORPUS_VOCAB)
    else:
        dims = (m.hidden_size, m.intermediate_size, m.num_layers, m.num_heads, m.num_kv_heads)
        tied, vocab = True, TINY_VOCAB
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    return {**dict(zip(keys, dims)), "vocab_size": vocab, "tie_word_embeddings": tied, "model_type": "qwen2"}


def micro_batch_tokens(cfg: LabrlConfig) -> int:
    """Tokens of the largest micro-batch a rank runs: the budget, or one longer sequence alone,
    never more than the rank's share of a mini-batch of full-length episodes."""
    g, t, L = cfg.grpo, cfg.trainer, cfg.generation.max_model_len
    per_rank = -(-g.batch_size // (g.num_mini_batches * t.num_ranks))
    return min(max(t.micro_batch_tokens, L), per_rank * L)


def activations(shape: ModelShape, tokens: int, act_bytes: int, checkpointing: bool) -> float:
    """Bytes kept for backward: every layer's activations, or (checkpointing) each layer's input
    plus one layer recomputed at a time, with its gradients."""
    per_layer = tokens * (ACT_HIDDEN * shape.hidden + ACT_INTERMEDIATE * shape.intermediate) * act_bytes
    if checkpointing:
        return shape.layers * tokens * shape.hidden * act_bytes + 2 * per_layer
    return shape.layers * per_layer


def logits(shape: ModelShape, tokens: int, act_bytes: int) -> float:
    """The logits and their gradient, plus one fp32 log-softmax chunk and its gradient."""
    return 2 * tokens * shape.vocab * act_bytes + 2 * min(tokens, LOGPROB_CHUNK_ROWS) * shape.vocab * 4


def zero_states(P: int, stage: int, ranks: int, bf16: bool) -> dict[str, float]:
    """Textbook model states of one rank in bytes: weights and gradients in the training dtype,
    the optimizer's fp32 master copy and Adam m, v (stage 0 in fp32: the weights are the master)."""
    w = 2 if bf16 else 4
    weights = w * P / (ranks if stage == 3 else 1)
    grads = w * P / (ranks if stage >= 2 else 1)
    optim = 8 * P if stage == 0 else 12 * P / ranks
    return {"weights": weights, "grads": grads, "optimizer": optim}


def trainer_rank(cfg: LabrlConfig, shape: ModelShape, rank: int) -> RolePeak:
    t, P = cfg.trainer, shape.params
    act_bytes = 2 if t.uses_bf16 else 4
    tokens = micro_batch_tokens(cfg)
    parts = {k: v / GB for k, v in zero_states(P, t.zero_stage, t.num_ranks, t.uses_bf16).items()}
    if not t.use_gpu:
        unsharded, sharded = CPU_ZERO_UNITS[t.zero_stage]
        measured = 4 * P * (unsharded + sharded / t.num_ranks) / GB
        parts["deepspeed buffers"] = max(0.0, measured - sum(parts.values()))
    parts["activations"] = activations(shape, tokens, act_bytes, t.gradient_checkpointing) / GB
    parts["logits"] = logits(shape, tokens, act_bytes) / GB
    parts["token buffers"] = STEP_TOKEN_BYTES * tokens / GB
    if cfg.grpo.kl_coef > 0:
        parts["reference"] = act_bytes * P / GB
    if t.use_gpu:
        return RolePeak(f"trainer rank {rank}", {**parts, "overhead": GPU_CONTEXT_GB + GPU_FRAGMENTATION
                                                 * sum(parts.values())}, device="gpu")
    if rank == 0:  # it keeps the staging mapped between syncs, so later steps peak on top of it
        parts["sync staging"] = sync_staging(cfg, shape)
    return RolePeak(f"trainer rank {rank}", {**parts, "runtime": TRAINER_RUNTIME_GB})


def sync_staging(cfg: LabrlConfig, shape: ModelShape) -> float:
    """GB of host shared memory the shm transport keeps mapped in rank 0 and every engine: the
    trainer's tensors, staged once per node (shm_inplace writes into the engines' own weights)."""
    gpu = cfg.trainer.use_gpu or cfg.generation.gpus_per_worker > 0
    if cfg.sync.transport != "shm" or gpu:
        return 0.0
    return shape.params * (2 if cfg.trainer.uses_bf16 else 4) / GB


def engine(cfg: LabrlConfig, shape: ModelShape, gpu_memory_gb: float | None, training: bool) -> RolePeak:
    g = cfg.generation
    if g.gpus_per_worker > 0:
        budget = g.gpu_memory_utilization * gpu_memory_gb if gpu_memory_gb else float("nan")
        return RolePeak("engine", {"gpu_memory_utilization x GPU": budget}, g.num_workers, "gpu")
    w = 2 if cfg.model.dtype == "bfloat16" else 4
    # One step's activations (no backward: about one layer's) and its sequences' fp32 logits.
    step = (ENGINE_BATCH_TOKENS * (ACT_HIDDEN * shape.hidden + ACT_INTERMEDIATE * shape.intermediate) * w
            + ENGINE_MAX_SEQS * shape.vocab * 4)
    # generation.cpu_gemm=packed: a oneDNN copy of every linear weight and the lm_head (at most all of them).
    packed = shape.params * w / GB if g.cpu_gemm == "packed" else 0.0
    parts = {"weights": shape.params * w / GB, "packed copies": packed, "kv cache": g.kv_cache_gb * GIB / GB,
             "activations": step / GB,
             "sync staging": sync_staging(cfg, shape) if training else 0.0, "runtime": ENGINE_RUNTIME_GB}
    return RolePeak("engine", parts, g.num_workers)


def sft_task(cfg: LabrlConfig, shape: ModelShape) -> RolePeak:
    """fp32 AdamW on the whole model, a batch of `sft.batch_size` padded demonstrations."""
    tokens = cfg.sft.batch_size * cfg.generation.max_model_len
    return RolePeak("sft", {"model + AdamW": SFT_UNITS * 4 * shape.params / GB,
                            "activations": activations(shape, tokens, 4, False) / GB,
                            "logits": 3 * tokens * shape.vocab * 4 / GB,  # logits, log-softmax, gradient
                            "runtime": SFT_RUNTIME_GB})


def driver(cfg: LabrlConfig, shape: ModelShape) -> RolePeak:
    """The driver builds a `path: null` policy itself (fp32) before Ray starts, and frees it
    (measured with the 0.5B kit: 1.95 GB peak, 0.54 after), so the build is a phase of its own."""
    return RolePeak("driver", {"runtime": DRIVER_GB, "model build": 0.0 if cfg.model.path else 4 * shape.params / GB})


def predict_memory(cfg: LabrlConfig, hf_config: dict[str, Any] | None = None,
                   gpu_memory_gb: float | None = None, training: bool = True) -> MemoryPrediction:
    """Every role's peak. `hf_config` replaces the model the config names (e.g. a built model's
    config.json); `gpu_memory_gb` is one GPU's memory (None: unknown, so GPU engines' share is
    not predicted); `training=False` (eval, profile): no trainer and no SFT."""
    shape = ModelShape.from_hf(hf_config or hf_config_of(cfg))
    t, g = cfg.trainer, cfg.generation
    ranks = [trainer_rank(cfg, shape, r) for r in range(min(t.num_ranks, 2))] if training else []
    if len(ranks) == 2:
        ranks[1] = RolePeak("trainer rank 1+", ranks[1].parts, t.num_ranks - 1, ranks[1].device)
    eng = engine(cfg, shape, gpu_memory_gb, training)
    tiny = cfg.model.path is None and cfg.model.build == "tiny"
    env_worker = {"runtime": ENV_WORKER_GB, "tokenizer": 0.0 if tiny else ENV_WORKER_BPE_GB}
    common = [RolePeak("env worker", env_worker, cfg.rollout.num_env_workers),
              RolePeak("ray system", {"runtime": RAY_SYSTEM_GB}), RolePeak("driver", {"runtime": DRIVER_GB})]
    sft = [sft_task(cfg, shape)] if training and cfg.sft.enabled else []
    build = driver(cfg, shape)
    roles = [*ranks, eng, *sft, build, *common[:2]]

    def host(rs: list[RolePeak]) -> float:
        """Resident at once: the roles' peaks, with the pages several of them map counted once."""
        rs = [r for r in rs if r.device == "host"]
        processes = sum(r.count * (2 if r.role == "engine" else 1) for r in rs if r.role != "ray system")
        return sum(r.total * r.count for r in rs) - SHARED_LIBS_GB * max(0, processes - 1)

    # Rank 0 and every engine map the same staging pages: count them once.
    shared = eng.parts.get("sync staging", 0.0) * eng.count if ranks and eng.device == "host" else 0.0
    node = max(host([*ranks, eng, *common]) - shared, host([*sft, *common]), build.total)
    notes = ["GPU memory unknown: the engines' GPU share is not predicted"] if g.gpus_per_worker and not gpu_memory_gb else []
    return MemoryPrediction(shape, roles, node, per_gpu(cfg, ranks, eng), notes)


def per_gpu(cfg: LabrlConfig, ranks: list[RolePeak], eng: RolePeak) -> dict[int, float]:
    """GPU index -> peak. Disaggregated: the ranks' GPUs, then each engine's tensor-parallel GPUs.
    Colocated: GPU i holds rank i and engine i; a sleeping engine (sleep_level > 0) frees its GPU
    while the trainer steps, so the peak is the larger of the two phases."""
    g = cfg.generation
    rank_gb = [(r.total, r) for r in ranks for _ in range(r.count) if r.device == "gpu"]
    eng_gb = eng.total if eng.device == "gpu" else None
    if cfg.placement.mode == "colocated" and rank_gb and eng_gb is not None:
        out = {}
        for i, (total, r) in enumerate(rank_gb):
            states = sum(v for k, v in r.parts.items() if k in ("weights", "grads", "optimizer"))
            awake = total + eng_gb if not g.sleep_level else max(total + GPU_CONTEXT_GB, states + eng_gb)
            out[i] = awake if i < g.num_workers else total
        return out
    gpus = [total for total, _ in rank_gb]
    if eng_gb is not None:
        gpus += [eng_gb] * (g.num_workers * g.tensor_parallel_size)
    return dict(enumerate(gpus))


def format_table(pred: MemoryPrediction) -> str:
    """Roles (GB each, largest parts first), then the node or per-GPU totals, for logs."""
    s = pred.shape
    lines = [f"memory model: {s.params / 1e6:.1f}M params ({s.layers} layers, hidden {s.hidden}, vocab {s.vocab})",
             f"{'role':<16} {'count':>5} {'GB each':>8}  breakdown (GB)"]
    for r in pred.roles:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r.parts.items(), key=lambda kv: -kv[1]) if v >= 0.005)
        lines.append(f"{r.role:<16} {r.count:>5} {r.total:>8.2f}  [{r.device}] {parts}")
    lines.append(f"{'node total':<16} {'':>5} {pred.node_total_gb:>8.2f}  host RAM at the peak phase")
    lines += [f"{f'GPU {i}':<16} {'':>5} {gb:>8.2f}" for i, gb in pred.per_gpu_gb.items()]
    return "\n".join(lines + [f"note: {n}" for n in pred.notes])
