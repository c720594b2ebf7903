"""Worker extension injected into vLLM's worker processes (`worker_extension_cls=` this class).

Everything that must run next to the model weights lives here and is reached through
`engine.collective_rpc("labrl_...")`. Only plain Python values cross that boundary (tensors did not
survive collective_rpc arguments on the CPU backend; bytes, lists and dicts do).

Reload paths. CPU (default): every linear layer is loaded with a plain weight (`actors.vllm_plugin`,
`actors.cpu_direct_reload`), so a sync is a direct `model.load_weights` (one copy per tensor, no
repacking). Otherwise (GPU, or `cpu_direct_reload=False`) vLLM's layer-wise in-place
reload is used: `model_runner.reload_weights` for the one-shot shm path, and the same lifecycle
split into begin / load bucket / finish calls for the streaming transports. After a layer-wise
reload, layers that share a weight (tied lm_head) are re-processed, see `refresh_tied_layers`.

This module is imported inside vLLM's worker process: the repository root must be on that
process's PYTHONPATH (GenerationWorker sets it before building the engine).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

logger = logging.getLogger(__name__)


def refresh_tied_layers(model) -> list[str]:
    """Re-run post-load processing of layers that share a weight with another layer.

    With tied embeddings vLLM's `lm_head.weight` *is* `embed_tokens.weight`. The in-place reload
    loads the embedding (whose storage lm_head shares, so the raw values are right) but sees no
    weights for lm_head and only puts its old tensors back; on the CPU backend lm_head's GEMM uses a
    weight packed at load time, so logits kept coming from the OLD embedding (measured: logprob
    errors of 1.6 nats after one perturbed sync). Re-processing the sharing layers re-packs them.
    """
    import torch

    owners: dict[int, list[tuple[str, object]]] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.nn.Parameter) and weight.numel() > 0:
            owners.setdefault(weight.data_ptr(), []).append((name, module))
    refreshed = []
    for modules in owners.values():
        if len(modules) < 2:
            continue
        for name, module in modules:
            method = getattr(module, "quant_method", None)
            if method is not None and hasattr(method, "process_weights_after_loading"):
                method.process_weights_after_loading(module)
                refreshed.append(name)
    return refreshed


class LabrlWorkerExtension:
    """Mixed into vLLM's Worker class; `self` is the vLLM worker (has model_runner, vllm_config)."""

    # ---- one-shot reload from shared memory (CPU) -------------------------------------------
    def labrl_prepare_direct_reload(self) -> int:
        """CPU only, once at start-up: check the weights were loaded plain, then sync by direct
        copies from now on. Returns the number of plain-weight layers."""
        from actors.cpu_direct_reload import check_plain_weights

        plain = check_plain_weights(self.model_runner.get_model())
        self._labrl_direct = True
        return plain

    def labrl_reload_shm(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Map the segments (failures here touch nothing: reported as `refused`), then reload."""
        from actors.weight_sync.shm import ShmMappings

        maps = getattr(self, "_labrl_shm", None)
        if maps is None:
            maps = self._labrl_shm = ShmMappings()
        try:
            staged = maps.weights(payload)
        except Exception as err:  # noqa: BLE001 - reported to the caller as a non-fatal refusal
            return {"refused": f"{type(err).__name__}: {err}", "pid": os.getpid()}
        from vllm.config import set_current_vllm_config

        start = time.perf_counter()
        model = self.model_runner.get_model()
        with set_current_vllm_config(self.vllm_config):
            if getattr(self, "_labrl_direct", False):
                from actors.cpu_direct_reload import direct_load

                direct_load(model, iter(staged))
            else:
                self.model_runner.reload_weights(weights_iterator=iter(staged))
                refresh_tied_layers(model)
        del staged
        aliased = self._labrl_shm.aliased(self.model_runner.get_model())
        if aliased:
            raise RuntimeError(f"after reload, model tensors alias the shared-memory staging area "
                               f"(a loader kept a view instead of copying): {aliased[:5]}")
        return {"reload_s": time.perf_counter() - start, "pid": os.getpid()}

    # ---- streaming reload (nccl, gloo, CUDA IPC) ---------------------------------------------
    def labrl_begin_update(self) -> None:
        """Put every layer back into its loadable (checkpoint) layout; loads are buffered per layer
        and each layer is re-processed as soon as all its weights have arrived. CPU engines with
        plain weights (labrl_prepare_direct_reload) need none of that: each bucket is copied in."""
        self._labrl_streaming = True
        if getattr(self, "_labrl_direct", False):
            return
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):
            initialize_layerwise_reload(self.model_runner.get_model())

    def labrl_finish_update(self) -> None:
        """Process layers still pending and drop caches derived from the old weights."""
        self._labrl_streaming = False
        if getattr(self, "_labrl_direct", False):
            return
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):
            finalize_layerwise_reload(self.model_runner.get_model(), self.vllm_config.model_config)
            refresh_tied_layers(self.model_runner.get_model())
        for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):
            fn = getattr(self.model_runner, reset, None)
            if callable(fn):
                fn()

    def _labrl_load(self, weights) -> None:
        from vllm.config import set_current_vllm_config

        if not getattr(self, "_labrl_streaming", False):
            raise RuntimeError("labrl_begin_update must be called before loading weight buckets")
        with set_current_vllm_config(self.vllm_config):
            self.model_runner.get_model().load_weights(weights)

    def labrl_group_init(self, info: dict[str, Any]) -> None:
        """Join the trainer's broadcast group (nccl: this worker's GPU; gloo: host memory)."""
        import torch

        from actors.weight_sync.broadcast import worker_join_group

        device = torch.device("cpu") if info["backend"] == "gloo" else self.device
        self._labrl_group = (worker_join_group(info, self.parallel_config.rank, device), device)

    def labrl_load_broadcast(self, bucket: dict[str, Any]) -> None:
        from actors.weight_sync.broadcast import worker_receive_bucket

        group, device = getattr(self, "_labrl_group", (None, None))
        self._labrl_load(worker_receive_bucket(group, bucket, device))

    def labrl_share_weights(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Move the weights into a shared file the trainer writes into (actors/weight_sync/inplace.py)."""
        if not getattr(self, "_labrl_direct", False):
            raise RuntimeError("shm_inplace needs a CPU engine with plain weights (cpu_direct_reload)")
        from vllm.config import set_current_vllm_config

        from actors.weight_sync.inplace import share_model_weights

        with set_current_vllm_config(self.vllm_config):
            path, nbytes, layout = share_model_weights(self.model_runner.get_model(), spec)
        return {"path": path, "nbytes": nbytes, "layout": layout}

    def labrl_load_ipc(self, bucket: dict[str, Any]) -> None:
        from actors.weight_sync.cuda_ipc import worker_open_bucket

        self._labrl_load(worker_open_bucket(bucket, self.device))

    # ---- introspection used by tests and health checks ---------------------------------------
    def labrl_worker_info(self) -> dict[str, Any]:
        import torch

        device = getattr(self, "device", None)
        uuid = free = None
        if isinstance(device, torch.device) and device.type == "cuda":
            uuid = str(torch.cuda.get_device_properties(device).uuid)
            free = int(torch.cuda.mem_get_info(device)[0])
        return {"pid": os.getpid(), "device": str(device or "cpu"), "gpu_uuid": uuid,
                "rank": int(self.parallel_config.rank), "free_bytes": free}
