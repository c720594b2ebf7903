"""Private Ray processes for tests: a `ray start --head` in its own temp dir and ports, and the
processes that belong to such a temp dir.

Nothing here runs `ray stop` (it stops every Ray on the machine, other people's included): a
head runs `ray start --block` in its own process session and is ended through that session;
whatever it or a driver leaves behind is found by its temp dir, which every Ray daemon's command
line names (`--session-dir`, `--temp-dir`, log paths).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from actors.calls import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")


def node_ports() -> list[str]:
    """Ports two raylets on one host must not share (defaults like 52365 are fixed numbers)."""
    names = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port"]
    return [a for n in names for a in (n, str(free_port()))]


def ray_env(ray_tmpdir: Path | None = None, auth_mode: str | None = "disabled",
            home: Path | None = None) -> dict[str, str]:
    """This environment without RAY_ADDRESS and with this venv first on PATH. `ray_tmpdir`: Ray's
    default temp dir becomes `<ray_tmpdir>/ray` (where `ray start` records its address and where
    `ray.init()` looks for it). `auth_mode`: RAY_AUTH_MODE (None: unset, Ray's own default).
    `home`: HOME, whose `.ray/auth_token` is Ray's default token (a private one for a test)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                        "RAY_RUNTIME_ENV_IGNORE_GITIGNORE")}
    if auth_mode is not None:
        env["RAY_AUTH_MODE"] = auth_mode
    if ray_tmpdir is not None:
        env["RAY_TMPDIR"] = str(ray_tmpdir)
    if home is not None:
        env["HOME"] = str(home)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_raylet_start_wait_time_s"] = "300"  # a loaded 2-core machine registers raylets slowly
    return env


def processes_under(marker: Path) -> list[psutil.Process]:
    """Live processes whose command line names `marker` (a private Ray temp dir)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(marker) in arg for arg in proc.info["cmdline"] or ()):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def kill_under(marker: Path) -> None:
    """SIGKILL every process a test left under its private temp dir (nothing else)."""
    for proc in processes_under(marker):
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def gcs_listening(address: str, timeout_s: float = 2.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


class PrivateHead:
    """`ray start --head --block` on 127.0.0.1 with free ports; its temp dir is `<tmp>/ray`, so a
    process run with `ray_env(head.tmp)` sees it as this machine's latest `ray start` cluster."""

    def __init__(self, num_cpus: int = 1, dashboard: bool = False, auth_mode: str | None = "disabled",
                 home: Path | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="lrc", dir="/tmp"))  # short: socket paths are limited
        self.temp_dir = self.tmp / "ray"
        self.gcs = f"127.0.0.1:{free_port()}"
        self.dashboard = f"http://127.0.0.1:{free_port()}" if dashboard else None
        self.num_cpus, self.auth_mode, self.home = num_cpus, auth_mode, home
        self.proc: subprocess.Popen | None = None
        self.nodes: list[subprocess.Popen] = []  # raylets added with `add_node`
        self.log = self.tmp / "head.log"

    def env(self, auth_mode: str | None = "disabled") -> dict[str, str]:
        """The environment of a process that sees this head as the machine's latest `ray start`."""
        return ray_env(self.tmp, auth_mode, self.home)

    def start(self, timeout_s: float = 300) -> None:
        dash = (["--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                 "--dashboard-port", self.dashboard.rsplit(":", 1)[1]] if self.dashboard
                else ["--include-dashboard", "false"])
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port",
                 self.gcs.rsplit(":", 1)[1], "--temp-dir", str(self.temp_dir), "--num-cpus", str(self.num_cpus),
                 "--disable-usage-stats", "--ray-client-server-port", str(free_port()), *node_ports(), *dash],
                stdout=log, stderr=subprocess.STDOUT, env=self.env(self.auth_mode), cwd=ROOT,
                start_new_session=True)
        deadline = time.monotonic() + timeout_s
        pointer = self.temp_dir / "ray_current_cluster"
        while not (pointer.is_file() and gcs_listening(self.gcs) and self._dashboard_up()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"ray start not up after {timeout_s:.0f}s:\n{self.log.read_text()[-3000:]}")
            time.sleep(1)

    def add_node(self, num_cpus: int, timeout_s: float = 300) -> subprocess.Popen:
        """A second raylet joins (`ray start --address`, its own session): a node the autoscaler
        would add. Returns once the cluster lists it alive."""
        with open(self.tmp / f"node{len(self.nodes) + 2}.log", "w") as log:
            self.nodes.append(subprocess.Popen(
                [RAY, "start", "--block", "--address", self.gcs, "--node-ip-address", "127.0.0.1",
                 "--temp-dir", str(self.temp_dir), "--num-cpus", str(num_cpus), "--disable-usage-stats",
                 *node_ports()], stdout=log, stderr=subprocess.STDOUT, env=self.env(self.auth_mode), cwd=ROOT,
                start_new_session=True))
        import ray

        deadline = time.monotonic() + timeout_s
        while sum(n["Alive"] for n in ray.nodes()) < len(self.nodes) + 1:
            if time.monotonic() > deadline or self.nodes[-1].poll() is not None:
                raise RuntimeError(f"node {len(self.nodes) + 1} did not join:\n{log.name}")
            time.sleep(1)
        return self.nodes[-1]

    def _dashboard_up(self) -> bool:
        return self.dashboard is None or gcs_listening(self.dashboard.removeprefix("http://"))

    def kill(self) -> None:
        """SIGKILL every process of this cluster: nothing cleans up, the address record stays."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        kill_under(self.temp_dir)  # daemons that left the session (Ray's reaper, workers)
        deadline = time.monotonic() + 30
        while processes_under(self.temp_dir) and time.monotonic() < deadline:
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM to each raylet's session (Ray drains and stops its daemons), then clean up."""
        procs = [p for p in [*self.nodes, self.proc] if p is not None and p.poll() is None]
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        kill_under(self.tmp)
        shutil.rmtree(self.tmp, ignore_errors=True)
