"""NeMo Gym's Python (`make nemo-gym`) and a NeMo Gym resources server started in it (`serve.py`).

Used by the tests, the end-to-end run and the adapter benchmark; a user with a NeMo Gym deployment
(`ng_run`) needs none of it and points `env.options.url` at the running server.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from envs.adapters.server_process import REPO_ROOT, ServerProcess

PYTHON_ENV_VAR = "LABRL_NEMO_GYM_PYTHON"


class NemoGymUnavailable(RuntimeError):
    """NeMo Gym's Python environment is missing; says how to build it."""


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


def nemo_gym_server(target: str) -> ServerProcess:
    """The resources-server class at `target` ('pkg.module:Class'), served in NeMo Gym's Python."""
    return ServerProcess([str(nemo_gym_python()), "-m", "envs.adapters.nemo_gym.serve", target,
                          "--port", "{port}"])
