"""Our hierarchical SHGO after FLASH (being built). See docs/search.md."""

from __future__ import annotations

from typing import Any, Optional

from nnflash.models.spec import DenseSpec
from nnflash.search.types import Deployment, Limits, Objective

#: Full-network evaluations of one shgo search (the random method's default budget).
DEFAULT_EVALUATIONS = 2000


def shgo_candidates(
    space: Any,
    deployments: list[Deployment],
    objective: Objective,
    limits: Limits,
    margin: float,
    top_k: int,
    seed: int,
    evaluations: Optional[int] = None,
) -> tuple[list[tuple[DenseSpec, Deployment]], int]:
    raise NotImplementedError("search: the shgo method is not built yet")
