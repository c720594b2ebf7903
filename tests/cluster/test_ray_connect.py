"""`connect(None, ...)` starts labrl's own Ray instance even when this machine has a `ray start`
cluster on record, live or dead (Ray's own `ray.init()` would join it, or retry a dead one's GCS for
~14 minutes); joining an address where nothing listens fails in seconds, naming the address.

The stale cluster is private: its own ports and temp dir (`<tmp>/ray`, which the connecting
process sees as Ray's default through RAY_TMPDIR), so neither the test nor its subject can touch
another Ray on the machine; `ray stop` is never run. `connect` runs in a subprocess so this pytest
process' own Ray (if another test module started one) is untouched.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actors.calls import free_port
from cluster.ray_cluster import ephemeral_run_dir_warning
from tests.cluster.ray_procs import RAY, ROOT, PrivateHead, kill_under, processes_under, ray_env

pytestmark = pytest.mark.skipif(not Path(RAY).exists(), reason="ray CLI not installed beside this Python")

# Prints what Ray's default `ray.init()` would join (without joining), then what `connect` did.
CONNECT = """
import json, sys, time
from ray._private.services import canonicalize_bootstrap_address
default_target = canonicalize_bootstrap_address(None)
import ray
from cluster.ray_cluster import connect
start = time.monotonic()
try:
    connect({address!r}, 1, 1, timeout_s={timeout_s})
except Exception as err:
    print(json.dumps({{"default_target": default_target, "error": type(err).__name__, "message": str(err),
                      "seconds": time.monotonic() - start}}))
    sys.exit(0)
ctx = ray.get_runtime_context()
print(json.dumps({{"default_target": default_target, "gcs": ctx.gcs_address, "session": ctx.get_session_name(),
                  "nodes": len([n for n in ray.nodes() if n["Alive"]]), "seconds": time.monotonic() - start}}))
ray.shutdown()
"""


def _connect(env: dict[str, str], address: str | None, timeout_s: float = 120) -> dict:
    code = CONNECT.format(address=address, timeout_s=timeout_s)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=timeout_s + 90)
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and lines, f"connect subprocess failed ({out.returncode}):\n{out.stderr[-4000:]}"
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def stale_head():
    head = PrivateHead()
    try:
        head.start()
        yield head
    finally:
        head.stop()


def _port(address: str) -> str:
    """Ray rewrites 127.0.0.1 to the node's IP; the port identifies the GCS on this machine."""
    return address.rsplit(":", 1)[1]


def _session_of(head: PrivateHead) -> str:
    return (head.temp_dir / "session_latest").resolve().name


def test_a_live_ray_start_cluster_is_not_joined(stale_head):
    if stale_head.proc.poll() is not None:
        pytest.fail("the private `ray start` head died before this test")
    head_session = _session_of(stale_head)
    result = _connect(stale_head.env(), None)
    assert _port(result["default_target"]) == _port(stale_head.gcs)  # Ray's default would join it
    assert "error" not in result, result
    assert _port(result["gcs"]) != _port(stale_head.gcs)
    assert result["session"] != head_session
    assert result["nodes"] == 1  # its own single node, not the head's cluster
    # The stale head is untouched and still serves; the subject's own instance is gone.
    assert stale_head.proc.poll() is None
    assert not processes_under(stale_head.temp_dir / result["session"])


def test_b_dead_cluster_on_record_is_not_joined_and_joining_it_fails_fast(stale_head):
    stale_head.kill()  # SIGKILL: no `ray stop`, so the address record still names the dead GCS
    assert _port((stale_head.temp_dir / "ray_current_cluster").read_text().strip()) == _port(stale_head.gcs)
    try:
        result = _connect(stale_head.env(), None)
        assert _port(result["default_target"]) == _port(stale_head.gcs)  # Ray's default: the dead GCS
        assert "error" not in result, result
        assert _port(result["gcs"]) != _port(stale_head.gcs)
        assert result["seconds"] < 100, f"local start took {result['seconds']:.0f} s"

        # Joining explicitly: by address, and "auto" (which reads the dead record).
        for address in (stale_head.gcs, "auto"):
            start = time.monotonic()
            failed = _connect(stale_head.env(), address, timeout_s=60)
            assert failed.get("error") == "ClusterConnectError", failed
            assert _port(stale_head.gcs) in failed["message"]  # names the address tried
            assert "ray start --head" in failed["message"]  # and what to do
            assert failed["seconds"] < 15 and time.monotonic() - start < 60, failed
    finally:
        kill_under(stale_head.temp_dir)


def test_c_join_where_nothing_listens_fails_within_the_timeout_naming_the_address():
    address = f"127.0.0.1:{free_port()}"
    failed = _connect(ray_env(), address, timeout_s=30)
    assert failed.get("error") == "ClusterConnectError", failed
    assert _port(address) in failed["message"] and "cluster.address" in failed["message"]
    assert failed["seconds"] < 15, failed


def test_d_join_of_a_gcs_that_never_answers_ends_at_the_deadline_naming_it():
    """A port that accepts TCP but never speaks (a wedged GCS, a wrong service): the probe passes,
    ray.init would retry for ~14 minutes; the deadline ends it. Ray blocks in native calls for up
    to ~40 s at a time, so the error comes at the first return after the deadline."""
    with socket.socket() as mute:
        mute.bind(("0.0.0.0", 0))
        mute.listen(64)  # the kernel accepts connections; nobody ever reads them
        address = f"127.0.0.1:{mute.getsockname()[1]}"
        failed = _connect(ray_env(), address, timeout_s=5)
    assert failed.get("error") == "ClusterConnectError", failed
    assert f"cluster.address='{address}'" in failed["message"] and "within 5 s" in failed["message"]
    assert failed["seconds"] < 60, failed


# ---- the run directory of a `ray job submit --working-dir` job ---------------------------------
JOB_CWD = "ray/session_2026-11-27_19-10-03_314050_27806/runtime_resources/working_dir_files/_ray_pkg_0fdd2c02"


def test_a_run_dir_in_rays_job_working_dir_warns_unless_runs_root_was_chosen(tmp_path, monkeypatch):
    job_dir = tmp_path / JOB_CWD  # the layout a real job's cwd has (test_job_submit checks a live one)
    job_dir.mkdir(parents=True)
    monkeypatch.chdir(job_dir)
    warning = ephemeral_run_dir_warning(Path("runs") / "default-20261127", runs_root_explicit=False)
    assert warning is not None
    assert str(tmp_path / JOB_CWD.split("/working_dir_files")[0]) in warning  # names Ray's directory
    assert "deletes" in warning and "logging.runs_root" in warning  # why, and what to do
    assert ephemeral_run_dir_warning(job_dir / "runs" / "x", runs_root_explicit=True) is None


def test_a_run_dir_elsewhere_does_not_warn(tmp_path):
    assert ephemeral_run_dir_warning(tmp_path / "runs" / "x", runs_root_explicit=False) is None
    # a Ray session dir alone (logs, not a job's working copy) is not the job's working directory
    assert ephemeral_run_dir_warning(tmp_path / "ray/session_latest/logs/x", runs_root_explicit=False) is None
