"""`trainer.torch_compile`: the trained model's decoder layers compiled with torch.compile.

Only the layers' `forward` is compiled, not the modules' `__call__`: hooks on a layer (idle-core
lending, gradient checkpointing) stay in eager Python around the compiled code. Every layer of a
model has the same code and, with nn-module inlining, its parameters are graph inputs, so one
compiled graph per shape regime serves all layers.
"""

from __future__ import annotations

import torch


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a Hugging Face causal LM (modules named `*DecoderLayer`)."""
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def compile_decoder_layers(model: torch.nn.Module) -> int:
    """Compile every decoder layer's forward (dynamic shapes: packed micro-batches vary in length);
    returns how many layers."""
    # CPU kernels otherwise bake in the thread count seen at compile time; core lending changes it
    # between layers (trainers/core_lending.py).
    torch._inductor.config.cpp.dynamic_threads = True
    layers = decoder_layers(model)
    for layer in layers:
        layer.forward = torch.compile(layer.forward, dynamic=True)
    return len(layers)
