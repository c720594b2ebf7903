"""Cheap stand-ins for GenerationWorker (no vLLM) to test senders' and the router's failure paths."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import ray
import torch

from actors.types import GenerationOutput, SamplingSpec, WorkerUnhealthyError


@ray.remote(num_cpus=0)
class FakeWorker:
    def __init__(self, name: str, spec: dict, behaviour: str = "ok") -> None:
        self.name, self.spec, self.behaviour = name, spec, behaviour
        self.calls = 0

    async def describe(self) -> dict:
        return {"name": self.name, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "version": 0, "healthy": True, "weight_spec": self.spec, "optional_names": [],
                "tensor_parallel_size": 1}

    async def apply_update(self, transport, payload, timeout_s=300.0, version=None, background=False) -> dict:
        assert version is not None, "FakeWorker takes one-shot (shm) updates only"
        if self.behaviour == "hang":
            await asyncio.sleep(3600)
        if background:
            return {"version": version, "drain_s": 0.01, "background": True}
        return {"version": version, "pause_s": 0.0, "reload_s": 0.0}

    async def await_update(self, version: int) -> dict:
        """The reload a background `apply_update` left running; behaviour "reload-fails": its error."""
        if self.behaviour == "reload-fails":
            raise RuntimeError(f"{self.name}: reload to version {version} failed (test)")
        return {"version": version, "pause_s": 0.02, "reload_s": 0.01}

    async def generate(self, prompt_token_ids: list[int], spec: SamplingSpec) -> GenerationOutput:
        self.calls += 1
        if self.behaviour == "unhealthy":
            raise WorkerUnhealthyError(f"{self.name} is unhealthy: test")
        await asyncio.sleep(0.01)
        return GenerationOutput(token_ids=[1] * spec.max_tokens, logprobs=[-1.0] * spec.max_tokens,
                                finish_reason="length", policy_version=0)

    async def num_calls(self) -> int:
        return self.calls


class _RecordingEngine:
    """What a Receiver sees of vLLM (actors.vllm_extension.EngineWeights), recording the loads."""

    device, rank = torch.device("cpu"), 0

    def __init__(self) -> None:
        self.loaded: dict[str, torch.Tensor] = {}

    def begin(self) -> None:
        pass

    def load(self, weights) -> None:
        self.loaded.update((name, tensor.clone()) for name, tensor in weights)

    def finish(self) -> None:
        pass


@ray.remote(num_cpus=0)
class FakeBroadcastReceiver:
    """A GenerationWorker's update protocol over the real gloo receiver (BroadcastReceiver), without
    vLLM; with `die_at_bucket=k` the process exits when bucket k arrives, before posting its receive."""

    def __init__(self, name: str, spec: dict, die_at_bucket: int = -1) -> None:
        from actors.weight_sync.broadcast import BroadcastReceiver

        self.name, self.spec, self.die_at = name, spec, die_at_bucket
        self.receiver, self.engine, self.buckets = BroadcastReceiver(), _RecordingEngine(), 0

    def describe(self) -> dict:
        return {"name": self.name, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "version": 0, "healthy": True, "weight_spec": self.spec, "optional_names": [],
                "tensor_parallel_size": 1}

    def connect_transport(self, transport: str, setup: dict, timeout_s: float, touches_weights: bool = False):
        return [self.receiver.connect(self.engine, setup)]

    def begin_update(self, transport: str, version: int, setup, timeout_s: float) -> None:
        self.receiver.begin(self.engine, setup)

    def apply_update(self, transport: str, payload: dict, timeout_s: float, version=None) -> None:
        if self.buckets == self.die_at:
            os._exit(1)
        self.buckets += 1
        self.receiver.apply(self.engine, payload)

    def finish_update(self, version: int, timeout_s: float) -> dict:
        self.receiver.finish(self.engine)
        return {"version": version, "pause_s": 0.0}

    def abort_update(self, reason: str) -> None:
        pass

    def weights(self) -> dict:
        return self.engine.loaded


@ray.remote(num_cpus=0)
class FakeInplaceReceiver:
    """The shm_inplace side of a GenerationWorker without vLLM: weights in a shared file laid out
    by the spec; records the protocol calls it gets."""

    def __init__(self, name: str, spec: dict) -> None:
        from actors.weight_sync.buckets import BucketEntry
        from actors.weight_sync.shm import _create_segment

        self.name, self.spec, self.calls = name, spec, []
        self.layout, offset = [], 0
        for key, (shape, dtype) in spec.items():
            nbytes = 4 * int(torch.tensor(shape).prod())
            self.layout.append(BucketEntry(key, list(shape), dtype, offset, nbytes))
            offset += nbytes
        self.segment = _create_segment(f"/dev/shm/labrl-ws-{os.getpid()}-engine-fake", offset)
        self.segment.tensor.zero_()

    def describe(self) -> dict:
        return {"name": self.name, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "version": 0, "healthy": True, "weight_spec": self.spec, "optional_names": [],
                "tensor_parallel_size": 1}

    def connect_transport(self, transport: str, setup: dict, timeout_s: float, touches_weights: bool = False):
        self.calls.append(("connect", touches_weights))
        return [{"path": self.segment.path, "nbytes": self.segment.nbytes,
                 "entries": [e.to_wire() for e in self.layout]}]

    def begin_update(self, transport: str, version: int, setup, timeout_s: float) -> None:
        self.calls.append(("begin", version))

    def apply_update(self, transport: str, payload: dict, timeout_s: float, version=None) -> None:
        self.calls.append(("apply", sorted(e.name for e in payload["entries"])))

    def finish_update(self, version: int, timeout_s: float) -> dict:
        self.calls.append(("finish", version))
        return {"version": version, "pause_s": 0.0}

    def abort_update(self, reason: str) -> None:
        self.calls.append(("abort", reason))

    def state(self) -> tuple[list, dict]:
        from actors.weight_sync.buckets import unpack_bucket

        return self.calls, {k: t.clone() for k, t in unpack_bucket(self.segment.tensor, self.layout)}


def started(*handles, timeout: float = 180.0) -> None:
    """Wait until fake actors run: actor start-up on a loaded 2-core VM can take tens of seconds,
    and it is not what the tests time."""
    ray.get([h.describe.remote() for h in handles], timeout=timeout)


def dies_within(call: Callable[[], ray.ObjectRef], timeout_s: float) -> bool:
    """True once `call()` (an actor method's `.remote`) fails with RayActorError. `ray.kill` is
    asynchronous: a call sent just after it may still be served, so one answer proves nothing;
    answers until the deadline do."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(call(), timeout=timeout_s)
        except ray.exceptions.RayActorError:
            return True
        time.sleep(0.2)
    return False
