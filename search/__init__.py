"""Co-design search: the best network of a space (and the deployment to run it with) under
latency, energy, size and memory limits.

It reads specs, metrics, cost models and accuracy predictors; nothing below it reads it
(layers: ``controller -> search -> calibration -> models``). How the methods work, and what they
were measured to do, is in ``docs/search.md``.

Public API (stable; the CLI ``nnflash search`` builds on it)::

    from nnflash.search import Deployment, Limits, Objective, search, pareto_front, recheck
    from nnflash.models.space import get_space
    from nnflash.calibration import load_model

    space = get_space("flash")
    deployments = [Deployment.from_model(load_model("ort1.json")), Deployment.from_model(load_model("ort2.json"))]
    objective = Objective.parse("nn-degree")          # or Objective.from_predictor(load_accuracy_model(...))
    limits = Limits(max_latency_ms=5.0, max_params=500_000)
    result = search(space, deployments, objective, limits, method="exact", top_k=3, margin=0.05)
    best = result.designs[0]                           # a Design: spec, deployment, costs, margins
    best.to_dict()                                     # one JSON line of ``nnflash search``
    front = pareto_front(space, deployments, objective, against="latency")

- :class:`Limits`: any combination of ``max_latency_ms``, ``max_energy_mj``, ``max_params``,
  ``max_macs``, ``max_peak_memory_mb`` and ``max_area_mm2`` (``None``: no limit).
- :class:`Objective`: what is maximized: NN-Degree (``nn-degree``, FLASH's training-free
  objective, the default), NN-Mass (``nn-mass``), or the predicted accuracy of a monotone
  accuracy predictor (kinds ``flash`` and ``nnmass`` of :mod:`nnflash.calibration.accuracy`), which
  is a monotone function of one of the two metrics. A ``multi`` predictor is refused here: it needs
  a torch module per candidate, so callers re-rank the top-K designs of an NN-Degree search with it.
- :class:`Deployment`: a latency cost model (and optionally an energy model) of one device, with
  its label (device, runtime, threads, precision). Several deployments of one device make the
  search a co-design: it chooses the deployment together with the network.
- :class:`Design`: one result: the spec, the deployment, the objective value, the predicted
  accuracy (or ``None``), latency, energy, params, MACs, peak activation memory, area, and the
  margin to every limit. Every returned design has been re-checked by :func:`recheck` with the
  full ``CostModel.predict`` on its final integer spec: nothing returned violates a limit.
- :func:`search` with ``method``:

  - ``"exact"``: the constrained optimum over the whole space, from per-cell Pareto fronts keyed
    on the coupling state (width and memory layout of the tensor leaving each cell), merged
    across cells (:mod:`nnflash.search.exact`);
  - ``"shgo"``: our hierarchical SHGO (``scipy.optimize.shgo``) after FLASH
    (:mod:`nnflash.search.shgo`);
  - ``"random"``: uniform random designs, as many full-network evaluations as ``shgo`` uses.

  Space ``nb201`` (NAS-Bench-201's 15,625 cells, finite) is searched by ``"exact"`` only, which
  there is enumeration: every network's costs predicted by the full cost models, the best feasible
  ranked first (:mod:`nnflash.search.nb201`); ``shgo`` and ``random`` are refused. nb201 designs
  have no peak-memory model (``peak_memory_mb`` is ``None``, its limit refused).
  :meth:`Objective.from_scores` maximizes precomputed per-network values (a ``multi`` predictor's,
  say) on nb201.

  It returns a :class:`SearchResult` (``designs`` best first, ``time_s``, ``build_s``,
  ``evaluations``, ``method``), or raises :class:`Infeasible` when no design meets the limits.
- :func:`build_tables`: the exact method's one-time tables for a space, deployments and
  objective; pass them as ``tables=`` to :func:`search` and :func:`pareto_front` to reuse them.
- :func:`pareto_front`: the exact front of the objective against latency or energy (every design
  on it, computed, not sampled), optionally under limits.
- :func:`recheck`: the margins of a design or spec to each limit from the full cost models
  (:func:`meets` says whether they pass); :func:`evaluate` builds a :class:`Design` from a spec the same way.
- :class:`Infeasible`: no design meets the limits; its message says, for each limit, the tightest
  value the space can reach when the other limits hold (``.tightest``).
- :func:`default_margin`: the safety margin a cost model's cross-validation suggests.
- :func:`check_deployments`: clear errors for cost models of another space or input shape, or
  of several devices mixed.

Margins are relative: ``margin=0.05`` keeps predicted latency and energy at most 95% of their
limits; a design's ``margins[limit] = 1 - value / limit`` (negative: violated).
"""

from nnflash.search.api import (
    build_tables,
    check_deployments,
    default_margin,
    evaluate,
    meets,
    pareto_front,
    recheck,
    search,
)
from nnflash.search.types import (
    LIMIT_FIELDS,
    METHODS,
    OBJECTIVE_NAMES,
    Deployment,
    Design,
    Infeasible,
    Limits,
    Objective,
    SearchError,
    SearchResult,
)

__all__ = [
    "LIMIT_FIELDS",
    "METHODS",
    "OBJECTIVE_NAMES",
    "Deployment",
    "Design",
    "Infeasible",
    "Limits",
    "Objective",
    "SearchError",
    "SearchResult",
    "build_tables",
    "check_deployments",
    "default_margin",
    "evaluate",
    "meets",
    "pareto_front",
    "recheck",
    "search",
]
