"""Summary statistics of latency samples (standard library only, so the controller can reuse it).

**The latency of a model** is defined here, once, and every command uses it (``profile`` shows it,
``calibrate`` fits it, ``predict`` predicts it, the report plots it):

- a *visit* (one ``measure``: warm-up, then ``repeat`` timed repeats) has the latency
  :func:`visit_latency_ms`: the median of its **undisturbed** repeats' per-inference times (a
  repeat is disturbed when its threads waited for a CPU, see ``nnflash_agent.disturbance``); the
  agent reports it as ``latency_ms``;
- a *model* has the latency :func:`model_latency_ms`: the median of the visit latencies of its
  undisturbed visits (status ``ok``; a ``disturbed`` visit never counts), leaving out a visit whose
  repeat spread (:func:`visit_spread`, the interquartile range over the median) is more than
  :data:`SPREAD_FACTOR` times the model's usual spread (the median over its visits) and above
  :data:`SPREAD_FLOOR`, when there are at least three visits: a neighbour that leaves no trace in
  /proc (an SMT sibling, a memory-bandwidth hog on another core) tends to come and go during a
  visit and widens it; one that stays the whole visit cannot be told from the model. One visit (``nnflash
  profile``) and five (``nnflash calibrate --passes 5``) estimate the same quantity: a median has
  no bias that grows with the number of visits, unlike the minimum, which drifts down as visits
  are added, so a prediction and a later ``profile`` of the model on a quiet device agree.

Other conventions:

- percentiles use linear interpolation between order statistics (numpy's default, "type 7");
- ``std`` is the sample standard deviation (n - 1 in the denominator; 0.0 for one sample);
- the 95% confidence interval of the median is distribution-free: the order statistics
  ``[x_(k), x_(n-k+1)]`` with the largest ``k`` such that
  ``2 * P(Binomial(n, 1/2) <= k - 1) <= 0.05``. Its exact coverage ``1 - 2 * P(B <= k - 1)`` is
  reported too. With fewer than 6 samples no such ``k`` exists; the interval is then ``[min, max]``
  and the reported coverage (``1 - 2 / 2**n``) is below 95%.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "percentile",
    "median_ci",
    "summarize",
    "visit_latency_ms",
    "model_latency_ms",
    "visit_latency_of",
    "visit_spread",
    "visit_spread_of",
    "SPREAD_FACTOR",
    "SPREAD_FLOOR",
]

#: a visit whose repeat spread is this many times the model's usual one (and above SPREAD_FLOOR)
#: is left out of the model's latency, when the model has at least three visits
SPREAD_FACTOR = 3.0
SPREAD_FLOOR = 0.05


def percentile(sorted_xs: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted data, linear interpolation."""
    n = len(sorted_xs)
    if n == 0:
        raise ValueError("percentile of no data")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} outside 0..100")
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return float(sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * frac)


def _binom_half_cdf(n: int) -> List[float]:
    """cdf[k] = P(Binomial(n, 1/2) <= k) for k = 0..n, computed in log space (fine for large n)."""
    log_half_n = -n * math.log(2.0)
    cdf: List[float] = []
    acc = 0.0
    for k in range(n + 1):
        logp = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + log_half_n
        acc += math.exp(logp)
        cdf.append(min(acc, 1.0))
    return cdf


def median_ci(sorted_xs: Sequence[float], confidence: float = 0.95) -> Tuple[float, float, float]:
    """Distribution-free CI of the median from order statistics: ``(lo, hi, coverage)``."""
    n = len(sorted_xs)
    if n == 0:
        raise ValueError("median CI of no data")
    alpha = 1.0 - confidence
    cdf = _binom_half_cdf(n)
    best_k = 1  # 1-based rank; k = 1 gives [min, max]
    for k in range(1, n // 2 + 1):
        if 2.0 * cdf[k - 1] <= alpha:
            best_k = k
        else:
            break
    coverage = 1.0 - 2.0 * cdf[best_k - 1]
    return float(sorted_xs[best_k - 1]), float(sorted_xs[n - best_k]), coverage


def summarize(samples: Sequence[float]) -> Dict[str, object]:
    """The summary fields of a measurement record (names carry the unit: ms)."""
    xs = sorted(float(x) for x in samples)
    n = len(xs)
    if n == 0:
        raise ValueError("no samples")
    mean = math.fsum(xs) / n
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1) if n > 1 else 0.0
    lo, hi, coverage = median_ci(xs)
    return {
        "latency_ms_median": percentile(xs, 50.0),
        "latency_ms_mean": mean,
        "latency_ms_p90": percentile(xs, 90.0),
        "latency_ms_p99": percentile(xs, 99.0),
        "latency_ms_std": math.sqrt(var),
        "latency_ms_min": xs[0],
        "latency_ms_max": xs[-1],
        "latency_ms_ci95": [lo, hi],
        "latency_ms_ci95_coverage": coverage,
        "n_samples": n,
    }


def visit_latency_ms(samples_ms: Sequence[float], repeat_disturbed: Optional[Sequence[bool]] = None) -> float:
    """The latency of one visit: the median of the samples of its undisturbed repeats. Without
    per-repeat flags (a record of protocol v1), or when every repeat was disturbed (such a visit is
    ``disturbed`` and never used, but still gets a figure), the median of all samples."""
    xs = [float(x) for x in samples_ms]
    if not xs:
        raise ValueError("no samples")
    if repeat_disturbed is not None and len(repeat_disturbed) == len(xs):
        clean = [x for x, bad in zip(xs, repeat_disturbed) if not bad]
        if clean:
            xs = clean
    return percentile(sorted(xs), 50.0)


def visit_spread(samples_ms: Sequence[float], repeat_disturbed: Optional[Sequence[bool]] = None) -> float:
    """The repeat spread of a visit: interquartile range over median of its undisturbed repeats
    (all of them without flags or when every one was disturbed)."""
    xs = [float(x) for x in samples_ms]
    if repeat_disturbed is not None and len(repeat_disturbed) == len(xs):
        xs = [x for x, bad in zip(xs, repeat_disturbed) if not bad] or xs
    xs.sort()
    if not xs:
        raise ValueError("no samples")
    mid = percentile(xs, 50.0)
    return (percentile(xs, 75.0) - percentile(xs, 25.0)) / mid if mid > 0 else 0.0


def model_latency_ms(visit_latencies_ms: Sequence[float], spreads: Optional[Sequence[Optional[float]]] = None) -> float:
    """The latency of a model: the median of its undisturbed visits' latencies, without the visits
    whose spread is unusual (see the module docstring; the caller passes only visits with status
    ``ok``, and their :func:`visit_spread_of` when it has them)."""
    lats = [float(x) for x in visit_latencies_ms]
    if not lats:
        raise ValueError("no visits")
    if spreads is not None and len(spreads) == len(lats) and len(lats) >= 3:
        known = sorted(float(s) for s in spreads if s is not None)
        if len(known) >= 3:
            limit = max(SPREAD_FACTOR * percentile(known, 50.0), SPREAD_FLOOR)
            kept = [x for x, s in zip(lats, spreads) if s is None or float(s) <= limit]
            lats = kept or lats
    return percentile(sorted(lats), 50.0)


def visit_latency_of(row: Mapping[str, Any]) -> Optional[float]:
    """A visit's latency from a measurement record (the agent's ``measure`` result) or a stored
    measurement row: its ``latency_ms`` (protocol v2), else the one in its ``summary``, else
    ``latency_ms_median`` (older records, every repeat counted). None when it has none."""
    value = row.get("latency_ms")
    summary = row.get("summary")
    if value is None and isinstance(summary, Mapping):
        value = summary.get("latency_ms")
    if value is None:
        value = row.get("latency_ms_median")
    try:
        out = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return out if out is not None and math.isfinite(out) and out > 0 else None


def visit_spread_of(row: Mapping[str, Any]) -> Optional[float]:
    """A visit's repeat spread from a measurement record or a stored row (its ``disturbance``,
    directly or in its ``summary``); None for records of protocol v1."""
    dist = row.get("disturbance")
    summary = row.get("summary")
    if dist is None and isinstance(summary, Mapping):
        dist = summary.get("disturbance")
    value = dist.get("spread") if isinstance(dist, Mapping) else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
