"""Weight-sync and router logic without vLLM: buckets, spec, and failure paths with fake workers."""

from __future__ import annotations

import asyncio
import pickle
import time

import pytest
import ray
import torch

from actors.generation_control import check_bucket, check_full_manifest
from actors.router import GenerationRouter, NoWorkerAvailableError
from actors.types import SamplingSpec
from actors.weight_sync import WeightSyncError, make_sender
from actors.weight_sync.buckets import BucketEntry, pack_buckets, unpack_bucket
from actors.weight_sync.spec import read_weight_spec
from tests.actors.fakes import FakeWorker, dies_within, started

SPEC = {"a.weight": ((4, 4), "float32"), "b.bias": ((4,), "float32")}


def tensors():
    return [("a.weight", torch.arange(16.0).view(4, 4)), ("b.bias", torch.ones(4))]


def test_pack_unpack_roundtrip_multiple_buckets_and_dtypes():
    src = [("x", torch.randn(10, 3).t()),  # non-contiguous
           ("y", torch.arange(7, dtype=torch.int64)),
           ("z", torch.randn(300, dtype=torch.bfloat16)),  # bigger than a bucket: gets its own
           ("w", torch.randn(5))]
    buffers, manifests = {}, {}

    def get_buffer(i, n):
        buffers[i] = torch.zeros(n, dtype=torch.uint8)
        return buffers[i]

    num, total = pack_buckets(src, 128, get_buffer, lambda i, buf, entries: manifests.__setitem__(i, entries))
    assert num == len(manifests) >= 3
    assert total == sum(t.numel() * t.element_size() for _, t in src)
    got = dict(kv for i in range(num) for kv in unpack_bucket(buffers[i], manifests[i]))
    for name, t in src:
        assert got[name].dtype == t.dtype and torch.equal(got[name], t)


def test_buckets_keep_their_size_after_an_oversize_tensor():
    """A sender reuses one growing buffer; after a big tensor, buckets must not grow to its size."""
    src = [("big", torch.zeros(1000, dtype=torch.uint8))] + [(f"t{i}", torch.zeros(40, dtype=torch.uint8))
                                                            for i in range(10)]
    buffer: list[torch.Tensor] = []
    used: list[int] = []

    def get_buffer(i, n):
        if not buffer or buffer[0].numel() < n:
            buffer[:] = [torch.zeros(n, dtype=torch.uint8)]
        return buffer[0]

    num, _ = pack_buckets(src, 128, get_buffer, lambda i, buf, entries: used.append(entries[-1].offset + entries[-1].nbytes))
    assert used[0] == 1000 and all(u <= 128 for u in used[1:]) and num == len(used) == 1 + 5


def test_bucket_entries_survive_the_engine_boundary_and_are_checked():
    """Entries cross vLLM's collective_rpc as plain lists and come back equal; the worker's checks
    name a misshapen, duplicated or wrongly sized entry, and a manifest missing a served name."""
    entry = BucketEntry("a.weight", [4, 4], "float32", 128, 64, bucket=2)
    assert BucketEntry.from_wire(entry.to_wire()) == entry and isinstance(entry.to_wire(), list)
    bias = BucketEntry("b.bias", [4], "float32", 0, 16)
    assert check_bucket([entry, bias], SPEC, []) is None
    assert "shape (3,)" in check_bucket([BucketEntry("b.bias", [3], "float32", 0, 12)], SPEC, [])
    assert "appears twice" in check_bucket([bias, bias], SPEC, [])
    assert "8 bytes do not match" in check_bucket([BucketEntry("b.bias", [4], "float32", 0, 8)], SPEC, [])
    with pytest.raises(ValueError, match=r"w refused .*1 served parameter\(s\) missing, e.g. \['a.weight'\]"):
        check_full_manifest("w", [bias], SPEC, [])


def test_weight_spec_of_tied_tiny_model(tiny_model_dir):
    spec, optional = read_weight_spec(tiny_model_dir)
    assert "model.embed_tokens.weight" in spec and "lm_head.weight" not in spec
    assert optional == ["lm_head.weight"]
    assert spec["model.norm.weight"][1] == "float32"


def test_sender_timeout_names_the_hung_worker(ray_local):
    hung = FakeWorker.remote("hung-one", SPEC, behaviour="hang")
    started(hung)
    sender = make_sender("shm", [hung], bucket_bytes=1 << 20, timeout_s=1.0)
    start = time.perf_counter()
    with pytest.raises(WeightSyncError, match=r"worker\[0\].*hung-one.*no answer within .* apply_update"):
        sender.send(tensors(), version=1)
    assert time.perf_counter() - start < 10
    sender.close()
    ray.kill(hung)


def test_sender_to_killed_worker_and_dead_at_handshake(ray_local):
    ok = FakeWorker.remote("fine", SPEC)
    victim = FakeWorker.remote("victim", SPEC)
    started(ok, victim)
    sender = make_sender("shm", [ok, victim], bucket_bytes=1 << 20, timeout_s=30.0)
    assert sender.send(tensors(), version=1).num_buckets == 1
    ray.kill(victim)
    assert dies_within(victim.num_calls.remote, timeout_s=30)  # the kill is asynchronous
    with pytest.raises(WeightSyncError, match=r"(?s)1 of 2.*worker\[1\].*victim.*died"):
        sender.send(tensors(), version=2)
    sender.close()
    with pytest.raises(WeightSyncError, match=r"worker\[1\].*died during weight sync describe"):
        make_sender("shm", [ok, victim], bucket_bytes=1 << 20, timeout_s=10.0)
    ray.kill(ok)



def test_a_background_reload_is_collected_and_its_failure_raised_by_the_next_send(ray_local):
    """`background_reload`: a send returns after the drain; the next one waits for that reload first,
    reports its pause, and raises its failure naming the worker and the version."""
    ok, failing = FakeWorker.remote("fine", SPEC), FakeWorker.remote("flaky", SPEC, behaviour="reload-fails")
    started(ok, failing)
    sender = make_sender("shm", [ok], bucket_bytes=1 << 20, timeout_s=30.0, background_reload=True)
    assert sender.send(tensors(), version=1).generation_pause_s == pytest.approx(0.01)  # the drain only
    assert sender.send(tensors(), version=2).generation_pause_s == pytest.approx(0.02)  # version 1's reload
    assert [r["version"] for r in sender.settle().values()] == [2]
    sender.close()
    sender = make_sender("shm", [failing], bucket_bytes=1 << 20, timeout_s=30.0, background_reload=True)
    sender.send(tensors(), version=1)
    with pytest.raises(WeightSyncError, match=r"worker\[0\].*flaky.*reload to version 1 \(left running"):
        sender.send(tensors(), version=2)
    sender.close()
    ray.kill(ok)
    ray.kill(failing)

def test_gloo_broadcast_delivers_and_a_receiver_killed_mid_stream_raises_in_time(ray_local):
    """Two receivers in one gloo group: a sync delivers every tensor exactly; then one dies when
    its second bucket arrives, and the sender raises within the timeout, naming it."""
    from tests.actors.fakes import FakeBroadcastReceiver

    named = [(f"layer{i}.weight", torch.randn(128, 128)) for i in range(4)]  # 64 KiB each: a bucket each
    spec = {name: (tuple(t.shape), "float32") for name, t in named}
    ok = FakeBroadcastReceiver.remote("steady", spec)
    victim = FakeBroadcastReceiver.remote("victim", spec, die_at_bucket=len(named) + 1)  # 2nd of sync 2
    started(ok, victim)
    sender = make_sender("gloo", [ok, victim], bucket_bytes=64 << 10, timeout_s=20.0)
    stats = sender.send(named, version=1)
    assert stats.num_buckets == len(named)
    got = ray.get(ok.weights.remote())
    assert all(torch.equal(got[name], t) for name, t in named)
    start = time.perf_counter()
    with pytest.raises(WeightSyncError, match=r"(?s)worker\[1\].*victim.*died"):
        sender.send(named, version=2)
    assert time.perf_counter() - start < 25
    sender.close()
    ray.kill(ok)


def test_inplace_writes_every_tensor_and_a_bad_one_mid_stream_aborts(ray_local):
    """shm_inplace: the sender writes each tensor to its place in the engine's file between
    begin and finish; a bad tensor after the first writes makes it tell the engine to abort."""
    from tests.actors.fakes import FakeInplaceReceiver

    named = [(f"layer{i}.weight", torch.randn(8, 8)) for i in range(3)]
    spec = {name: (tuple(t.shape), "float32") for name, t in named}
    engine = FakeInplaceReceiver.remote("engine", spec)
    started(engine)
    sender = make_sender("shm_inplace", [engine], bucket_bytes=1 << 20, timeout_s=20.0)
    assert sender.send(named, version=1).bytes == 3 * 8 * 8 * 4
    calls, weights = ray.get(engine.state.remote())
    assert calls == [("connect", True), ("begin", 1), ("apply", sorted(spec)), ("finish", 1)]
    assert all(torch.equal(weights[n], t) for n, t in named)
    bad = [named[0], ("layer1.weight", torch.zeros(4, 8)), named[2]]
    with pytest.raises(WeightSyncError, match=r"(?s)failed after the engines were paused.*unhealthy.*layer1"):
        sender.send(bad, version=2)
    calls, _ = ray.get(engine.state.remote())
    assert [c[0] for c in calls[4:]] == ["begin", "abort"]
    sender.close()
    ray.kill(engine)


def test_router_balances_and_fails_over(ray_local):
    a, b = FakeWorker.remote("a", SPEC), FakeWorker.remote("b", SPEC)
    dead, sick = FakeWorker.remote("dead", SPEC), FakeWorker.remote("sick", SPEC, behaviour="unhealthy")
    started(a, b, dead, sick)
    ray.kill(dead)
    router = pickle.loads(pickle.dumps(GenerationRouter([dead, sick, a, b])))

    async def many():
        return await asyncio.gather(*[router.generate([1, 2], SamplingSpec(max_tokens=3)) for _ in range(40)])

    outs = asyncio.run(many())
    assert all(len(o.token_ids) == 3 for o in outs)
    calls_a, calls_b = ray.get([a.num_calls.remote(), b.num_calls.remote()])
    assert calls_a + calls_b == 40 and min(calls_a, calls_b) >= 10
    router.set_workers([dead])
    # the message names every worker this router gave up on, and why
    dead_id, sick_id = dead._actor_id.hex()[:12], sick._actor_id.hex()[:12]
    with pytest.raises(NoWorkerAvailableError, match=(rf"(?s)^no GenerationWorker left(?=.*{dead_id}: )"
                                                      rf"(?=.*{sick_id}: [^;]*WorkerUnhealthyError)")):
        asyncio.run(router.generate([1], SamplingSpec(max_tokens=1)))
    for h in (a, b, sick):
        ray.kill(h)
