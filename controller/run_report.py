"""What `nnflash run` writes: ``report.html`` leading with the answer, ``designs.jsonl``, the JSON summary.

Everything here is derived from a :class:`~nnflash.controller.runloop.LoopResult` and the results
database; nothing is measured or fitted here.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np

from nnflash.controller.profiling import stored_rows
from nnflash.controller.report import disturbance_note
from nnflash.controller.runloop import CostState, LoopResult, Verified, meta_of, specs_by_id
from nnflash.controller.store import ResultsDB
from nnflash.models.metrics import compute_metrics
from nnflash_agent.fileio import atomic_write_text
from nnflash_agent.stats import model_latency_ms, visit_latency_of

__all__ = ["summary", "write_designs", "write_run_report"]


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def design_line(v: Verified, round_number: int) -> dict[str, Any]:
    m = compute_metrics(v.design.spec)
    out = v.to_dict()
    out["nn_mass"] = m.get("nn_mass")
    out["nn_degree"] = m.get("nn_degree")
    out["round"] = round_number
    return _clean(out)


def write_designs(result: LoopResult, path: str | Path) -> Path:
    """The final round's designs, one JSON line each (the search's line format plus ``measured``)."""
    lines = [json.dumps(design_line(v, result.final.number), sort_keys=True) for v in result.final.designs]
    p = Path(path)
    atomic_write_text(p, "".join(line + "\n" for line in lines))
    return p


def summary(result: LoopResult, report_path: Optional[Path], designs_path: Optional[Path]) -> dict[str, Any]:
    """The ``--json`` object: the designs, the rounds, the cost models, stage times, paths."""
    return _clean(
        {
            "device": result.request.device.name,
            "runtime": result.request.runtime,
            "threads": list(result.request.threads),
            "space": result.request.space.name,
            "objective": result.objective.name,
            "objective_note": result.objective_note,
            "designs": [design_line(v, result.final.number) for v in result.final.designs],
            "rounds": [
                {
                    "round": r.number,
                    "margin": r.margin,
                    "cost_models": {str(k): v for k, v in r.model_ids.items()},
                    "designs": [v.design.spec_id for v in r.designs],
                    "misses": r.added,
                    "infeasible": [{"limit_latency_ms": lim, "message": msg} for lim, msg in r.infeasible],
                }
                for r in result.rounds
            ],
            "cost_models": [
                {
                    "threads": st.threads,
                    "id": st.model_id,
                    "path": st.path,
                    "source": st.source,
                    "cv": st.cv,
                    "rejected_stored": st.rejected,
                }
                for st in result.states
            ],
            "calibration": [
                {"threads": st.threads, "id": st.model_id, "source": st.source, "rejected_stored": st.rejected}
                for st in result.initial_states
            ],
            "stage_s": result.stage_s,
            "measurements": result.disturbed,
            "load": result.busy,
            "report": str(report_path) if report_path else None,
            "designs_file": str(designs_path) if designs_path else None,
        }
    )


# ------------------------------------------------------------------------------------ plots


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _front_plot(result: LoopResult) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    for r in result.rounds[:-1]:
        ax.scatter(
            [v.design.latency_ms for v in r.designs],
            [v.design.objective for v in r.designs],
            s=14,
            color="0.7",
            label=f"round {r.number}: predicted" if r.number == 1 else None,
        )
    final = sorted(result.final.designs, key=lambda v: v.design.latency_ms)
    xs = [v.design.latency_ms for v in final]
    ys = [v.design.objective for v in final]
    ax.step(xs, ys, where="post", color="C0", lw=1.5, marker="o", ms=5, label="recommended: predicted latency")
    mx = [(v.measured_ms, v.design.objective, v) for v in final if v.measured_ms is not None]
    for x, y, v in mx:
        ax.plot([v.design.latency_ms, x], [y, y], color="C3", lw=0.8, alpha=0.6)
    ax.scatter(
        [x for x, _, _ in mx],
        [y for _, y, _ in mx],
        marker="x",
        s=50,
        color="C3",
        label="measured on the device",
        zorder=3,
    )
    for lim in sorted({v.limit_ms for v in final if v.limit_ms is not None}):
        ax.axvline(lim, color="0.85", lw=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms); grey lines: the limits")
    ax.set_ylabel(result.objective.name)
    ax.set_title(f"{result.objective.name} against latency, space {result.request.space.name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _png(fig)


def _measured(result: LoopResult, st: CostState, ids: set[str]) -> dict[str, float]:
    req = result.request
    per: dict[str, list[float]] = {}
    for r in stored_rows(req.db_path, [req.device.name], req.runtime, st.threads, ids, req.precision):
        v = visit_latency_of(r)
        if v is not None:
            per.setdefault(str(r["spec_id"]), []).append(v)
    return {k: model_latency_ms(v) for k, v in per.items()}


def _calibration_plot(result: LoopResult, st: CostState) -> tuple[str, str]:
    """Cross-validated predictions of the final model's training data against their measurements,
    the spot check's and every round's designs (predicted before they were measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = meta_of(st.model)
    cvp = meta.get("cv_predicted") or {}
    ids = set(st.training_ids)
    meas = _measured(result, st, ids)
    pairs = [(meas[k], float(cvp[k])) for k in meas if k in cvp]
    in_sample = not pairs
    if in_sample:  # a model fitted elsewhere: its in-sample predictions, said so
        specs_ids = sorted(meas)
        specs = specs_by_id(result.request.db_path, specs_ids)
        pred = st.model.predict_latency([specs[k] for k in specs_ids if k in specs])
        pairs = [(meas[k], float(p)) for k, p in zip([k for k in specs_ids if k in specs], pred)]
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    if pairs:
        m, p = np.array(pairs).T
        ax.scatter(m, p, s=16, alpha=0.8, label=("in-sample" if in_sample else "cross-validated") + f" ({len(m)})")
    ver = [
        (v.measured_ms, v.design.latency_ms, r.number)
        for r in result.rounds
        if st.threads in r.model_ids
        for v in r.designs
        if v.measured_ms is not None and v.design.deployment.threads == st.threads
    ]
    if ver:
        ax.scatter(
            [a for a, _, _ in ver],
            [b for _, b, _ in ver],
            marker="x",
            s=40,
            color="C3",
            label=f"recommended designs, predicted before measuring ({len(ver)})",
        )
    # the spot check predicted with the stored model: shown when that model was reused
    checked = next((s for s in result.initial_states if s.threads == st.threads and s.source == "reused"), None)
    if checked is not None and checked.spot is not None:
        spot = checked.spot
        sp = [(m_, p_) for m_, p_ in zip(spot.measured_ms, spot.predicted_ms) if m_]
        if sp:
            ax.scatter(
                [a for a, _ in sp],
                [b for _, b in sp],
                marker="s",
                s=30,
                color="C2",
                label=f"spot check of stored model #{checked.model_id}",
            )
    allv = [x for pr in pairs for x in pr] + [x for a, b, _ in ver for x in (a, b)]
    if allv:
        lo, hi = min(allv) * 0.8, max(allv) * 1.25
        xx = np.geomspace(lo, hi, 50)
        ax.plot(xx, xx, color="k", lw=0.8, zorder=1)
        ax.fill_between(xx, xx * 0.9, xx * 1.1, color="0.85", label="+-10%", zorder=0)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(f"cost model #{st.model_id} ({st.model.kind}), {st.threads} thread(s)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    errs = [abs(p_ / m_ - 1) for m_, p_ in pairs if m_ > 0]
    figures = (
        f"{len(pairs)} models, " + ("in-sample" if in_sample else "cross-validated") + ": "
        f"median |error| {np.median(errs):.1%}, {np.mean(np.array(errs) <= 0.10):.0%} within +-10%"
        if errs
        else "no measurements"
    )
    return _png(fig), figures


# ------------------------------------------------------------------------------------ the page


def _fmt(x: Any, spec: str = ".3f", none: str = "-") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    return format(x, spec)


def _file_cell(path: str, base: Path) -> str:
    """A link to an exported file, named relative to the report's folder where it lies below it."""
    p = Path(path)
    try:
        name = str(p.resolve().relative_to(base.resolve()))
    except ValueError:
        name = p.name
    return f"<a href='{html.escape(p.resolve().as_uri())}'><code>{html.escape(name)}</code></a>"


def _objective_cell(v: Verified) -> str:
    if v.design.accuracy is not None:
        return f"{v.design.accuracy:.1%}"
    return f"{v.design.objective:,.1f}"


def write_run_report(result: LoopResult, path: str | Path, *, notes: Sequence[str] = ()) -> Path:
    """Write ``report.html`` (self-contained: plots embedded) and return its path."""
    req = result.request
    esc = html.escape
    out = Path(path)
    final = sorted(result.final.designs, key=lambda v: (v.limit_ms or math.inf, v.design.latency_ms))
    acc_name = "predicted accuracy" if result.objective.predictor is not None else "NN-Degree (proxy)"
    ok = [v for v in final if v.meets_limit and v.status == "ok"]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>nnflash run on {esc(req.device.name)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}"
        "table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 7px;"
        "text-align:right;font-size:13px}th{background:#f3f3f3}td.l,th.l{text-align:left}"
        ".answer{background:#eef6ee;border:1px solid #9c9;padding:.6em 1em;border-radius:6px}"
        ".bad{color:#b00}.good{color:#070}img{max-width:100%}.row img{max-width:49%}"
        "code{font-size:12px}</style></head><body>",
        f"<h1>Recommended networks for {esc(req.device.name)} ({esc(req.runtime)}, "
        f"{esc(', '.join(str(t) for t in req.threads))} thread(s), {esc(req.precision)})</h1>",
    ]
    close = [v for v in final if v.prediction_error is not None and abs(v.prediction_error) <= req.tolerance]
    left = [v for v in final if v.miss(req.tolerance)]
    lead = (
        f"{len(ok)} of {len(final)} recommended design(s) met their latency limit when measured on the device "
        f"after {len(result.rounds)} round(s) of search and verification; {len(close)} of {len(final)} were "
        f"predicted within +-{req.tolerance:.0%}."
        + (
            f" The loop stopped at its round limit with {len(left)} design(s) still off or over their limit "
            "(not refitted): rerun, or calibrate on a quieter device."
            if left
            else ""
        )
        + f" Objective: {result.objective_note}."
    )
    parts.append(f"<div class='answer'><p><b>The answer.</b> {esc(lead)}</p>")
    energy = any(v.design.energy_mj is not None or v.measured_mj is not None for v in final)
    parts.append(
        "<table><tr><th>latency limit ms</th><th class='l'>spec</th><th class='l'>deployment</th>"
        f"<th>{esc(acc_name)}</th><th>predicted ms</th><th>measured ms</th><th>error</th><th>meets limit</th>"
        + ("<th>predicted mJ</th><th>measured mJ</th>" if energy else "")
        + "<th>params</th><th>MACs</th><th>NN-Mass</th><th>NN-Degree</th>"
        "<th class='l'>files</th></tr>"
    )
    for v in final:
        m = compute_metrics(v.design.spec)
        err = v.prediction_error
        meets = v.meets_limit
        cls = "good" if meets else "bad"
        parts.append(
            f"<tr><td>{_fmt(v.limit_ms, '.3g')}</td><td class='l'><code>{esc(v.design.spec_id)}</code></td>"
            f"<td class='l'>{esc(v.design.deployment.label)}</td><td>{_objective_cell(v)}</td>"
            f"<td>{_fmt(v.design.latency_ms)}</td><td>{_fmt(v.measured_ms, '.3f', esc(v.status))}</td>"
            f"<td>{_fmt(err, '+.1%')}</td><td class='{cls}'>{'-' if meets is None else ('yes' if meets else 'NO')}</td>"
            + (f"<td>{_fmt(v.design.energy_mj)}</td><td>{_fmt(v.measured_mj)}</td>" if energy else "")
            + f"<td>{v.design.params:,}</td><td>{v.design.macs:,}</td><td>{m['nn_mass']:.1f}</td>"
            f"<td>{m['nn_degree']:.1f}</td>"
            f"<td class='l'>{'<br>'.join(_file_cell(f, out.parent) for f in v.files) or '-'}</td></tr>"
        )
    parts.append("</table>")
    parts.append(
        "<p>Designs with their specs: <code>designs.jsonl</code>; cost models: "
        + ", ".join(f"<code>{esc(st.path)}</code>" for st in result.states)
        + ".</p></div>"
    )
    if result.objective.predictor is None:
        parts.append(
            "<p><b>NN-Degree is not an accuracy.</b> It is FLASH's training-free objective, a topology measure "
            "that grows with accuracy among networks of one space; train networks (<code>--train-budget</code>) "
            "or give a predictor (<code>--accuracy</code>) for predicted accuracies.</p>"
        )
    for n in notes:
        parts.append(f"<p>{esc(n)}</p>")
    for lim, msg in result.final.infeasible:
        parts.append(f"<p class='bad'>Limit {_fmt(lim, '.3g')} ms: {esc(msg)}</p>")

    parts.append("<h2>Pareto front, predicted and measured</h2>")
    parts.append(f"<img alt='front' src='data:image/png;base64,{_front_plot(result)}'>")

    parts.append("<h2>Calibration: predicted against measured</h2><div class='row'>")
    figs = []
    for st in result.states:
        img, figures = _calibration_plot(result, st)
        parts.append(f"<img alt='calibration' src='data:image/png;base64,{img}'>")
        figs.append((st, figures))
    parts.append("</div><ul>")
    for st, figures in figs:
        cv = st.cv
        parts.append(
            f"<li>cost model #{st.model_id} ({esc(st.source)}, {st.threads} thread(s)): {esc(figures)}; "
            f"cross-validated p90 error {_fmt(cv.get('p90'), '.1%')}, Spearman {_fmt(cv.get('spearman'), '.3f')}</li>"
        )
    for st in result.initial_states:
        if st.spot is not None:
            sc = st.spot
            parts.append(
                f"<li>spot check of the stored model, {st.threads} thread(s): {len(sc.spec_ids)} fresh models, "
                f"median error {_fmt(sc.median_error, '.1%')}: {'passed, reused' if sc.passed else 'failed'}</li>"
            )
        if st.rejected:
            parts.append(f"<li>not reused: {esc(st.rejected)}; calibrated anew</li>")
    parts.append("</ul>")

    parts.append("<h2>The loop: rounds and what changed</h2>")
    parts.append(
        "<table><tr><th>round</th><th>cost model(s)</th><th>margin</th><th>designs</th><th>met limit</th>"
        "<th>median |pred/meas-1|</th><th class='l'>added to the training data</th><th class='l'>changed</th></tr>"
    )
    prev: set[str] = set()
    for r in result.rounds:
        ids = {v.design.spec_id for v in r.designs}
        errs = [abs(v.prediction_error) for v in r.designs if v.prediction_error is not None]
        met = sum(1 for v in r.designs if v.meets_limit)
        changed = (
            "first search"
            if r.number == 1
            else f"{len(ids - prev)} new design(s), {len(ids & prev)} kept"
            + f"; margin {result.rounds[r.number - 2].margin:.1%} -> {r.margin:.1%}"
        )
        added = "<br>".join(f"<code>{esc(k)}</code>: {esc(v)}" for k, v in r.added.items()) or "-"
        parts.append(
            f"<tr><td>{r.number}</td><td>{esc(', '.join(f'#{i}' for i in r.model_ids.values()))}</td>"
            f"<td>{r.margin:.1%}</td><td>{len(r.designs)}</td><td>{met}/{len(r.designs)}</td>"
            f"<td>{_fmt(float(np.median(errs)) if errs else None, '.1%')}</td>"
            f"<td class='l'>{added}</td><td class='l'>{esc(changed)}</td></tr>"
        )
        prev = ids
    parts.append("</table>")

    parts.append("<h2>What the margin cost</h2>")
    parts.append(
        f"<p>The search keeps predicted latency {result.final.margin:.1%} inside each limit (the cost models' "
        "cross-validated 90th-percentile error). Without it, the best design under each limit would reach:</p>"
        f"<table><tr><th>limit ms</th><th>{esc(result.objective.name)} with margin</th><th>without margin</th>"
        "<th>cost</th></tr>"
    )
    for v in final:
        nm = v.objective_no_margin
        cost = None if nm is None or nm == 0 else (nm - v.design.objective) / abs(nm)
        parts.append(
            f"<tr><td>{_fmt(v.limit_ms, '.3g')}</td><td>{v.design.objective:,.4g}</td><td>{_fmt(nm, ',.4g')}</td>"
            f"<td>{_fmt(cost, '.1%')}</td></tr>"
        )
    parts.append("</table>")

    parts.append("<h2>The device</h2>")
    facts = result.device_facts or {}
    keep = (
        "board_model",
        "machine",
        "cpu_model",
        "cpu_count",
        "mem_total_bytes",
        "os",
        "release",
        "python",
        "agent_version",
        "runtimes",
    )
    parts.append("<table>")
    for k in keep:
        if facts.get(k) is not None:
            parts.append(f"<tr><th class='l'>{esc(k)}</th><td class='l'>{esc(json.dumps(facts[k]))}</td></tr>")
    parts.append("</table>")
    with ResultsDB(req.db_path, readonly=True) as db:
        ids_all = sorted(
            {v.design.spec_id for r in result.rounds for v in r.designs}
            | {i for st in result.states for i in st.training_ids}
        )
        parts.append(f"<p>State during measurement: {esc(disturbance_note(db, ids_all))}</p>")
    if result.busy:
        parts.append(f"<p>{esc(str(result.busy.get('note', '')))}</p>")
    stage = ", ".join(f"{k} {v:.0f} s" for k, v in result.stage_s.items())
    parts.append(f"<p>Wall time by stage: {esc(stage)}.</p>")
    parts.append(
        f"<p>Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from "
        f"<code>{esc(str(Path(req.db_path).resolve()))}</code>.</p></body></html>"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "\n".join(parts))
    return out
