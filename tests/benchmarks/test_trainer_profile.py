"""`benchmarks.trainer_profile`: one real trainer step profiled, its time split into operator groups.

Runs in a subprocess: the rank joins a one-process torch.distributed group of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks.common import REPO_ROOT

SCRIPT = """
import json, sys
from benchmarks.trainer_profile import batch, make_rank, profile_threads
from models.tiny import save_tiny_model
model_dir = str(save_tiny_model(sys.argv[1]))
rank, cfg = make_rank(model_dir, port=int(sys.argv[2]))
row = profile_threads(rank, cfg, batch(2, rank.engine.module.config.vocab_size), threads=1, warmup=1)
sys.stdout.write("RESULT " + json.dumps(row) + "\\n")
"""


def test_a_profiled_step_is_mostly_accounted_for_and_runs_every_position(tmp_path):
    from actors.calls import free_port

    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "model"), str(free_port())], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    # 2 groups x 8 samples of 36 + 32 tokens; each group's prompt runs once (prompt cache): the
    # two groups share no prompt, so they run as two cached-prompt micro-batches or packed rows.
    assert 2 * 8 * 32 <= row["positions"] <= 2 * 8 * (36 + 32)
    seconds = row["seconds"]
    assert seconds["GEMM"] > 0 and seconds["optimizer"] > 0
    assert 0.3 * row["profiled_s"] < sum(seconds.values()) <= 1.5 * row["profiled_s"]
