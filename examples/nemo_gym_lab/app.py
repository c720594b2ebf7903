"""A molar-mass lab written with NeMo Gym's own API: a resources server labrl trains against.

Tools: `mass` (an element's atomic mass, from a simulated reference table) and `calc` (safe
arithmetic). The agent's final answer is a plain assistant message holding the number; `/verify`
reads the last assistant text of the response and gives reward 1 within 1% of the molar mass.
Rows marked `instrument_fault` stand for a run whose reference measurement failed: the verifier
cannot judge them and answers `mask_sample: true` (failure kind `instrument_fault`), so a trainer
must drop them rather than learn from a zero.

Serve it (in NeMo Gym's Python, from the repository root):
    .venv-nemo-gym/bin/python -m envs.adapters.nemo_gym.serve examples.nemo_gym_lab.app:MolarMassLab --port 8000
It imports labrl's stdlib-only `envs.safe_math` and the periodic table of the bundled
stoichiometry environment, so the lab and labrl's own environment agree on every mass.
"""

from __future__ import annotations

import math
import re
from typing import Optional

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from nemo_gym.base_resources_server import (
    BaseResourcesServerConfig,
    BaseVerifyRequest,
    BaseVerifyResponse,
    SimpleResourcesServer,
)

from envs.safe_math import format_number, safe_eval
from envs.suite.stoichiometry import ATOMIC_MASS

REL_TOL = 0.01
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


class MolarMassLabConfig(BaseResourcesServerConfig):
    pass


class MassRequest(BaseModel):
    el: str


class CalcRequest(BaseModel):
    expr: str


class LabVerifyRequest(BaseVerifyRequest):
    formula: str
    answer: float
    instrument_fault: bool = False


class LabVerifyResponse(BaseVerifyResponse):
    mask_sample: bool = False
    failure_kind: Optional[str] = None


def final_text(body: BaseVerifyRequest) -> str:
    """The text of the last assistant message in the response ('' when there is none)."""
    for item in reversed(body.response.output):
        if item.type == "message" and getattr(item, "role", "") == "assistant":
            return "".join(getattr(part, "text", "") for part in item.content)
    return ""


class MolarMassLab(SimpleResourcesServer):
    config: MolarMassLabConfig

    def setup_webserver(self) -> FastAPI:
        app = super().setup_webserver()
        app.post("/mass")(self.mass)
        app.post("/calc")(self.calc)
        return app

    # Results are bare JSON strings ("22.99"): short observations for a small model. A bad input is
    # a 400, which the agent sees as an error observation.
    async def mass(self, body: MassRequest) -> str:
        if body.el not in ATOMIC_MASS:
            raise HTTPException(400, f"unknown element '{body.el[:10]}'")
        return format_number(ATOMIC_MASS[body.el])

    async def calc(self, body: CalcRequest) -> str:
        try:
            return format_number(safe_eval(body.expr))
        except ValueError as err:
            raise HTTPException(400, str(err)[:80]) from None

    async def verify(self, body: LabVerifyRequest) -> LabVerifyResponse:
        if body.instrument_fault:
            return LabVerifyResponse(**body.model_dump(), reward=0.0, mask_sample=True,
                                     failure_kind="instrument_fault")
        numbers = _NUMBER.findall(final_text(body))
        if not numbers:
            return LabVerifyResponse(**body.model_dump(), reward=0.0, failure_kind="no_answer")
        correct = math.isclose(float(numbers[-1]), body.answer, rel_tol=REL_TOL)
        return LabVerifyResponse(**body.model_dump(), reward=float(correct),
                                 failure_kind=None if correct else "wrong_value")
