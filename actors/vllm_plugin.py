"""vLLM general plugin (entry point `vllm.general_plugins` in pyproject.toml): plain CPU weights.

vLLM runs every general plugin in each of its processes before it builds the model. This one does
nothing unless the process that starts the engine set `LABRL_CPU_PLAIN_WEIGHTS=1` (GenerationWorker
does, for CPU engines with `cpu_direct_reload`), so other vLLM users in the same environment are
untouched.

When active, vLLM's CPU backend keeps each 2-D linear weight (and the lm_head's) as a plain
Parameter with its weight loader, instead of repacking it into a oneDNN handle after loading and
dropping the plain tensor. A weight sync is then one `model.load_weights` copy into live tensors
(`actors.cpu_direct_reload`). The choice is made at load time, before vLLM traces the model, so a
compiled engine (`enforce_eager=False`) runs the same weights it is synced into.

How a layer computes (`LABRL_CPU_PACKED_GEMM`, from `generation.cpu_gemm`):
- "1" (packed): through a oneDNN copy of the plain weight, built here and rebuilt by `repack` after
  every sync. `F.linear` on an unpacked weight has MKL pack the weight again inside every call,
  which at decode batch sizes costs as much as a fifth of the GEMM (64 x 512 by the 30M model's four
  matrices, 1 thread: 3.0 ms a layer packed against 3.7 ms). Rebuilding the copies costs a weight
  copy per sync (0.08 s for 30M) and the copy's memory.
- otherwise (plain): `F.linear` on the plain weight itself; nothing to rebuild, no second copy.
"""

from __future__ import annotations

import os
from typing import Any

PLAIN_WEIGHTS_ENV = "LABRL_CPU_PLAIN_WEIGHTS"
PACKED_GEMM_ENV = "LABRL_CPU_PACKED_GEMM"
ONEDNN_CACHE = 32  # oneDNN primitives kept per layer (one per input row count seen), as vLLM's own


def installed() -> bool:
    """Whether vLLM can find this plugin: the entry point exists only where labrl is pip-installed
    (a `ray job submit --working-dir` upload alone puts the code on PYTHONPATH, not the entry point)."""
    from importlib.metadata import entry_points

    return any(ep.value == f"{__name__}:register" for ep in entry_points(group="vllm.general_plugins"))


def packing_available() -> bool:
    """Whether this vLLM build has its oneDNN GEMM kernels (x86 CPU builds do)."""
    import torch
    import vllm._custom_ops  # noqa: F401 - loads vLLM's kernel library into torch.ops._C

    return hasattr(torch.ops._C, "create_onednn_mm_handler")


def register() -> None:
    """Install the plain-weight dispatch when the engine's creator asked for it."""
    if os.environ.get(PLAIN_WEIGHTS_ENV) != "1":
        return
    import torch
    from vllm.model_executor.layers import utils

    packed_dispatch = utils.dispatch_cpu_unquantized_gemm
    if getattr(packed_dispatch, "labrl_plain", False):  # plugins may load twice in one process
        return
    packed = os.environ.get(PACKED_GEMM_ENV) == "1" and packing_available()

    def keep_plain_weight(layer: torch.nn.Module, remove_weight: bool) -> None:
        if layer.weight.ndim != 2:  # conv / MoE expert weights have kernels of their own
            packed_dispatch(layer, remove_weight)
            return
        layer.labrl_plain_weight = True  # checked by actors.cpu_direct_reload.check_plain_weights
        if packed:
            from vllm import _custom_ops as ops

            handler = layer.labrl_packed_gemm = ops.create_onednn_mm(layer.weight.t(), ONEDNN_CACHE)
            layer.cpu_linear = lambda x, weight, bias: ops.onednn_mm(handler, x, bias)
            return
        # A Python function, as vLLM's own fallback uses: its compiled graphs read the callable's
        # closure, which a builtin such as F.linear does not have.
        layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, weight, bias)

    keep_plain_weight.labrl_plain = True  # type: ignore[attr-defined]
    utils.dispatch_cpu_unquantized_gemm = keep_plain_weight


def repack(model: Any) -> int:
    """Rebuild every packed copy from its (just synced) plain weight; returns how many. The new
    oneDNN handle goes into the same handler tensor, which the layer's closure (and a compiled
    graph, which reads it as a tensor) looks up on every call, and the old one is released."""
    import torch

    count = 0
    for module in model.modules():
        handler = getattr(module, "labrl_packed_gemm", None)
        if handler is None:
            continue
        old = int(handler.handler_tensor.item())
        handler.handler_tensor.fill_(torch.ops._C.create_onednn_mm_handler(module.weight.t(), ONEDNN_CACHE))
        torch.ops._C.release_dnnl_matmul_handler(old)
        count += 1
    return count
