"""A server in a child process on a free 127.0.0.1 port, waited for until it answers, stopped on exit.

The adapter tests, the end-to-end runs and `benchmarks.env_adapters` start the frameworks' real
servers this way (NeMo Gym's in its own Python, Aviary's `TaskDatasetServer`, an MCP server). A user
with a deployed server needs none of it: `env.options.url` points at it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]


class ServerDidNotStart(RuntimeError):
    """The server exited or stayed silent; the message carries the end of its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`with ServerProcess(argv_for(port), ready_path="/") as server:` ... `server.url`.

    `argv` may contain `{port}`, filled with a free port. The child runs in the repository root with
    it on PYTHONPATH (the example labs import from it), its output in a log file. "Ready" is any
    HTTP answer to `ready_path` (an error status counts: the server is up)."""

    def __init__(self, argv: Sequence[str], ready_path: str = "/", headers: dict[str, str] | None = None,
                 env: dict[str, str] | None = None, start_timeout_s: float = 120.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [a.format(port=self.port) for a in argv]
        self.ready_path, self.headers, self.start_timeout_s = ready_path, headers or {}, start_timeout_s
        self.env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
        self.log = Path(tempfile.mkstemp(prefix="labrl_server_", suffix=".log")[1])
        self.process: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(self.argv, cwd=REPO_ROOT, env=self.env, stdout=out,
                                            stderr=subprocess.STDOUT)
        return self

    def _answers(self) -> bool:
        request = urllib.request.Request(f"{self.url}{self.ready_path}", headers=self.headers)
        try:
            urllib.request.urlopen(request, timeout=2).close()
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    def wait_ready(self) -> "ServerProcess":
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerDidNotStart(f"{self.argv[2:4]} exited ({self.process.returncode}): "
                                        f"{self.log.read_text()[-2000:]}")
            if self._answers():
                return self
            time.sleep(0.3)
        self.stop()
        raise ServerDidNotStart(f"{self.argv[2:4]} did not answer on {self.url} within "
                                f"{self.start_timeout_s:.0f}s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.unlink(missing_ok=True)

    def __enter__(self) -> "ServerProcess":
        return self.start().wait_ready()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
