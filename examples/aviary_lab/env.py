"""A small lab task written with Aviary's own API, served by Aviary's `TaskDatasetServer`.

Why here: the `aviary_http` tests and the end-to-end training run need a real Aviary environment
that nobody has to download. The task is a dilution (C1*V1 = C2*V2: how many mL of a stock
solution make the wanted volume at the wanted concentration?), with a calculator tool that raises
on an impossible dilution and a `submit` tool that ends the episode. `reference_policy` solves it
(for SFT demonstrations), reading the server's task index from `env.task`.

Serve it (the key is read from $AVIARY_LAB_API_KEY; without it the server takes any request):
    AVIARY_LAB_API_KEY=secret python -m examples.aviary_lab.env --port 8041 --size 64
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from dataclasses import dataclass

from aviary.core import Environment, Message, TaskDataset, TaskDatasetServer, Tool
from pydantic import BaseModel

from envs.adapters.aviary import AviaryEnvironment
from envs.adapters.server_process import ServerProcess
from envs.core import Environment as LabrlEnvironment
from envs.core import Message as LabrlMessage
from envs.tool_env import make_action, successful_results

logger = logging.getLogger(__name__)

API_KEY_ENV = "AVIARY_LAB_API_KEY"
SOLUTES = ("NaCl", "KCl", "glucose", "Tris", "MgCl2")
STOCKS_M = (1.0, 2.0, 4.0, 5.0, 10.0)
TARGETS_M = (0.1, 0.2, 0.25, 0.5)
FINAL_ML = (50.0, 100.0, 200.0, 250.0, 500.0)
TOLERANCE = 0.01  # relative: a submitted volume within 1% is correct


@dataclass(frozen=True)
class Dilution:
    """One task: make `final_ml` mL of `target_m` M solute from a `stock_m` M stock."""

    solute: str
    stock_m: float
    target_m: float
    final_ml: float

    @property
    def stock_ml(self) -> float:
        return self.target_m * self.final_ml / self.stock_m

    def prompt(self) -> str:
        return (f"Make {self.final_ml:g} mL of {self.target_m:g} M {self.solute} from a "
                f"{self.stock_m:g} M stock. How many mL of stock? Submit the volume.")


def dilution(index: int) -> Dilution:
    """Task `index` of the dataset: the same numbers in the server and in the reference solver."""
    rng = random.Random(f"aviary-lab:{index}")
    return Dilution(rng.choice(SOLUTES), rng.choice(STOCKS_M), rng.choice(TARGETS_M), rng.choice(FINAL_ML))


def dilution_volume(stock_m: float, target_m: float, final_ml: float) -> str:
    """Volume of stock (mL) to dilute to the final volume and concentration (C1*V1 = C2*V2).

    Args:
        stock_m: Stock concentration (M).
        target_m: Wanted concentration (M).
        final_ml: Wanted final volume (mL).
    """
    if not 0 < target_m < stock_m:
        raise ValueError(f"cannot reach {target_m} M from a {stock_m} M stock by dilution")
    return f"{target_m * final_ml / stock_m:.4g}"


class DilutionState(BaseModel):
    answer_ml: float
    reward: float = 0.0
    done: bool = False


def submit(volume_ml: float, state: DilutionState) -> str:
    """Submit the volume of stock in mL; ends the task.

    Args:
        volume_ml: Volume of stock solution (mL).
        state: Environment state.
    """
    state.done = True
    state.reward = 1.0 if abs(volume_ml - state.answer_ml) <= TOLERANCE * state.answer_ml else 0.0
    return "correct" if state.reward else "incorrect"


class DilutionEnv(Environment[DilutionState]):
    """The Aviary environment of one dilution task; tool failures become messages (handle_tool_exc)."""

    def __init__(self, task: Dilution):
        self.task = task

    async def reset(self) -> tuple[list[Message], list[Tool]]:
        self.state = DilutionState(answer_ml=self.task.stock_ml)
        self.tools = [Tool.from_function(dilution_volume), Tool.from_function(submit)]
        return [Message(content=self.task.prompt())], self.tools

    async def step(self, action):
        observations = await self.exec_tool_calls(action, state=self.state, handle_tool_exc=True)
        return observations, self.state.reward, self.state.done, False


class DilutionDataset(TaskDataset[DilutionEnv]):
    """`size` dilution tasks, by index (what `TaskDatasetServer` serves)."""

    def __init__(self, size: int = 64):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def get_new_env_by_idx(self, idx: int) -> DilutionEnv:
        if not 0 <= idx < self.size:
            raise IndexError(f"task {idx} out of range(0, {self.size})")
        return DilutionEnv(dilution(idx))


async def reference_policy(env: LabrlEnvironment, history: list[LabrlMessage]) -> LabrlMessage:
    """Compute the volume with the tool, then submit what it said."""
    if not isinstance(env, AviaryEnvironment) or env.task is None:
        raise TypeError("the dilution reference solver needs an AviaryEnvironment that knows its task")
    results = successful_results(history, "dilution_volume")
    if results:
        return make_action(("submit", {"volume_ml": float(results[-1][1])}))
    task = dilution(env.task.data["index"])
    return make_action(("dilution_volume", {"stock_m": task.stock_m, "target_m": task.target_m,
                                            "final_ml": task.final_ml}))


def lab_server(size: int, api_key: str) -> ServerProcess:
    """This lab served by `TaskDatasetServer` in a child process (`with lab_server(...) as server`)."""
    return ServerProcess([sys.executable, "-m", "examples.aviary_lab.env", "--port", "{port}", "--size", str(size)],
                         ready_path="/info", headers={"X-API-Key": api_key}, env={API_KEY_ENV: api_key})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8041)
    parser.add_argument("--size", type=int, default=64, help="number of tasks")
    args = parser.parse_args(argv)
    api_key = os.environ.get(API_KEY_ENV) or None
    if api_key is None:
        logger.warning("%s is not set: the server accepts requests without a key", API_KEY_ENV)
    TaskDatasetServer(DilutionDataset(args.size), host=args.host, port=args.port, api_key=api_key).start()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
