"""Random search (being built): uniform designs, as many evaluations as shgo."""

from __future__ import annotations

from typing import Any, Optional

from nnflash.models.spec import DenseSpec
from nnflash.search.types import Deployment, Limits, Objective


def random_candidates(
    space: Any,
    deployments: list[Deployment],
    objective: Objective,
    limits: Limits,
    margin: float,
    top_k: int,
    seed: int,
    evaluations: Optional[int] = None,
) -> tuple[list[tuple[DenseSpec, Deployment]], int]:
    raise NotImplementedError("search: the random method is not built yet")
