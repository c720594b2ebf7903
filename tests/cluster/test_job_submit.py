"""Multi-node on one machine: a Ray head plus a second raylet (`ray start` on 127.0.0.1), then
`ray job submit --working-dir .` of a 2-step training run; the job must SUCCEED, write its metrics,
and have run actors on both nodes.

The cluster is isolated from anything else on the machine: its own ports (all chosen free), its
own temp dir, token auth off, RAY_ADDRESS unset. Each `ray start --block` runs in its own process
session, so teardown stops exactly these processes (SIGKILL to each session and to whatever runs under the
cluster's temp dir) and never runs `ray stop`, which would stop every Ray on the machine.

Node sizes make the layout deterministic: the head has 2 CPUs (trainer rank + vLLM engine, which
the shm weight sync needs on one node), node2 has 1 CPU and the `node2` resource that
`rollout.env_worker_resource=node2` pins the env workers to.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from actors.calls import free_port
from tests.cluster.ray_procs import BIN, RAY, ROOT, PrivateHead, kill_under, node_ports

JOB_TIMEOUT_S = 1500
OVERRIDES = ["sft.num_demos=32", "sft.steps=5", "grpo.num_steps=2", "grpo.batch_size=8", "grpo.group_size=4",
             "eval.num_tasks=4", "env.num_train_tasks=32", "env.num_heldout_tasks=4",
             "logging.progress_bar=false", "cluster.address=auto", "eval.every_steps=1"]

pytestmark = pytest.mark.skipif(not Path(RAY).exists(), reason="ray CLI not installed beside this Python")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_RUNTIME_ENV_IGNORE_GITIGNORE")}
    env["RAY_AUTH_MODE"] = "disabled"  # a private localhost cluster; tokens in ~/.ray belong to others
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the job's `python` is this venv's
    env["RAY_raylet_start_wait_time_s"] = "300"  # a loaded 2-core machine registers raylets slowly
    return env


def _run(args: list[str], timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=_env(),
                          check=check)


class TwoNodeCluster:
    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="lrl", dir="/tmp"))  # short: socket paths are limited
        self.gcs = f"127.0.0.1:{free_port()}"
        self.dashboard = f"http://127.0.0.1:{free_port()}"
        self.procs: list[subprocess.Popen] = []

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.tmp.with_suffix(f".{name}.log"), "w")
        self.procs.append(subprocess.Popen([RAY, "start", "--block", "--node-ip-address", "127.0.0.1",
                                            "--temp-dir", str(self.tmp), "--disable-usage-stats",
                                            *node_ports(), *args],
                                           stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT,
                                           start_new_session=True))

    def _log(self, name: str) -> str:
        return self.tmp.with_suffix(f".{name}.log").read_text()[-3000:]

    def start(self) -> None:
        self._start("head", ["--head", "--port", self.gcs.split(":")[1], "--num-cpus", "2",
                             "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", self.dashboard.rsplit(":", 1)[1],
                             "--ray-client-server-port", str(free_port())])
        self._wait(lambda: _run([RAY, "status", "--address", self.gcs], 60, check=False).returncode == 0,
                   "head", 300)
        self._start("node2", ["--address", self.gcs, "--num-cpus", "1", "--resources", '{"node2": 1}'])
        self._wait(lambda: len(self.alive_nodes()) == 2, "node2", 300)

    def _wait(self, ready, name: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"a raylet exited while starting {name}:\n{self._log(name)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not up after {timeout_s:.0f}s:\n{self._log(name)}")
            time.sleep(3)

    def alive_nodes(self) -> dict[str, dict]:
        code = (f"import json, ray; ray.init(address='{self.gcs}', logging_level='ERROR'); "
                "print(json.dumps([[n['NodeID'], n['Resources']] for n in ray.nodes() if n['Alive']]))")
        out = _run([sys.executable, "-c", code], 120, check=False).stdout.strip().splitlines()
        return dict(json.loads(out[-1])) if out else {}

    def stop(self) -> None:
        """SIGKILL both raylets' sessions and whatever runs under the cluster's temp dir: a graceful
        drain takes ~30 s and this throwaway cluster needs none."""
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        for p in self.procs:
            p.wait(timeout=30)
        kill_under(self.tmp)
        shutil.rmtree(self.tmp, ignore_errors=True)
        for name in ("head", "node2"):
            self.tmp.with_suffix(f".{name}.log").unlink(missing_ok=True)


@pytest.fixture(scope="module")
def two_nodes():
    import ray

    if ray.is_initialized():  # a local Ray left by another test module: one cluster at a time
        ray.shutdown()
    cluster = TwoNodeCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _job_status(cluster: TwoNodeCluster, job: str) -> str:
    """PENDING / RUNNING / SUCCEEDED / FAILED / STOPPED (the CLI prints them in prose)."""
    code = ("from ray.job_submission import JobSubmissionClient; "
            f"print(JobSubmissionClient('{cluster.dashboard}').get_job_status('{job}').value)")
    out = _run([sys.executable, "-c", code], 120, check=False).stdout.strip().splitlines()
    return out[-1] if out else "UNKNOWN"


def test_job_submit_trains_with_actors_on_both_nodes(two_nodes, tmp_path):
    nodes = two_nodes.alive_nodes()
    node2 = next(nid for nid, res in nodes.items() if "node2" in res)
    job = f"labrl-test-{uuid.uuid4().hex[:8]}"
    runs_root = tmp_path / "runs"
    _run([RAY, "job", "submit", "--address", two_nodes.dashboard, "--submission-id", job, "--no-wait",
          "--runtime-env", "cluster/runtime_env.yaml", "--working-dir", ".", "--",
          "python", "-m", "launch.train", *OVERRIDES, f"logging.runs_root={runs_root}",
          "logging.wandb_mode=disabled", "rollout.env_worker_resource=node2", "run_name=jobtest"], 300)

    deadline = time.monotonic() + JOB_TIMEOUT_S
    status = _job_status(two_nodes, job)
    while status in ("PENDING", "RUNNING", "UNKNOWN") and time.monotonic() < deadline:
        time.sleep(10)
        status = _job_status(two_nodes, job)
    logs = _run([RAY, "job", "logs", "--address", two_nodes.dashboard, job], 120, check=False).stdout
    if status != "SUCCEEDED":
        _run([RAY, "job", "stop", "--address", two_nodes.dashboard, job], 120, check=False)
    assert status == "SUCCEEDED", f"job {job} ended {status}; last log lines:\n{logs[-6000:]}"

    metrics = list(runs_root.glob("jobtest-*/metrics.jsonl"))
    assert metrics, f"no metrics.jsonl under {runs_root}"
    records = [json.loads(line) for line in metrics[0].read_text().splitlines() if line.strip()]
    assert sum("timing/step_s" in r for r in records) == 2  # two GRPO steps
    # The held-out curve: before the first step and after each (eval.every_steps=1), 4 tasks each.
    assert [(r["step"], r["eval/updates"], r["eval/num_tasks"]) for r in records if "eval/updates" in r] == [
        (0, 0, 4), (0, 1, 4), (1, 2, 4)]

    out = _run([RAY, "list", "actors", "--address", two_nodes.dashboard, "--detail", "--format", "json",
                "--limit", "1000"], 120).stdout
    actors = [a for a in json.loads(out) if a.get("class_name") != "JobSupervisor"]
    used = {a["node_id"] for a in actors}
    assert used == set(nodes), f"actors ran on {len(used)} of 2 nodes: " + ", ".join(
        sorted(f"{a['class_name']}@{a['node_id'][:8]}" for a in actors))
    env_nodes = {a["node_id"] for a in actors if a["class_name"] == "EnvWorker"}
    assert env_nodes == {node2}, "rollout.env_worker_resource=node2 must pin env workers to node2"


# The job of the token-auth test: labrl's `connect` joins the job's cluster (RAY_ADDRESS, with the
# token the job inherits), and the run-directory check sees Ray's temporary working directory.
TOKEN_JOB = """
import os, ray
from pathlib import Path
from cluster.ray_cluster import connect, ephemeral_run_dir_warning
connect(None, 1)
print("JOINED", ray.get_runtime_context().gcs_address, "nodes", len(ray.nodes()), "auth", os.environ.get("RAY_AUTH_MODE"))
print("WARNING", ephemeral_run_dir_warning(Path("runs") / "x", runs_root_explicit=False))
"""


def test_readme_job_submit_line_works_against_a_ray_start_cluster_with_token_auth(tmp_path):
    """README: `ray get-auth-token --generate` once, `ray start --head` (a token in ~/.ray turns
    token auth on), then `RAY_AUTH_MODE=token ray job submit --working-dir . -- ...`: the client
    does not send the token unless RAY_AUTH_MODE=token, and is refused without it. HOME is a
    private directory, so ~/.ray/auth_token is this test's own; RAY_TMPDIR makes the private head
    this machine's latest `ray start` for the client, as on a real head node (no --address)."""
    home = tmp_path / "home"
    home.mkdir()
    head = PrivateHead(dashboard=True, auth_mode=None, home=home)
    try:
        token = subprocess.run([RAY, "get-auth-token", "--generate"], capture_output=True, text=True,
                               timeout=120, env=head.env(auth_mode=None), cwd=ROOT)
        assert token.returncode == 0 and (home / ".ray" / "auth_token").is_file(), token.stderr
        head.start()
        assert "Token authentication is enabled" in head.log.read_text()

        submit = [RAY, "job", "submit", "--working-dir", ".", "--"]
        refused = subprocess.run([*submit, "python", "-c", "pass"], capture_output=True, text=True, timeout=300,
                                 env=head.env(auth_mode=None), cwd=ROOT)
        assert refused.returncode != 0
        assert "RAY_AUTH_MODE is currently 'disabled'" in refused.stderr, refused.stderr[-3000:]  # Ray's hint

        done = subprocess.run([*submit, "python", "-c", TOKEN_JOB], capture_output=True, text=True, timeout=600,
                              env=head.env(auth_mode="token"), cwd=ROOT)
        out = done.stdout + done.stderr
        assert done.returncode == 0 and "succeeded" in out, out[-4000:]
        joined = next(line for line in out.splitlines() if line.startswith("JOINED"))
        assert joined.split()[1].endswith(":" + head.gcs.rsplit(":", 1)[1])  # the head's GCS, not a new one
        assert joined.endswith("nodes 1 auth token")
        warning = next(line for line in out.splitlines() if line.startswith("WARNING"))
        assert "runtime_resources" in warning and "logging.runs_root" in warning, warning
    finally:
        head.stop()
