"""CPU backend: linear weights kept in plain (checkpoint-fused) layout so a sync is one copy.

Runs inside vLLM's engine process (called from the worker extension).

Why: by default vLLM's CPU backend repacks every linear weight into a oneDNN handle after loading
and drops the plain tensor. Its in-place reload therefore re-creates each layer, loads, re-packs
and copies back: measured on this VM for a 100M model, 1.0 s of a 1.9 s reload was
`create_onednn_mm_handler` alone, plus fresh allocations that page-fault at ~0.5-1 GB/s. With the
plain-weight plugin (`actors.vllm_plugin`, active at load time) every linear layer keeps a plain
`weight` Parameter with its original weight loader (q/k/v and gate/up still fuse), so each sync is
a direct `model.load_weights`: vLLM's loaders copy each tensor straight into its final place, with
no allocation and no repacking.

Inference still runs oneDNN's prepacked GEMM by default (`generation.cpu_gemm=packed`): the plugin
keeps a packed copy beside each plain weight and `actors.vllm_plugin.repack` rebuilds the copies
after every sync (0.04-0.08 s for 30M on this CPU), which is cheaper than vLLM's layer-wise reload
and leaves the loaders copying into the plain weights. With `cpu_gemm=plain` layers run `F.linear` on
the plain weights themselves (no copy, ~15% slower decoding at 30M; `benchmarks/README.md`).
"""

from __future__ import annotations

from typing import Any

import torch

from actors.vllm_plugin import PLAIN_WEIGHTS_ENV


def check_plain_weights(model: torch.nn.Module) -> int:
    """Number of layers computing through a plain weight; raises if any layer was repacked (the
    plugin did not run in this process, e.g. labrl is not installed so its entry point is missing)."""
    from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod

    plain, packed = 0, []
    for name, module in model.named_modules():
        dispatched = hasattr(module, "cpu_linear") or (
            isinstance(module, LinearBase) and isinstance(getattr(module, "quant_method", None),
                                                          UnquantizedLinearMethod))
        if not dispatched or getattr(module, "weight", None) is None or module.weight.ndim != 2:
            continue
        if getattr(module, "labrl_plain_weight", False) and module.weight.numel() > 0:
            plain += 1
        else:
            packed.append(name)
    if packed:
        raise RuntimeError(f"layers {packed[:5]} hold repacked CPU weights: vLLM did not run labrl's plain-weight "
                           f"plugin ({PLAIN_WEIGHTS_ENV}=1 and `pip install -e .` for its vllm.general_plugins "
                           f"entry point are both needed)")
    return plain


def direct_load(model: torch.nn.Module, weights: Any) -> set[str]:
    """One copy per tensor into the live parameters (generation must be paused)."""
    with torch.no_grad():
        return set(model.load_weights(weights) or ())
