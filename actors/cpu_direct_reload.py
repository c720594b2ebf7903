"""CPU backend: keep linear weights in plain (checkpoint-fused) layout so a sync is one copy.

Runs inside vLLM's worker process (called from the worker extension).

Why: after loading, vLLM's CPU backend repacks every linear weight into a oneDNN handle and drops
the plain tensor. Its in-place reload therefore re-creates each layer, loads, re-packs and copies
back: measured on this VM for a 100M model, 1.0 s of a 1.9 s reload was `create_onednn_mm_handler`
alone, plus fresh allocations that page-fault at ~0.5-1 GB/s. Converting each linear layer once to
a plain `weight` Parameter (with its original weight loader, so q/k/v and gate/up still fuse) and
`cpu_linear = F.linear` makes every later sync a direct `model.load_weights`: vLLM's loaders copy
each tensor straight into its final place, with no allocation and no repacking.

The cost is inference through `F.linear` instead of oneDNN's prepacked GEMM; the benchmark
(`benchmarks/weight_sync.py --gen`) reports tokens/s in both modes so the trade can be judged.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)


def convert_to_plain_linear(model: torch.nn.Module, vllm_config: Any) -> list[str]:
    """Give every unquantized linear layer back a plain weight, then load it from the checkpoint.

    Returns the converted module names. Must run before any weight update (version 0), because the
    values are re-read from the model directory on disk.
    """
    from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
    from vllm.model_executor.model_loader import get_model_loader
    from vllm.model_executor.model_loader.reload.layerwise import get_layerwise_info
    from vllm.model_executor.model_loader.reload.meta import materialize_meta_tensor
    from vllm.model_executor.model_loader.reload.sanitize import restore_layer_refs

    converted = []
    for name, module in model.named_modules():
        if isinstance(module, LinearBase) and isinstance(getattr(module, "quant_method", None),
                                                         UnquantizedLinearMethod):
            meta = get_layerwise_info(module).restore_metadata[0].get("weight")
            if meta is None:
                raise RuntimeError(f"no reload metadata for {name}.weight; cannot convert to plain weights")
            with torch.device("cpu"):
                weight = restore_layer_refs(materialize_meta_tensor(meta), module)
            delattr(module, "weight")
            module.register_parameter("weight", weight)
            module._cpu_skip_gemm_dispatch = True
            module.cpu_linear = torch.nn.functional.linear
            converted.append(name)
        elif hasattr(module, "cpu_linear"):
            # lm_head (tied or not) and embeddings: use the live weight, never a packed copy, so a
            # reload of the embedding is seen by the tied lm_head without re-processing.
            module.cpu_linear = torch.nn.functional.linear
    loader = get_model_loader(vllm_config.load_config)
    loaded = model.load_weights(loader.get_all_weights(vllm_config.model_config, model))
    missing = {n for n, _ in model.named_parameters()} - set(loaded or ())
    if missing:
        raise RuntimeError(f"plain-weight conversion: checkpoint did not fill {sorted(missing)[:5]}")
    logger.info("converted %d linear layers to plain weights for direct reloads", len(converted))
    return converted


def direct_load(model: torch.nn.Module, weights: Any) -> set[str]:
    """One copy per tensor into the live parameters (generation must be paused)."""
    with torch.no_grad():
        return set(model.load_weights(weights) or ())
