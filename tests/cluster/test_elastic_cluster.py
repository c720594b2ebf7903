"""Elastic capacity on a two-raylet cluster: `elastic_scenario.py` (read its docstring), run in a
fresh pytest process. The suite's own local Ray (tests/actors) would otherwise leave this process
in token-auth mode, and a driver cannot then use a `ray start` cluster without auth."""

from __future__ import annotations

import subprocess
import sys

from tests.cluster.ray_procs import ROOT, ray_env


def test_engines_and_env_workers_join_and_leave_a_running_run_on_a_node_added_for_them():
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "log_cli=true",
                           "--log-cli-level=INFO", "tests/cluster/elastic_scenario.py"],
                          cwd=ROOT, env=ray_env(), capture_output=True, text=True, timeout=1500)
    out = proc.stdout + proc.stderr
    throughput = [line for line in out.splitlines() if "throughput with" in line or "killed env worker" in line]
    print("\n".join(throughput))
    assert proc.returncode == 0 and "1 passed" in out, out[-8000:]
