"""Serve one NeMo Gym resources-server class on a port, without NeMo Gym's head server or Ray.

    .venv-nemo-gym/bin/python -m envs.adapters.nemo_gym.serve \\
        resources_servers.example_session_state_mgmt.app:StatefulCounterResourcesServer --port 8000

Runs in NeMo Gym's own Python (it needs Python >= 3.12 and pins packages labrl's venv cannot
share), so it imports nothing from labrl. It builds the server as NeMo Gym's `run_webserver` does
(`setup_webserver`, liveness at `GET /`) with a config naming this host and port; the server's
client to other NeMo Gym servers points nowhere, since a resources server that only runs tools and a
verifier never calls one. A deployment started with NeMo Gym's own `ng_run` works the same for
labrl: point `env.options.url` at its resources server.
"""

from __future__ import annotations

import argparse
import importlib
import logging

import uvicorn
from omegaconf import OmegaConf

from nemo_gym.server_utils import ServerClient
from nemo_gym.config_types import BaseServerConfig


def build_app(target: str, host: str, port: int):
    """The FastAPI app of the resources-server class at `target` ('pkg.module:Class')."""
    module, _, name = target.partition(":")
    server_cls = getattr(importlib.import_module(module), name)
    config_cls = server_cls.model_fields["config"].annotation
    config = config_cls(host=host, port=port, entrypoint="", name=name)
    client = ServerClient(head_server_config=BaseServerConfig(host=host, port=0),
                          global_config_dict=OmegaConf.create({}))
    server = server_cls(config=config, server_client=client)
    app = server.setup_webserver()
    server.setup_liveness(app)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("server", help="resources-server class, 'pkg.module:Class'")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    uvicorn.run(build_app(args.server, args.host, args.port), host=args.host, port=args.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
