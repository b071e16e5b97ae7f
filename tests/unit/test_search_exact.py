"""The search's methods against brute force, the no-violation re-check, infeasible limits, co-design."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nnflash.calibration import make_model
from nnflash.calibration.synthetic import DEFAULT_TRUTH, known_roofline, synthetic_energy, synthetic_latency
from nnflash.models.space import CellRange, Space, get_space
from nnflash.search import (
    Deployment,
    Infeasible,
    Limits,
    Objective,
    SearchError,
    build_tables,
    exact,
    meets,
    pareto_front,
    recheck,
    search,
)
from nnflash.search.evaluator import CellEvaluator, network_costs
from nnflash.search.exact import ADDITIVE, _Chain, _objective_terms, cell_configs

# small enough to enumerate (18,944 networks); widths below the SIMD block and not multiples of 4,
# caps of every residue modulo 4
TINY = Space(
    "tiny",
    (
        CellRange((2, 3, 4), (2, 4, 6), 6),
        CellRange((2, 3, 4), (3, 8), 9),
        CellRange((2, 3), (5, 8), 7),
    ),
    input_shape=(1, 12, 12),
)
NND = Objective.parse("nn-degree")


def _energy_deployment(space: Space, name: str = "") -> Deployment:
    specs = space.sample(30, seed=4)
    y = synthetic_latency(specs, model=known_roofline(conv_algorithm="ort_nchwc8"))
    energy = make_model("energy").fit(specs, synthetic_energy(specs, y), latency_ms=y)
    return Deployment.from_model(energy, name=name)


@pytest.fixture(scope="module")
def tiny() -> dict:
    dep = _energy_deployment(TINY)
    cfg = [cell_configs(TINY, c) for c in range(3)]
    idx = np.array(list(itertools.product(*[range(len(c[0])) for c in cfg])))
    d, w, t = (np.stack([cfg[c][k][idx[:, c]] for c in range(3)], axis=1) for k in range(3))
    costs = network_costs(CellEvaluator(TINY, dep.latency_model, dep.energy_model), d, w, t)
    return {"dep": dep, "tables": build_tables(TINY, [dep], NND), "costs": costs, "n": len(d), "idx": idx}


def _brute_top(costs: dict, limits: Limits, k: int) -> np.ndarray:
    ok = np.ones(len(costs["latency_ms"]), dtype=bool)
    for name, value in limits.given().items():
        ok &= costs[name[4:]] <= value
    return np.sort(costs["nn_degree"][ok])[::-1][:k]


def test_exact_matches_brute_force_on_an_enumerable_space(tiny: dict) -> None:
    c = tiny["costs"]
    assert tiny["n"] == TINY.count()
    q = lambda key, p: float(np.quantile(c[key], p))  # noqa: E731
    levels = [
        Limits(max_latency_ms=q("latency_ms", 0.02)),
        Limits(max_latency_ms=q("latency_ms", 0.4)),
        Limits(max_latency_ms=q("latency_ms", 0.9), max_params=q("params", 0.3)),
        Limits(max_energy_mj=q("energy_mj", 0.3)),
        Limits(max_latency_ms=q("latency_ms", 0.6), max_peak_memory_mb=q("peak_memory_mb", 0.2)),
        Limits(max_macs=q("macs", 0.5), max_params=q("params", 0.6)),
        Limits(),
    ]
    for limits in levels:
        result = search(TINY, [tiny["dep"]], NND, limits, method="exact", top_k=3, tables=tiny["tables"])
        want = _brute_top(c, limits, 3)
        np.testing.assert_allclose([d.objective for d in result.designs], want, rtol=1e-12, err_msg=str(limits))


def _several_limits(c: dict) -> list[Limits]:
    """Two, three, four and five limits at once, loose to tight, so that the prefixes' bounds
    prune and the beam's incumbent is sometimes not the optimum."""
    q = lambda key, p: float(np.quantile(c[key], p))  # noqa: E731
    rng = np.random.default_rng(7)
    names = ["max_latency_ms", "max_energy_mj", "max_params", "max_macs", "max_peak_memory_mb"]
    levels = [
        Limits(max_latency_ms=q("latency_ms", 0.5), max_energy_mj=q("energy_mj", 0.3)),
        Limits(max_params=q("params", 0.2), max_macs=q("macs", 0.7)),
        Limits(max_latency_ms=q("latency_ms", 0.3), max_energy_mj=q("energy_mj", 0.6), max_params=q("params", 0.4)),
        Limits(max_latency_ms=q("latency_ms", 0.7), max_energy_mj=q("energy_mj", 0.5), max_params=q("params", 0.5),
               max_macs=q("macs", 0.4)),
        Limits(max_latency_ms=q("latency_ms", 0.6), max_energy_mj=q("energy_mj", 0.6), max_params=q("params", 0.6),
               max_macs=q("macs", 0.6), max_peak_memory_mb=q("peak_memory_mb", 0.5)),
    ]  # fmt: skip
    for _ in range(16):  # random subsets of two or more limits at random quantiles
        chosen = rng.choice(names, size=int(rng.integers(2, 6)), replace=False)
        levels.append(Limits(**{n: q(n[4:], float(rng.uniform(0.05, 0.9))) for n in chosen}))
    return levels


@pytest.mark.parametrize("beam", [1, 32])
@pytest.mark.parametrize("top_k", [1, 3, 7])
def test_exact_matches_brute_force_under_several_limits_at_once(
    tiny: dict, top_k: int, beam: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A beam of one prefix gives a poor incumbent: the bounds, not the beam, must keep the optimum."""
    monkeypatch.setattr(exact, "_BEAM", beam)
    c = tiny["costs"]
    for limits in _several_limits(c):
        want = _brute_top(c, limits, top_k)
        if not len(want):
            with pytest.raises(Infeasible):
                search(TINY, [tiny["dep"]], NND, limits, method="exact", top_k=top_k, tables=tiny["tables"])
            continue
        result = search(TINY, [tiny["dep"]], NND, limits, method="exact", top_k=top_k, tables=tiny["tables"])
        got = [d.objective for d in result.designs]
        np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=f"top {top_k} under {limits}")


def test_exact_top_k_beyond_the_feasible_designs(tiny: dict) -> None:
    """Fewer feasible designs than asked for: the beam finds no incumbent, and every one is returned."""
    c = tiny["costs"]
    lat, params = c["latency_ms"], c["params"]
    cheapest = np.argsort(lat)[:40]
    limits = Limits(max_latency_ms=float(lat[cheapest[-1]]), max_params=float(np.median(params[cheapest])))
    want = _brute_top(c, limits, 1000)
    assert 0 < len(want) < 40
    result = search(TINY, [tiny["dep"]], NND, limits, method="exact", top_k=len(want) + 5, tables=tiny["tables"])
    np.testing.assert_allclose([d.objective for d in result.designs], want, rtol=1e-12)


@pytest.mark.parametrize("stock", [False, True])
@pytest.mark.parametrize("peak", [False, True])
def test_completion_bounds_are_upper_bounds(tiny: dict, peak: bool, stock: bool) -> None:
    """The bound that prunes a prefix is at least the best design that completes it within every
    limit (by brute force over the whole space), for prefixes of one and of two cells, whether the
    staircases are the ones built with the tables (no peak-memory limit: looser under one) or
    computed for the limits at hand."""
    c, idx = tiny["costs"], tiny["idx"]
    table = tiny["tables"].tables[0]
    q = lambda key, p: float(np.quantile(c[key], p))  # noqa: E731
    limits = Limits(max_latency_ms=q("latency_ms", 0.5), max_energy_mj=q("energy_mj", 0.4),
                    max_params=q("params", 0.5), max_macs=q("macs", 0.6),
                    max_peak_memory_mb=q("peak_memory_mb", 0.6) if peak else None)  # fmt: skip
    eff = limits.given()
    dims = [ADDITIVE[k] for k in ADDITIVE if k in eff]
    budgets = {ADDITIVE[k]: v for k, v in eff.items() if k in ADDITIVE}
    terms = _objective_terms(table, NND)
    chain = _Chain(table, terms, dims, budgets, eff.get("max_peak_memory_mb"), table.completions if stock else None)
    assert (chain.after[1][0][0] is table.completions[dims[0]][1][0]) == stock
    feasible = np.ones(len(idx), dtype=bool)
    for name, value in eff.items():
        feasible &= c[name[4:]] <= value
    best = np.where(feasible, c["nn_degree"], -np.inf)
    cells = table.cells
    for n_cells in (1, 2):
        prefixes, inverse = np.unique(idx[:, :n_cells], axis=0, return_inverse=True)
        obj = np.zeros(len(prefixes))
        cost = np.zeros((len(prefixes), len(dims)))
        state = np.zeros(len(prefixes), dtype=np.int64)
        for p in range(n_cells):
            x = prefixes[:, p]
            obj += cells[p].metric["nn_degree"][x]
            cost += np.stack([cells[p].costs[dn][state, x] for dn in dims], axis=1)
            state = cells[p].out_state[x]
        bound = chain.bound(n_cells, obj, cost, state)
        truth = np.full(len(prefixes), -np.inf)  # the best feasible design through each prefix
        np.maximum.at(truth, inverse.ravel(), best)
        assert np.all(bound >= truth - 1e-9), n_cells
        assert np.isfinite(truth).any() and np.all(np.isfinite(bound[np.isfinite(truth)]))


def test_exact_front_matches_brute_force(tiny: dict) -> None:
    c = tiny["costs"]
    front = pareto_front(TINY, [tiny["dep"]], NND, against="latency", tables=tiny["tables"])
    # brute force: best objective at each latency, and the distinct steps of that staircase
    order = np.argsort(c["latency_ms"], kind="stable")
    best = np.maximum.accumulate(c["nn_degree"][order])
    steps = np.unique(best)
    assert [d.objective for d in front] == pytest.approx(list(steps))
    lat = [d.latency_ms for d in front]
    assert lat == sorted(lat)
    for d in front:  # no design at most as fast is better
        assert c["nn_degree"][c["latency_ms"] <= d.latency_ms * (1 + 1e-12)].max() == pytest.approx(d.objective)


@pytest.mark.parametrize("method", ["exact", "shgo", "random"])
def test_nothing_returned_violates_a_limit(method: str) -> None:
    space = get_space("flash-fmnist")
    dep = _energy_deployment(space)
    tables = build_tables(space, [dep], NND)
    lat = dep.latency_model.predict(space.sample(200, seed=9))
    energy = dep.energy_model.predict(space.sample(200, seed=9))  # type: ignore[union-attr]
    for limits in (
        Limits(max_latency_ms=float(np.quantile(lat, 0.1)), max_params=60_000, max_peak_memory_mb=0.2),
        Limits(max_latency_ms=float(np.quantile(lat, 0.5)), max_params=60_000),
        Limits(max_energy_mj=float(np.quantile(energy, 0.3)), max_peak_memory_mb=0.2),
    ):
        result = search(space, [dep], NND, limits, method=method, top_k=2, margin=0.05, tables=tables)
        assert result.designs
        for design in result.designs:
            margins = recheck(design.spec, dep, limits)  # the full cost models, from the spec alone
            assert meets(margins, 0.05), (method, margins)
            assert all(margins[k] >= 0.05 for k in ("max_latency_ms", "max_energy_mj") if k in margins)
            assert design.margins == pytest.approx(margins)


def test_shgo_and_random_against_the_exact_optimum() -> None:
    space = get_space("flash-fmnist")
    dep = Deployment.from_model(known_roofline(conv_algorithm="ort_nchwc16"))
    tables = build_tables(space, [dep], NND)
    lat = dep.latency_model.predict(space.sample(300, seed=2))
    regrets = []
    for limit in np.quantile(lat, [0.1, 0.3, 0.5, 0.7, 0.9]):
        limits = Limits(max_latency_ms=float(limit))
        best = search(space, [dep], NND, limits, method="exact", tables=tables).best.objective
        shgo = search(space, [dep], NND, limits, method="shgo", tables=tables)
        rand = search(space, [dep], NND, limits, method="random", tables=tables, evaluations=shgo.evaluations)
        assert shgo.best.objective <= best + 1e-9 and rand.best.objective <= best + 1e-9
        regrets.append((best - shgo.best.objective) / best)
    assert max(regrets) <= 0.005  # the goal: within 0.5% of the exact optimum


def test_infeasible_limits_say_what_each_limit_can_reach(tiny: dict) -> None:
    c = tiny["costs"]
    params = float(np.quantile(c["params"], 0.2))
    limits = Limits(max_latency_ms=float(c["latency_ms"].min()) * 0.5, max_params=params)
    with pytest.raises(Infeasible) as info:
        search(TINY, [tiny["dep"]], NND, limits, tables=tiny["tables"])
    tight = info.value.tightest
    assert tight["max_latency_ms"] == pytest.approx(c["latency_ms"][c["params"] <= params].min(), rel=1e-9)
    assert tight["max_params"] is None  # no design is that fast whatever its size
    msg = str(info.value)
    assert "max_latency_ms" in msg and "tightest reachable" in msg and "max_params" in msg


def test_co_design_chooses_the_deployment_with_the_network() -> None:
    space = get_space("flash-fmnist")
    slow_truth = dict(DEFAULT_TRUTH, gflops={k: v / 3 for k, v in DEFAULT_TRUTH["gflops"].items()})
    fast = Deployment(known_roofline(conv_algorithm="ort_nchwc16"), runtime="onnxruntime", threads=2, precision="fp32")
    slow = Deployment(known_roofline(slow_truth, conv_algorithm="ort_nchwc8"), runtime="onnxruntime", threads=1,
                      precision="fp32")  # fmt: skip
    limit = float(np.median(slow.latency_model.predict(space.sample(100, seed=1))))
    limits = Limits(max_latency_ms=limit)
    tables = build_tables(space, [slow, fast], NND)
    both = search(space, [slow, fast], NND, limits, tables=tables)
    each = {d.threads: search(space, [d], NND, limits).best.objective for d in (slow, fast)}
    assert each[2] > each[1]  # the faster configuration affords a better network under the same limit
    assert both.best.deployment is fast
    assert both.best.objective == pytest.approx(each[2])
    assert both.best.to_dict()["deployment"]["threads"] == 2


def test_bad_requests_are_clear_errors(tiny: dict) -> None:
    dep = tiny["dep"]
    latency_only = Deployment.from_model(known_roofline(conv_algorithm="none"))
    with pytest.raises(SearchError, match="method"):
        search(TINY, [dep], NND, Limits(), method="annealing")
    with pytest.raises(SearchError, match="predicts no energy"):
        search(TINY, [latency_only], NND, Limits(max_energy_mj=1.0))
    with pytest.raises(SearchError, match="area"):
        search(TINY, [dep], NND, Limits(max_area_mm2=1.0))
    with pytest.raises(SearchError, match="must be a positive"):
        Limits(max_latency_ms=-1)
    with pytest.raises(SearchError, match="unknown objective"):
        Objective.parse("accuracy")
    a = Deployment(dep.latency_model, device="pi3")
    b = Deployment(dep.latency_model, device="pi4")
    with pytest.raises(SearchError, match="several devices"):
        search(TINY, [a, b], NND, Limits())
    multi = make_model("roofline")  # any object of kind multi is refused before use
    multi.kind = "multi"  # type: ignore[misc]
    with pytest.raises(SearchError, match="re-rank"):
        Objective.from_predictor(multi)


@pytest.mark.parametrize(
    "names",
    [("max_latency_ms",), ("max_latency_ms", "max_params"), ("max_energy_mj", "max_peak_memory_mb")],
)
def test_shgo_pair_exchange_leaves_no_improving_pair(tiny: dict, names: tuple[str, ...]) -> None:
    """The repair's pair exchange ends where no two cells, re-chosen together by brute force with the
    others fixed, do better within every limit; and it never leaves the budget."""
    from nnflash.search.exact import _active
    from nnflash.search.shgo import _Inner

    c = tiny["costs"]
    column = {"max_latency_ms": "latency_ms", "max_params": "params", "max_energy_mj": "energy_mj"}
    filled = {k: float(np.quantile(c[column[k]], 0.35)) for k in names if k in column}
    if "max_peak_memory_mb" in names:
        filled["max_peak_memory_mb"] = float(np.quantile(c["peak_memory_mb"], 0.6))
    limits = Limits(**filled)
    table = tiny["tables"].tables[0]
    terms = [ct.metric["nn_degree"] for ct in table.cells]
    dims, budgets, peak = _active(limits, 0.0)
    inner = _Inner(table, terms, dims, budgets, peak)
    bud = np.array([budgets[d] for d in dims])
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(6):  # from the cell level's designs for random splits
        obj0, cfgs0, miss = inner.design(inner.split(rng.uniform(0, 1, inner.k * 2)))
        if miss > 0 or not cfgs0:
            continue
        obj, cfgs = inner.exchange(list(cfgs0))
        assert obj >= obj0 - 1e-9
        got, cost, _ = inner.network(cfgs)
        assert got == pytest.approx(obj) and np.all(cost <= bud)
        for a, b in itertools.combinations(range(3), 2):
            for xa in range(len(table.cells[a].d)):
                for xb in range(len(table.cells[b].d)):
                    trial = list(cfgs)
                    trial[a], trial[b] = xa, xb
                    o2, c2, _ = inner.network(trial)
                    if np.isfinite(o2) and np.all(c2 <= bud):
                        assert o2 <= obj + 1e-9, (a, b, xa, xb)
        checked += 1
    assert checked >= 3
