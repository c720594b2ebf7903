"""Environments over HTTP: `EnvServer` hosts environments, `RemoteEnvironment` drives one remotely.

Why: some environments need their own machine (a simulator, a licensed tool, a lab instrument).
The server keeps one environment per session; the client is an ordinary `Environment`, so the agent
loop does not know the difference. Tools cross the wire as schemas and are executed by the server.

    python -m envs.adapters.http --envs stoichiometry,my_pkg.envs:SPEC [--host 127.0.0.1] [--port 8765]

serves exactly the environments named at start (registered names or import paths of `EnvSpec`s,
resolved once, by the operator; a name that does not resolve stops the start with a message). A
client picks one of those names; nothing a client sends is imported or called.

Safety: the server binds 127.0.0.1 unless told otherwise and refuses a non-loopback address without
an API key ($LABRL_ENV_API_KEY); requests must then carry it in `X-API-Key`. The key is compared in
constant time and never logged. An environment that raises in `step` ends its episode with an error
observation (reason `env_error`; `timeout` past `--env-timeout-s`); the server stays up.

Protocol (JSON; every refusal is `{"error": message}`):
    POST   /sessions            {"env": name, "task": Task dict} -> {"session", "observations", "tools"}
    POST   /sessions/{id}/step  {"action": assistant Message dict} -> {"observations", "reward", "reason",
                                                                       "done", "truncated"}
    DELETE /sessions/{id}                                     -> {"ok": true}
    GET    /health                                            -> {"ok": true, "sessions": n}  (no key needed)

Refusals: 400 malformed JSON, wrong types or fields, or an environment name not served (the message
lists the served ones); 401 missing or wrong key; 404 unknown, closed or finished session, or no
such endpoint; 405 wrong method; 410 session expired (older than `--max-session-age-s` or idle
longer than `--idle-timeout-s`; it is closed); 413 body over `--max-body-bytes`; 422 the
environment could not start this task (it raised); 429 `--max-sessions` sessions open, or a
session stepping faster than `--max-steps-per-s` (burst `--step-burst`), with Retry-After; 504 the
environment did not start within `--env-timeout-s`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from envs.adapters.http_client import RemoteEnvError, RemoteEnvironment, RemoteEnvTimeout
from envs.adapters.http_server import EnvServer, ServerLimits
from envs.adapters.http_wire import API_KEY_ENV, API_KEY_HEADER
from envs.registry import EnvSpec, get_env_spec

__all__ = ["API_KEY_ENV", "API_KEY_HEADER", "EnvServer", "RemoteEnvError", "RemoteEnvTimeout",
           "RemoteEnvironment", "ServerLimits", "main", "resolve_envs", "start_server_process"]

logger = logging.getLogger(__name__)

_LISTENING = re.compile(r"environment server listening on (http://\S+?),")
_LIMIT_FLAGS = {  # flag -> (ServerLimits field, type)
    "--max-body-bytes": ("max_body_bytes", int), "--max-sessions": ("max_sessions", int),
    "--max-session-age-s": ("max_session_age_s", float), "--idle-timeout-s": ("idle_timeout_s", float),
    "--max-steps-per-s": ("max_steps_per_s", float), "--step-burst": ("step_burst", int),
    "--env-timeout-s": ("env_timeout_s", float),
}


def resolve_envs(names: Sequence[str]) -> dict[str, EnvSpec]:
    """Served name (as given) -> spec, through `get_env_spec` (registered names and import paths).
    Raises ValueError naming the first name that does not resolve."""
    specs: dict[str, EnvSpec] = {}
    for name in names:
        if name in specs:
            raise ValueError(f"environment {name!r} is named twice")
        try:
            specs[name] = get_env_spec(name)
        except Exception as err:  # noqa: BLE001 - an operator's module may fail in any way on import
            raise ValueError(f"cannot serve environment {name!r}: {type(err).__name__}: {err}") from err
    if not specs:
        raise ValueError("no environment to serve: give --envs NAME[,NAME...]")
    return specs


async def _serve(server: EnvServer) -> None:
    url = await server.start()
    # The one line an operator (and `start_server_process`) always needs, whatever --log-level says.
    logger.info("environment server listening on %s, serving %s", url, ", ".join(server.envs))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # close the sessions' environments before exiting
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        logger.info("environment server stopping (%d open sessions)", len(server.sessions))
        await server.stop()


def _parser() -> argparse.ArgumentParser:
    defaults = ServerLimits()
    parser = argparse.ArgumentParser(prog="python -m envs.adapters.http",
                                     description="Serve the named environments over HTTP. The API key, "
                                                 f"if any, comes from ${API_KEY_ENV}.")
    parser.add_argument("--envs", required=True,
                        help="comma-separated registered names or import paths (pkg.module:SPEC)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0: any free port (logged)")
    for flag, (name, kind) in _LIMIT_FLAGS.items():
        parser.add_argument(flag, dest=name, type=kind, default=getattr(defaults, name),
                            help=f"default {getattr(defaults, name)}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    try:
        envs = resolve_envs([n.strip() for n in args.envs.split(",") if n.strip()])
        limits = ServerLimits(**{name: getattr(args, name) for name, _ in _LIMIT_FLAGS.values()})
        server = EnvServer(envs, api_key=os.environ.get(API_KEY_ENV) or None, host=args.host, port=args.port,
                           limits=limits)
    except ValueError as err:
        parser.error(str(err))
    try:
        asyncio.run(_serve(server))
    except OSError as err:  # cannot listen: the message names the address
        sys.exit(f"error: {err.strerror or err}; is another server on that port? choose another with --port")


def start_server_process(envs: Sequence[str], *, port: int = 0, api_key: str | None = None,
                         args: Sequence[str] = (), log_path: Path | str, timeout_s: float = 60.0,
                         ) -> tuple[subprocess.Popen, str]:
    """Run `python -m envs.adapters.http --envs ...` in a child process (stderr to `log_path`) and
    wait until it listens. Returns the process and the server's base URL; raises RuntimeError with
    the log's tail if it exits or is not listening within `timeout_s`."""
    env = dict(os.environ)
    env.pop(API_KEY_ENV, None)
    if api_key:
        env[API_KEY_ENV] = api_key
    root = str(Path(__file__).resolve().parents[2])  # so that `benchmarks.x:SPEC` style paths import
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    log_path = Path(log_path)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "envs.adapters.http", "--envs", ",".join(envs),
                                 "--port", str(port), *args], stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        found = _LISTENING.search(text)
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            raise RuntimeError(f"environment server exited with {proc.returncode}: {text[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"environment server not listening after {timeout_s:g}s: "
                       f"{log_path.read_text(errors='replace')[-2000:]}")


if __name__ == "__main__":
    main()
