"""Start a NeMo Gym resources server (`serve.py`) in NeMo Gym's own Python and wait until it answers.

Used by the tests, the end-to-end run and the adapter benchmark; a user with a NeMo Gym deployment
(`ng_run`) needs none of it and points `env.options.url` at the running server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[3]
PYTHON_ENV_VAR = "LABRL_NEMO_GYM_PYTHON"


class NemoGymUnavailable(RuntimeError):
    """NeMo Gym's Python environment is missing or a server did not come up; says how to fix it."""


def nemo_gym_python() -> Path:
    """NeMo Gym's interpreter: `$LABRL_NEMO_GYM_PYTHON`, else the one `make nemo-gym` builds."""
    python = Path(os.environ.get(PYTHON_ENV_VAR, REPO_ROOT / ".venv-nemo-gym" / "bin" / "python"))
    if not python.exists():
        raise NemoGymUnavailable(f"no NeMo Gym Python at {python}: run `make nemo-gym` (or set "
                                 f"{PYTHON_ENV_VAR})")
    return python


def bundled_resources_dir() -> Path:
    """The `resources_servers` folder of the installed nemo-gym wheel (its example servers + data)."""
    out = subprocess.run([str(nemo_gym_python()), "-c", "import resources_servers as r; print(r.__path__[0])"],
                         capture_output=True, text=True, check=True, timeout=60)
    return Path(out.stdout.strip())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NemoGymServer:
    """`with NemoGymServer("pkg.module:Class") as server:` ... `server.url`; stopped on exit."""

    def __init__(self, target: str, port: int | None = None, start_timeout_s: float = 120.0):
        self.target = target
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen | None = None

    def start(self) -> "NemoGymServer":
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.process = subprocess.Popen(
            [str(nemo_gym_python()), "-m", "envs.adapters.nemo_gym.serve", self.target,
             "--port", str(self.port)], cwd=REPO_ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return self

    def wait_ready(self) -> "NemoGymServer":
        """Block until `GET /` answers; a server that exits or stays silent is an error with its log."""
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NemoGymUnavailable(f"{self.target} exited ({self.process.returncode}): "
                                         f"{self.process.stdout.read()[-2000:] if self.process.stdout else ''}")
            try:
                with urllib.request.urlopen(f"{self.url}/", timeout=2):
                    return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise NemoGymUnavailable(f"{self.target} did not answer on {self.url} within {self.start_timeout_s:.0f}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "NemoGymServer":
        return self.start().wait_ready()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
