"""An EnvWorker process must stay small: scale-out runs place dozens of them per node, and importing
torch alone costs ~0.25 GiB of resident memory per process."""

import subprocess
import sys

from models.tiny import save_tiny_model


def test_env_worker_and_tiny_tokenizer_do_not_import_torch(tmp_path):
    model_dir = save_tiny_model(tmp_path / "tiny")
    code = (
        "import sys\n"
        "import rollout.env_worker, rollout.pool\n"
        "from envs.chat import ChatCodec\n"
        "from models.loading import load_tokenizer\n"
        f"codec = ChatCodec(load_tokenizer({str(model_dir)!r}))\n"
        "assert codec.encode('mass') , 'tokenizer produced nothing'\n"
        "heavy = sorted(m for m in ('torch', 'vllm', 'deepspeed') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"an env worker process imports {out.stdout.strip()}"
