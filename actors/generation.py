"""GenerationWorker: a Ray actor hosting one vLLM engine; token ids in, token ids + logprobs out.

Create it with `GenerationWorker.as_actor(EngineSpec.from_config(cfg, model_dir), name=..., num_cpus=1)`
(or `ray.remote(GenerationWorker).options(...).remote(spec, ...)`: it is an async actor), then
`ray.get(handle.ready.remote())` (builds the engine: 37-45 s on this 2-core VM when it is quiet,
up to 230 s under heavy load from other users).

Why vLLM's AsyncLLM and not a micro-batching queue over `LLM.generate`: each request joins the
running batch at the next engine step (continuous batching), so a short agent turn never waits for
the longest member of its batch, and ~128 concurrent `generate` calls from env workers need no
batching code here. Measured on this 2-core VM (tiny model, 128 x 64 tokens): AsyncLLM 3.4-3.9k
tokens/s, `LLM.generate` on the same batch 4.1-4.5k tokens/s; the ~15% per-step overhead is the
price of not having to form batches, and it shrinks as models grow. Benchmark (64 concurrent x 64
tokens, fp32, load ~10-20): 10M params 770 tokens/s, 100M 171, 500M 39.

Weight updates: one protocol for every transport, called by `actors.weight_sync` senders, not by
users: `connect_transport` once per sender, then `begin_update` -> `apply_update` (per bucket) ->
`finish_update` (`abort_update` when the sender gives up), or a one-shot `apply_update(...,
version=v)` carrying the whole update. What happens inside vLLM is the transport's `Receiver`
(actors/weight_sync/). The served version changes only after a successful reload; a reload that
fails after vLLM's weights were touched marks the worker unhealthy (generate raises
`WorkerUnhealthyError`) because its weights are then neither version.

Colocated mode (engine and trainer rank on one GPU): `sleep` / `wake_up` free and restore vLLM's
memory around the trainer's step (launch/run.py drives them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from pathlib import Path
from collections.abc import Callable
from typing import Any, get_args

import ray

from actors import vllm_plugin
from actors.core_board import engine_entry
from actors.gc_heap import freeze_startup_heap
from actors.generation_control import EngineGate, UpdateState, check_bucket, check_full_manifest, engine_payload
from actors.types import CPU_KV_BLOCK_SIZE, EngineSpec, GenerationOutput, PauseMode, SamplingSpec
from actors.process_memory import process_tree_peak_bytes
from actors.weight_sync.spec import read_weight_spec

logger = logging.getLogger(__name__)

REPO_ROOT = str(Path(__file__).resolve().parent.parent)
EXTENSION = "actors.vllm_extension.LabrlWorkerExtension"


class GenerationWorker:
    """See the module docstring. All public methods are async (Ray async actor)."""

    def __init__(self, spec: EngineSpec, name: str | None = None, cpu_direct_reload: bool = True) -> None:
        from models.loading import resolve_model_path

        self.engine_spec = spec
        self.generation = spec.generation
        self.model_path = resolve_model_path(spec.model_path)
        self.name = name or f"gen-{uuid.uuid4().hex[:6]}"
        self.weight_spec, self.optional = read_weight_spec(self.model_path)
        # vLLM's worker process must import actors.vllm_extension: it inherits this environment.
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if REPO_ROOT not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, *paths])
        # Weight reloads allocate fresh layer tensors every sync; on this VM first-touch 4 KiB page
        # faults run at ~0.5-1 GB/s, huge pages at ~3-4 GB/s (measured). PyTorch's CPU allocator
        # asks for transparent huge pages for big blocks when this is set (inherited by vLLM).
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
        self.cpu_direct_reload = cpu_direct_reload
        self.engine: Any = None
        self.busy_flag = engine_entry(self.name)
        self.gate = EngineGate(self.name, spec.pause_mode,
                               on_busy=self.busy_flag.set if self.busy_flag is not None else None)
        self.update = UpdateState(self.name)
        self.version = 0
        self.startup_s = 0.0
        self.engine_workers: list[dict[str, Any]] = []
        self.resubmitted = 0  # requests aborted by a weight update (pause_mode="abort") and rerun
        self.spanned_updates = 0  # outputs sampled partly before, partly after an in-flight update
        self.asleep: set[str] = set()  # vLLM memory tags released by sleep(): "weights", "kv_cache"
        self._weights_discarded = False  # by a level-2 sleep, until a weight update refills them
        self._start_lock = asyncio.Lock()
        self._update_lock = asyncio.Lock()
        self._reloading: asyncio.Task | None = None  # a one-shot reload left running (`background`)

    @classmethod
    def as_actor(cls, spec: EngineSpec, *, name: str | None = None, cpu_direct_reload: bool = True,
                 **ray_options: Any) -> Any:
        """Create the Ray actor; `ray_options` go to `.options()` (num_cpus, default 1; num_gpus,
        default 0; scheduling_strategy, ...)."""
        ray_options.setdefault("max_concurrency", 4096)
        ray_options.setdefault("num_cpus", 1)
        ray_options.setdefault("num_gpus", 0)
        return ray.remote(cls).options(**ray_options).remote(spec, name=name, cpu_direct_reload=cpu_direct_reload)

    # ---- lifecycle ----------------------------------------------------------------------------
    async def ready(self) -> int:
        """Build the engine if needed; return the served policy version."""
        async with self._start_lock:
            if self.engine is None:
                from vllm.platforms import current_platform

                engine = self._build_engine()
                self.engine_workers = await engine.collective_rpc("labrl_worker_info")
                if self.cpu_direct_reload and current_platform.is_cpu():
                    await engine.collective_rpc("labrl_prepare_direct_reload")
                self.engine = engine
                freeze_startup_heap(self.name)
        return self.version

    def _prepare_cpu_engine(self, in_process: bool) -> None:
        """Set what vLLM's engine process must inherit on CPU (it is spawned from this process)."""
        if in_process:
            # vLLM's default on CPU puts the model in a worker process of its own and has the engine
            # core busy-wait (sched_yield) for each step's result, pinning the worker to one core
            # and reserving the other for that loop. On a machine shared with a trainer rank that
            # spin is stolen from the trainer. Measured on this 2-core VM (30M model, 64 x 32 tokens,
            # one thread each, a 1-thread matmul beside it): vLLM 215-226 ms per decode step and the
            # matmul 55 GFLOP/s, against 193-201 ms and 64 GFLOP/s with the model in the engine core.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if self.cpu_direct_reload and not vllm_plugin.installed():
            logger.warning("%s: labrl's vLLM plugin is not installed here (`pip install -e .` on this node); "
                           "weight syncs fall back to vLLM's slower layer-wise reload", self.name)
            self.cpu_direct_reload = False
        if self.cpu_direct_reload:
            os.environ[vllm_plugin.PLAIN_WEIGHTS_ENV] = "1"  # actors/vllm_plugin.py: weights stay plain
            os.environ[vllm_plugin.PACKED_GEMM_ENV] = "1" if self.generation.cpu_gemm == "packed" else "0"
            # A cached compiled graph may have been traced over repacked weights (its key does not
            # know the plugin); on CPU vLLM failed to load its cache anyway (recompiled every start).
            os.environ["VLLM_DISABLE_COMPILE_CACHE"] = "1"

    def _build_engine(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        cfg, spec = self.generation, self.engine_spec
        start = time.perf_counter()
        is_cpu = current_platform.is_cpu()
        in_process = is_cpu and cfg.tensor_parallel_size == 1
        if is_cpu:
            self._prepare_cpu_engine(in_process)
        kv_bytes = int(cfg.kv_cache_gb * 2**30) if is_cpu else None
        block_size = cfg.kv_block_size or (CPU_KV_BLOCK_SIZE if is_cpu else None)
        args = AsyncEngineArgs(
            model=self.model_path, skip_tokenizer_init=True, max_model_len=cfg.max_model_len,
            dtype=spec.dtype, seed=spec.seed, enforce_eager=cfg.enforce_eager,
            tensor_parallel_size=cfg.tensor_parallel_size, gpu_memory_utilization=cfg.gpu_memory_utilization,
            kv_cache_memory_bytes=kv_bytes, block_size=block_size, worker_extension_cls=EXTENSION,
            distributed_executor_backend="uni" if in_process else None,
            enable_sleep_mode=cfg.sleep_level > 0 and current_platform.is_sleep_mode_available(),
            # The sampled token's logprob under the distribution it was sampled from (logits /
            # temperature; top-p 1): the trainer recomputes log_softmax(logits / temperature).
            logprobs_mode="processed_logprobs", disable_log_stats=True)
        engine = AsyncLLM.from_engine_args(args)
        self.startup_s = time.perf_counter() - start
        logger.info("%s: vLLM engine for %s ready in %.1f s", self.name, self.model_path, self.startup_s)
        return engine

    async def shutdown(self) -> None:
        """Stop the engine (and its worker processes) before the actor is killed."""
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None
        if self.busy_flag is not None:
            self.busy_flag.close()
            self.busy_flag = None

    async def describe(self) -> dict[str, Any]:
        """Identity and served weights, for senders' handshakes and error messages (builds the
        engine first if needed: a sender needs a serving worker anyway)."""
        await self.ready()
        return {"name": self.name, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "version": self.version, "healthy": self.update.healthy, "startup_s": self.startup_s,
                "weight_spec": self.weight_spec, "optional_names": self.optional,
                "tensor_parallel_size": self.generation.tensor_parallel_size,
                "gpu_uuids": [w["gpu_uuid"] for w in self.engine_workers if w.get("gpu_uuid")]}

    async def policy_version(self) -> int:
        """The version a request sent now is served by: after a reload left running (`background`)."""
        if self._reloading is not None and not self._reloading.done():
            await asyncio.wait({self._reloading})  # its error is `await_update`'s to report
        return self.version

    async def accept_version(self, version: int) -> None:
        """Let the next update carry `version` although it is not newer than the served one: the
        trainer was restored from a checkpoint (older), or a sync that failed on another engine is
        repeated (the same version again). An update still open has lost its sender (a dead trainer
        rank cannot abort it): it is aborted, which marks this engine unhealthy, to be replaced."""
        if self.update.open:
            await self.abort_update(f"its sender is gone; version {version} comes next")
        self.update.accepted = version

    async def ping(self) -> bool:
        """Answers while the actor lives (`actors.calls.alive`); does not build the engine."""
        return True

    async def health(self) -> dict[str, Any]:
        return {"name": self.name, "healthy": self.update.healthy, "reason": self.update.reason,
                "version": self.version, "in_flight": self.gate.in_flight, "resubmitted": self.resubmitted,
                "pause_mode": self.gate.mode, "asleep": sorted(self.asleep),
                "spanned_updates": self.spanned_updates, "peak_rss_gb": process_tree_peak_bytes() / 1e9}

    async def set_pause_mode(self, mode: PauseMode) -> None:
        """How a weight update treats requests already running:
        "wait": it waits for them (each output is from one version; the pause lasts as long as the
        longest running request). "abort": they are aborted and rerun from scratch after the update
        (short pause, wasted tokens; one version per output). "keep": they stay inside vLLM, paused
        in place with their KV cache, and continue on the new weights (no wasted work; tokens after
        the update attend to KV computed by the old weights). "recompute": as "keep", but their KV
        cache is recomputed under the new weights before they continue. With keep/recompute an
        output can span versions: `GenerationOutput.newest_policy_version` says so. Runs take
        sync.pause_mode (EngineSpec.pause_mode); tests switch modes on one engine with this."""
        if mode not in get_args(PauseMode):
            raise ValueError(f"pause_mode must be one of {get_args(PauseMode)}, got {mode!r}")
        self.gate.mode = mode

    # ---- generation ---------------------------------------------------------------------------
    async def generate(self, prompt_token_ids: list[int], spec: SamplingSpec) -> GenerationOutput:
        """Sample one completion. Calls made while a weight update runs wait for it (or, with
        pause_mode="abort", in-flight ones are aborted and transparently resubmitted), so every
        output comes from exactly one policy version."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        room = self.generation.max_model_len - len(prompt_token_ids)
        if not prompt_token_ids or room <= 0:
            raise ValueError(f"{self.name}: prompt of {len(prompt_token_ids)} tokens leaves no room to "
                             f"generate within max_model_len={self.generation.max_model_len}")
        params = SamplingParams(
            max_tokens=min(spec.max_tokens, room), min_tokens=min(spec.min_tokens, room),
            temperature=spec.temperature, top_p=spec.top_p,
            stop_token_ids=list(spec.stop_token_ids), seed=spec.seed, logprobs=0, detokenize=False,
            output_kind=RequestOutputKind.FINAL_ONLY)
        final, version, newest = await self._run(prompt_token_ids, params)
        out = final.outputs[0]
        token_ids = list(out.token_ids)
        logprobs = [float(step[tok].logprob) for step, tok in zip(out.logprobs, token_ids)]
        finish = "stop" if out.finish_reason == "stop" else "length"
        self.spanned_updates += newest != version
        return GenerationOutput(token_ids=token_ids, logprobs=logprobs, finish_reason=finish,
                                policy_version=version, newest_policy_version=newest,
                                cached_prompt_tokens=int(final.num_cached_tokens or 0))

    async def prompt_logprobs(self, token_ids: list[int]) -> list[float]:
        """Logprob of each token given its prefix under the served weights (first token: 0.0)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False,
                                output_kind=RequestOutputKind.FINAL_ONLY)
        final, *_ = await self._run(token_ids, params)
        values = [0.0]
        for tok, step in zip(token_ids[1:], final.prompt_logprobs[1:]):
            values.append(float(step[tok].logprob))
        return values

    async def _run(self, prompt_token_ids: list[int], params: Any) -> tuple[Any, int, int]:
        """The final output, the version served when it was admitted and the one served when it
        finished (equal unless an in-flight update ran meanwhile)."""
        if self.engine is None:
            await self.ready()
        while True:
            async with self.gate.request(self.update) as request_id:
                version = self.version
                final = None
                # Salted by version: a prompt's cached KV blocks serve only requests admitted under
                # the weights that computed them. A reload clears the cache, but not in pause_mode
                # "keep", whose running requests still hold their (old) blocks.
                prompt = {"prompt_token_ids": list(prompt_token_ids), "cache_salt": f"policy-v{version}"}
                async for item in self.engine.generate(prompt, params, request_id=request_id):
                    final = item
            if final is not None and final.finished and final.outputs[0].finish_reason != "abort":
                return final, version, self.version
            self.resubmitted += 1
            logger.debug("%s: request %s aborted by a weight update; resubmitting", self.name, request_id)

    # ---- pausing and weight updates -----------------------------------------------------------
    async def _reopen(self, weights_changed: bool) -> float:
        """Admit requests again; with new weights, stale KV goes first: cached prefixes always,
        and in pause_mode "recompute" the running requests' KV too (they are preempted and
        recomputed). A sleeping engine stays closed: `wake_up` reopens it."""
        if self.asleep:
            return 0.0
        if weights_changed and self.gate.held_in_engine != "keep":
            recompute = self.gate.held_in_engine == "recompute"
            try:
                await asyncio.wait_for(self.engine.reset_prefix_cache(reset_running_requests=recompute), 60.0)
            except Exception as err:  # noqa: BLE001 - stale cache must not serve silently
                self.update.mark_unhealthy(f"could not clear the prefix cache after a reload: {err}")
        return await self.gate.resume(self.engine)

    async def _pause_for_update(self, timeout_s: float) -> float:
        """Stop admitting requests and drain, abort or hold the admitted ones (pause mode); returns
        the drain time. A sleeping engine is already paused; its weights must be awake to load."""
        if "weights" in self.asleep:
            raise RuntimeError(f"{self.name}: its weights are asleep; call wake_up(['weights']) before a "
                               f"weight update (still serving version {self.version})")
        if self.asleep:
            return 0.0
        await self.ready()
        return await self.gate.pause(self.engine, timeout_s)

    async def connect_transport(self, transport: str, setup: Any, timeout_s: float = 300.0,
                                touches_weights: bool = False) -> list[Any]:
        """Once per sender: the transport's set-up in every vLLM worker process (join a broadcast
        group; shm_inplace: move the weights into shared memory); one result per process.
        `touches_weights`: generation pauses around it and a failure marks the worker unhealthy."""
        await self.ready()
        args = (self.engine, "labrl_connect", (transport, setup), timeout_s, f"{transport} connect")
        if not touches_weights:
            return await self.update.run(*args, fatal=False)
        async with self._update_lock:
            await self._pause_for_update(timeout_s)
            try:
                return await self.update.run(*args, fatal=True)
            finally:
                await self._reopen(weights_changed=False)

    async def begin_update(self, transport: str, version: int, setup: Any = None,
                           timeout_s: float = 300.0) -> None:
        """Step 1: pause (drain or hold requests by pause mode) and let the transport prepare vLLM."""
        async with self._update_lock:
            self.update.check_can_update(self.version, version)
            await self._pause_for_update(timeout_s)
            try:
                await self.update.run(self.engine, "labrl_begin", (transport, setup), timeout_s,
                                      f"begin update to version {version} ({transport})", fatal=True)
            except BaseException:
                await self._reopen(weights_changed=True)
                raise
            self.update.start(transport, version)

    async def apply_update(self, transport: str, payload: dict[str, Any], timeout_s: float = 300.0,
                           version: int | None = None, background: bool = False) -> Any:
        """Step 2, per bucket: check its entries (`payload["entries"]`, `BucketEntry`s) against the served spec,
        then load it; a failure is fatal (weights partly replaced). With `version`: a one-shot update, the payload
        the whole model; it is checked whole before generation pauses, and a refusal before any weight changed
        leaves the old version serving. `background` (one-shot only): return once generation is paused and
        drained; the reload goes on, requests wait at the closed gate, and `await_update` gives its result."""
        if version is not None:
            return await self._apply_whole(transport, payload, version, timeout_s, background)
        self.update.expect_open("apply_update", transport)
        entries = payload["entries"]
        problem = check_bucket(entries, self.weight_spec, self.optional)
        if problem:
            await self.abort_update(problem)
            raise RuntimeError(f"{self.name}: {problem}; worker marked unhealthy")
        await self.update.run(self.engine, "labrl_apply", (transport, engine_payload(payload)), timeout_s,
                              f"apply bucket ({transport})", fatal=True)
        self.update.loaded.update(e.name for e in entries)

    async def _apply_whole(self, transport: str, payload: dict[str, Any], version: int,
                           timeout_s: float, background: bool) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s

        def left() -> float:  # one deadline for all phases, so the sender's timeout stays meaningful
            return max(0.1, deadline - time.monotonic())

        await self._update_lock.acquire()  # released by the reload, which may outlive this call
        try:
            self.update.check_can_update(self.version, version)
            check_full_manifest(self.name, payload["entries"], self.weight_spec, self.optional)
            drain_s = await self._pause_for_update(left())
        except BaseException:
            self._update_lock.release()
            raise
        reload = self._reload_whole(transport, payload, version, left, drain_s)
        if not background:
            return await reload
        self._reloading = asyncio.create_task(reload)
        return {"version": version, "drain_s": drain_s, "background": True}

    async def _reload_whole(self, transport: str, payload: dict[str, Any], version: int,
                            left: Callable[[], float], drain_s: float) -> dict[str, Any]:
        """Reload the drained engine from `payload`, reopen it, release the update lock."""
        t0 = time.perf_counter()
        try:
            result = (await self.update.run(self.engine, "labrl_apply", (transport, engine_payload(payload)),
                                            left(), f"reload to version {version} ({transport})", fatal=True))[0]
            if result.get("refused"):  # failed before any weight was touched: not fatal
                raise RuntimeError(f"{self.name} refused the weight update (still serving version "
                                   f"{self.version}): {result['refused']}")
            self.version, self._weights_discarded = version, False
        finally:
            reload_rpc_s = time.perf_counter() - t0
            try:
                pause_s = await self._reopen(weights_changed=True)
            finally:
                self._update_lock.release()
        logger.info("%s: now serving version %d (paused %.3f s)", self.name, version, pause_s)
        return {"version": version, "pause_s": pause_s, "drain_s": drain_s, "reload_rpc_s": reload_rpc_s,
                "reload_s": result["reload_s"]}

    async def await_update(self, version: int) -> dict[str, Any]:
        """The result (or error) of the reload to `version` that `apply_update(..., background=True)` left."""
        task = self._reloading
        if task is None:
            raise RuntimeError(f"{self.name}: no reload was left running (serving version {self.version})")
        result = await asyncio.shield(task)
        if result["version"] != version:
            raise RuntimeError(f"{self.name}: the last reload was to version {result['version']}, not {version}")
        return result

    async def finish_update(self, version: int, timeout_s: float = 300.0) -> dict[str, Any]:
        """Step 3: let the transport finalize, check completeness, advance the version, resume."""
        self.update.expect_open("finish_update")
        missing = sorted(set(self.weight_spec) - self.update.loaded)
        try:
            await self.update.run(self.engine, "labrl_finish", (self.update.transport,), timeout_s,
                                  f"finish update to version {version}", fatal=True)
            if missing:
                self.update.mark_unhealthy(f"update to version {version} missed {len(missing)} parameters, "
                                           f"e.g. {missing[:3]}")
                raise RuntimeError(f"{self.name}: {self.update.reason}; worker marked unhealthy")
            self.version, self._weights_discarded = version, False
        finally:
            self.update.close()
            pause_s = await self._reopen(weights_changed=True)
        return {"version": version, "pause_s": pause_s}

    async def abort_update(self, reason: str) -> None:
        """The sender gave up mid-update: weights are partly replaced, so mark unhealthy."""
        if self.update.open:
            try:
                await self.update.run(self.engine, "labrl_finish", (self.update.transport,), 60.0, "abort update",
                                      fatal=True)
            except Exception:
                logger.exception("%s: finalize during abort failed", self.name)
            self.update.close()
            self.update.mark_unhealthy(f"update aborted mid-stream: {reason}")
            await self._reopen(weights_changed=True)

    # ---- colocated mode: give the GPU to the trainer between rollouts --------------------------
    async def sleep(self, level: int = 1, timeout_s: float = 300.0) -> dict[str, float]:
        """Drain admitted requests, then release vLLM's memory. Level 1 moves the weights to host
        memory and drops the KV cache; level 2 drops the weights too (cheaper: the weight sync after
        the trainer's step refills them anyway). Requests that arrive while asleep wait for
        `wake_up`. On CPU vLLM keeps its memory (it logs that it ignores sleep); the protocol is the
        same, so the orchestration is tested here."""
        if level not in (1, 2):
            raise ValueError(f"{self.name}: sleep level must be 1 or 2, got {level}")
        async with self._update_lock:
            if self.asleep:
                raise RuntimeError(f"{self.name} is already asleep ({sorted(self.asleep)})")
            self.update.check_healthy()
            await self.ready()
            drain_s = await self.gate.pause(self.engine, timeout_s, mode="wait")  # nothing stays inside
            free_before = await self._free_device_bytes()
            t0 = time.perf_counter()
            try:
                await asyncio.wait_for(self.engine.sleep(level), timeout_s)
            except BaseException as err:  # memory half released: never serve from it again
                self.update.mark_unhealthy(f"sleep(level={level}) failed: {type(err).__name__}: {err}")
                raise
            self.asleep = {"weights", "kv_cache"}
            self._weights_discarded = level == 2
            out = {"drain_s": drain_s, "sleep_s": time.perf_counter() - t0}
            if free_before is not None:  # GPU: what the trainer gained (None on CPU: no second RPC)
                out["freed_gb"] = (await self._free_device_bytes() - free_before) / 1e9
        return out

    async def _free_device_bytes(self) -> int | None:
        """Free GPU memory summed over the engine's devices; None on CPU."""
        free = [w["free_bytes"] for w in await self.engine.collective_rpc("labrl_worker_info")]
        return None if None in free else sum(free)

    async def wake_up(self, tags: list[str] | None = None, timeout_s: float = 300.0) -> dict[str, float]:
        """Restore `tags` (None: all). Colocated order: wake "weights", sync, then wake
        "kv_cache"; requests are admitted again once everything is back."""
        unknown = set(tags or ()) - {"weights", "kv_cache"}
        if unknown or not self.asleep:
            raise RuntimeError(f"{self.name}: cannot wake {tags} (unknown tags {sorted(unknown)}; "
                               f"asleep: {sorted(self.asleep)})")
        async with self._update_lock:
            t0 = time.perf_counter()
            await asyncio.wait_for(self.engine.wake_up(tags), timeout_s)
            self.asleep -= set(tags or self.asleep)
            paused_s = 0.0
            if not self.asleep:
                if self._weights_discarded:
                    self.update.mark_unhealthy("woke from a level-2 sleep without a weight update: its "
                                               "weights were discarded")
                paused_s = await self.gate.resume(self.engine)
        return {"wake_s": time.perf_counter() - t0, "paused_s": paused_s}
