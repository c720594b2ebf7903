"""vLLM general plugin (entry point `vllm.general_plugins` in pyproject.toml): plain CPU weights.

vLLM runs every general plugin in each of its processes before it builds the model. This one does
nothing unless the process that starts the engine set `LABRL_CPU_PLAIN_WEIGHTS=1` (GenerationWorker
does, for CPU engines with `cpu_direct_reload`), so other vLLM users in the same environment are
untouched.

When active, vLLM's CPU backend keeps each 2-D linear weight (and the lm_head's) as a plain
Parameter used through `F.linear`, instead of repacking it into a oneDNN handle after loading
and dropping the plain tensor. A weight sync is then one `model.load_weights` copy into live
tensors (`actors.cpu_direct_reload`). The choice is made at load time, before vLLM traces the
model, so a compiled engine (`enforce_eager=False`) runs the same plain weights it is synced into.
"""

from __future__ import annotations

import os

PLAIN_WEIGHTS_ENV = "LABRL_CPU_PLAIN_WEIGHTS"


def installed() -> bool:
    """Whether vLLM can find this plugin: the entry point exists only where labrl is pip-installed
    (a `ray job submit --working-dir` upload alone puts the code on PYTHONPATH, not the entry point)."""
    from importlib.metadata import entry_points

    return any(ep.value == f"{__name__}:register" for ep in entry_points(group="vllm.general_plugins"))


def register() -> None:
    """Install the plain-weight dispatch when the engine's creator asked for it."""
    if os.environ.get(PLAIN_WEIGHTS_ENV) != "1":
        return
    import torch
    from vllm.model_executor.layers import utils

    packed_dispatch = utils.dispatch_cpu_unquantized_gemm
    if getattr(packed_dispatch, "labrl_plain", False):  # plugins may load twice in one process
        return

    def keep_plain_weight(layer: torch.nn.Module, remove_weight: bool) -> None:
        if layer.weight.ndim != 2:  # conv / MoE expert weights have kernels of their own
            packed_dispatch(layer, remove_weight)
            return
        # A Python function, as vLLM's own fallback uses: its compiled graphs read the callable's
        # closure, which a builtin such as F.linear does not have.
        layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, weight, bias)
        layer.labrl_plain_weight = True  # checked by actors.cpu_direct_reload.check_plain_weights

    keep_plain_weight.labrl_plain = True  # type: ignore[attr-defined]
    utils.dispatch_cpu_unquantized_gemm = keep_plain_weight
