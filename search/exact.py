"""The exact optimizer (being built): per-cell Pareto fronts keyed on the coupling state, merged
across cells. See docs/search.md."""

from __future__ import annotations

from typing import Any

from nnflash.models.spec import DenseSpec
from nnflash.search.types import Deployment, Design, Limits, Objective


class ExactTables:
    """Per-cell costs and fronts of a space for every deployment (built once, reused per query)."""

    @classmethod
    def build(cls, space: Any, deployments: list[Deployment], objective: Objective) -> ExactTables:
        raise NotImplementedError("search: the exact method is not built yet")


def exact_candidates(
    tables: ExactTables, limits: Limits, margin: float, top_k: int
) -> tuple[list[tuple[DenseSpec, Deployment]], int]:
    """Candidates, best first, and the number of full-network evaluations."""
    raise NotImplementedError("search: the exact method is not built yet")


def exact_front(tables: ExactTables, against: str, limits: Limits) -> list[Design]:
    raise NotImplementedError("search: the exact front is not built yet")
