"""`python -m envs.adapters.http`: names resolve at start or the start fails with a message; a port
in use is named; SIGTERM closes the open sessions and exits cleanly."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request

from envs.adapters.http import API_KEY_HEADER, start_server_process
from envs.registry import get_env_spec

KEY = "cli-test-key-5678"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "envs.adapters.http", *args], capture_output=True, text=True,
                          timeout=120)


def test_unknown_env_name_fails_at_start_with_a_message() -> None:
    out = _cli("--envs", "stoichiometry,no_such_env", "--port", "0")
    assert out.returncode == 2
    assert "cannot serve environment 'no_such_env'" in out.stderr and "known: " in out.stderr
    out = _cli("--envs", "stoichiometry,no_such_module_xyz:SPEC", "--port", "0")
    assert out.returncode == 2 and "cannot serve environment 'no_such_module_xyz:SPEC'" in out.stderr


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = _cli("--envs", "stoichiometry", "--port", str(port))
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr and "choose another with --port" in out.stderr


def test_sigterm_closes_sessions_and_exits(tmp_path) -> None:
    proc, url = start_server_process(["stoichiometry"], api_key=KEY, log_path=tmp_path / "server.log")
    try:
        task = get_env_spec("stoichiometry").make_dataset(1, 0, (1,), 0)[0]
        request = urllib.request.Request(url + "/sessions", method="POST", headers={API_KEY_HEADER: KEY},
                                         data=json.dumps({"env": "stoichiometry", "task": task.to_dict()}).encode())
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 200 and json.load(resp)["session"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (tmp_path / "server.log").read_text()
    assert "serving stoichiometry" in log and "stopping (1 open sessions)" in log and KEY not in log
