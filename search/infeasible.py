"""Infeasibility diagnostics (being built): for each limit, the tightest value the space reaches
while the other limits hold."""

from __future__ import annotations

from typing import Any

from nnflash.search.types import Deployment, Infeasible, Limits, Objective


def diagnose(
    space: Any, deployments: list[Deployment], objective: Objective, limits: Limits, margin: float, method: str
) -> Infeasible:
    return Infeasible(f"search ({method}): no design of space {space.name!r} meets the limits {limits.given()}")
