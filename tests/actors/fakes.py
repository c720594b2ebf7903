"""Cheap stand-ins for GenerationWorker (no vLLM) to test senders' and the router's failure paths."""

from __future__ import annotations

import asyncio
import os

import ray
import torch

from actors.types import WorkerUnhealthyError
from actors.types import GenerationOutput, SamplingSpec


@ray.remote(num_cpus=0)
class FakeWorker:
    def __init__(self, name: str, spec: dict, behaviour: str = "ok") -> None:
        self.name, self.spec, self.behaviour = name, spec, behaviour
        self.calls = 0

    async def describe(self) -> dict:
        return {"name": self.name, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "version": 0, "healthy": True, "weight_spec": self.spec, "optional_names": [],
                "tensor_parallel_size": 1}

    async def update_weights(self, transport, payload, version, timeout_s=300.0) -> dict:
        if self.behaviour == "hang":
            await asyncio.sleep(3600)
        return {"version": version, "pause_s": 0.0, "reload_s": 0.0}

    async def generate(self, prompt_token_ids: list[int], spec: SamplingSpec) -> GenerationOutput:
        self.calls += 1
        if self.behaviour == "unhealthy":
            raise WorkerUnhealthyError(f"{self.name} is unhealthy: test")
        await asyncio.sleep(0.01)
        return GenerationOutput(token_ids=[1] * spec.max_tokens, logprobs=[-1.0] * spec.max_tokens,
                                finish_reason="length", policy_version=0)

    async def num_calls(self) -> int:
        return self.calls


@ray.remote(num_cpus=0)
class FakeBroadcastReceiver:
    """The streaming side of a GenerationWorker over a real gloo group, without vLLM; with
    `die_at_bucket=k` the process exits when bucket k arrives, before posting its receive."""

    def __init__(self, name: str, spec: dict, die_at_bucket: int = -1) -> None:
        self.name, self.spec, self.die_at = name, spec, die_at_bucket
        self.group, self.buckets, self.received = None, 0, {}

    def describe(self) -> dict:
        return {"name": self.name, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "version": 0, "healthy": True, "weight_spec": self.spec, "optional_names": [],
                "tensor_parallel_size": 1}

    def group_init(self, info: dict, timeout_s: float) -> None:
        import torch

        from actors.weight_sync.broadcast import worker_join_group

        self.group = worker_join_group(info, 0, torch.device("cpu"))

    def begin_update(self, version: int, timeout_s: float) -> None:
        pass

    def receive_bucket(self, transport: str, bucket: dict, timeout_s: float) -> None:
        import torch

        from actors.weight_sync.broadcast import worker_receive_bucket

        if self.buckets == self.die_at:
            os._exit(1)
        self.buckets += 1
        for name, tensor in worker_receive_bucket(self.group, bucket, torch.device("cpu")):
            self.received[name] = tensor.clone()

    def finish_update(self, version: int, timeout_s: float) -> dict:
        return {"version": version, "pause_s": 0.0}

    def abort_update(self, reason: str) -> None:
        pass

    def weights(self) -> dict:
        return self.received


@ray.remote(num_cpus=0)
class FakeInplaceReceiver:
    """The shm_inplace side of a GenerationWorker without vLLM: weights in a shared file laid out
    by the spec; records the protocol calls it gets."""

    def __init__(self, name: str, spec: dict) -> None:
        from actors.weight_sync.shm import _create_segment

        self.name, self.spec, self.calls = name, spec, []
        self.layout, offset = {}, 0
        for key, (shape, dtype) in spec.items():
            self.layout[key] = (offset, tuple(shape), dtype)
            offset += 4 * int(torch.tensor(shape).prod())
        self.segment = _create_segment(f"/dev/shm/labrl-ws-{os.getpid()}-engine-fake", offset)
        self.segment.tensor.zero_()

    def describe(self) -> dict:
        return {"name": self.name, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "version": 0, "healthy": True, "weight_spec": self.spec, "optional_names": [],
                "tensor_parallel_size": 1}

    def share_weights(self, timeout_s: float) -> dict:
        return {"path": self.segment.path, "nbytes": self.segment.nbytes, "layout": self.layout}

    def begin_inplace(self, version: int, timeout_s: float) -> None:
        self.calls.append(("begin", version))

    def finish_inplace(self, version: int, timeout_s: float) -> dict:
        self.calls.append(("finish", version))
        return {"version": version, "pause_s": 0.0}

    def abort_update(self, reason: str) -> None:
        self.calls.append(("abort", reason))

    def state(self) -> tuple[list, dict]:
        return self.calls, {k: self.segment.tensor[o:o + 4 * int(torch.tensor(s).prod())].view(torch.float32)
                            .view(s).clone() for k, (o, s, _) in self.layout.items()}


def started(*handles, timeout: float = 180.0) -> None:
    """Wait until fake actors run: actor start-up on a loaded 2-core VM can take tens of seconds,
    and it is not what the tests time."""
    ray.get([h.describe.remote() for h in handles], timeout=timeout)
