"""glibc keeps freed memory mapped for CPU trainer ranks (trainers/host_malloc.py): buffers freed by one
step are reused by the next without page faults. Each case runs in a fresh interpreter, since the
setting is process-wide."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# Builds a CPU trainer rank (its constructor applies trainer.keep_freed_memory), then counts the
# minor page faults of a second round of 38 MB activations allocated and freed, as a step makes them.
PROBE = """
import json, resource, sys
import torch
from configs.schema import TrainerConfig
from trainers.policy_trainer import PolicyTrainerRank
from trainers.spec import TrainerSpec

keep = sys.argv[1] == "true"
PolicyTrainerRank(TrainerSpec("unused", TrainerConfig(num_ranks=1, keep_freed_memory=keep)), 0, 1)
x, w = torch.randn(2336, 512), torch.randn(4096, 512)

def step():
    for _ in range(5):
        y = torch.nn.functional.silu(torch.nn.functional.linear(x, w))
        del y

step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step()
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(keep: bool) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(keep).lower()], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_a_cpu_rank_reuses_freed_pages():
    plain, kept = _probe(False), _probe(True)
    # Five 38 MB buffers (and their SiLU outputs) unmapped and faulted in again: ~93,000 faults.
    assert plain["faults"] > 50_000
    assert kept["faults"] < plain["faults"] / 20
