"""Worker extension injected into vLLM's worker processes (`worker_extension_cls=` this class).

Everything that must run next to the model weights is reached through
`engine.collective_rpc("labrl_...")`. Only plain Python values cross that boundary (tensors did not
survive collective_rpc arguments on the CPU backend, nor do dataclasses; bytes, lists and dicts do),
so bucket entries travel as lists (`BucketEntry.to_wire`) and are rebuilt here.

Weight updates: `labrl_connect` / `labrl_begin` / `labrl_apply` / `labrl_finish` dispatch to the
transport's engine half (a `Receiver` from `actors.weight_sync.registry`, one per transport, kept in
this process), which loads weights through `EngineWeights`.

Reload paths. CPU (default): every linear layer is loaded with a plain weight (`actors.vllm_plugin`,
`actors.cpu_direct_reload`), so a sync is a direct `model.load_weights` (one copy per tensor, no
repacking). Otherwise (GPU, or `cpu_direct_reload=False`) vLLM's layer-wise in-place
reload is used: `model_runner.reload_weights` for a one-shot reload (shm), and the same lifecycle
split into begin / load bucket / finish calls for the streaming transports. After a layer-wise
reload, layers that share a weight (tied lm_head) are re-processed, see `refresh_tied_layers`.

This module is imported inside vLLM's worker process: the repository root must be on that
process's PYTHONPATH (GenerationWorker sets it before building the engine).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
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


class EngineWeights:
    """The served model as a transport's receiver sees it: where it lives and how to load into it.
    `direct`: CPU plain weights (labrl_prepare_direct_reload), loaded by direct copies."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.direct = False
        self.streaming = False

    @property
    def model(self) -> Any:
        return self.worker.model_runner.get_model()

    @property
    def device(self) -> Any:
        return self.worker.device

    @property
    def rank(self) -> int:
        """This process's rank within its engine (tensor-parallel shard)."""
        return int(self.worker.parallel_config.rank)

    def context(self) -> contextlib.AbstractContextManager:
        from vllm.config import set_current_vllm_config

        return set_current_vllm_config(self.worker.vllm_config)

    def reload(self, weights: Iterable[tuple[str, Any]]) -> None:
        """One-shot: load every served tensor (generation must be paused)."""
        with self.context():
            if self.direct:
                from actors.cpu_direct_reload import direct_load

                direct_load(self.model, iter(weights))
                self.weights_changed()
            else:
                self.worker.model_runner.reload_weights(weights_iterator=iter(weights))
                refresh_tied_layers(self.model)

    def weights_changed(self) -> None:
        """Direct updates wrote the plain weights in place: rebuild the packed copies that CPU
        layers compute through (`generation.cpu_gemm=packed`, actors/vllm_plugin.py)."""
        from actors.vllm_plugin import repack

        repack(self.model)

    def begin(self) -> None:
        """Put every layer back into its loadable (checkpoint) layout; loads are buffered per layer
        and each layer is re-processed as soon as all its weights have arrived. Plain CPU weights
        need none of that: each bucket is copied in."""
        self.streaming = True
        if self.direct:
            return
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        with self.context():
            initialize_layerwise_reload(self.model)

    def load(self, weights: Iterable[tuple[str, Any]]) -> None:
        """One bucket, between begin and finish."""
        if not self.streaming:
            raise RuntimeError("begin_update must come before loading weight buckets")
        with self.context():
            self.model.load_weights(weights)

    def finish(self) -> None:
        """Process layers still pending and drop caches derived from the old weights."""
        self.streaming = False
        if self.direct:
            self.weights_changed()
            return
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        with self.context():
            finalize_layerwise_reload(self.model, self.worker.vllm_config.model_config)
            refresh_tied_layers(self.model)
        for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):
            fn = getattr(self.worker.model_runner, reset, None)
            if callable(fn):
                fn()


class LabrlWorkerExtension:
    """Mixed into vLLM's Worker class; `self` is the vLLM worker (has model_runner, vllm_config)."""

    def _labrl_weights(self) -> EngineWeights:
        if getattr(self, "_labrl_engine_weights", None) is None:
            self._labrl_engine_weights = EngineWeights(self)
        return self._labrl_engine_weights

    def _labrl_receiver(self, transport: str) -> Any:
        receivers = getattr(self, "_labrl_receivers", None)
        if receivers is None:
            receivers = self._labrl_receivers = {}
        if transport not in receivers:
            from actors.weight_sync.registry import receiver_class

            receivers[transport] = receiver_class(transport)()
        return receivers[transport]

    def labrl_prepare_direct_reload(self) -> int:
        """CPU only, once at start-up: check the weights were loaded plain, then sync by direct
        copies from now on. Returns the number of plain-weight layers."""
        from actors.cpu_direct_reload import check_plain_weights

        plain = check_plain_weights(self.model_runner.get_model())
        self._labrl_weights().direct = True
        return plain

    # ---- weight updates: the transport's receiver does the work ------------------------------
    def labrl_connect(self, transport: str, setup: Any) -> Any:
        return self._labrl_receiver(transport).connect(self._labrl_weights(), setup)

    def labrl_begin(self, transport: str, setup: Any) -> None:
        self._labrl_receiver(transport).begin(self._labrl_weights(), setup)

    def labrl_apply(self, transport: str, payload: dict[str, Any]) -> Any:
        from actors.weight_sync.buckets import BucketEntry

        payload = {**payload, "entries": [BucketEntry.from_wire(w) for w in payload["entries"]]}
        return self._labrl_receiver(transport).apply(self._labrl_weights(), payload)

    def labrl_finish(self, transport: str) -> None:
        self._labrl_receiver(transport).finish(self._labrl_weights())

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
