"""The spectrophotometer as an MCP server, written with the `mcp` package's own server class.

    python -m examples.mcp_lab.server                       # stdio
    python -m examples.mcp_lab.server --http --port 8000    # streamable HTTP at /mcp
"""

import sys

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from envs.adapters.server_process import ServerProcess
from examples.mcp_lab.spectro import EPSILON, RACK

lab = MCPServer("spectro-lab")
cuvettes: dict[str, str] = {}   # per episode: labrl sends its episode id in every call's _meta


def episode(ctx: Context) -> str:
    return str((ctx.request_context.meta or {}).get("labrl/episode_id"))


@lab.tool()
def load_sample(sample_id: str, ctx: Context) -> str:
    """Put a sample from the rack into the spectrometer's cuvette."""
    if sample_id not in RACK:
        raise ToolError(f"no sample {sample_id!r} in the rack")   # the model sees this text
    cuvettes[episode(ctx)] = sample_id
    return f"{sample_id} loaded"


@lab.tool()
def absorbance(wavelength_nm: int, ctx: Context) -> float:
    """Absorbance of the loaded sample at 450 or 520 nm."""
    sample = cuvettes.get(episode(ctx))
    if sample is None:
        raise ToolError("no sample loaded")
    return EPSILON[wavelength_nm] * RACK[sample] / 1000


def lab_server() -> ServerProcess:
    """This server over streamable HTTP in a child process; its endpoint is `server.url + "/mcp"`."""
    return ServerProcess([sys.executable, "-m", "examples.mcp_lab.server", "--http", "--port", "{port}"],
                         ready_path="/mcp")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="spectrophotometer MCP server")
    parser.add_argument("--http", action="store_true", help="streamable HTTP instead of stdio")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    if args.http:
        lab.run("streamable-http", port=args.port)
    else:
        lab.run()
