"""HTML report of measurements, derived from the results database (never the other way round)."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nnflash.controller.store import EXPORT_COLUMNS, ResultsDB
from nnflash.models.metrics import compute_metrics
from nnflash.models.spec import parse_spec
from nnflash_agent.fileio import atomic_write_text
from nnflash_agent.stats import model_latency_ms, visit_latency_of, visit_spread_of


def disturbance_note(store: ResultsDB, spec_ids: Sequence[str] | None = None) -> str:
    """One sentence: how many stored measurements were disturbed, and how many models have only
    disturbed visits (no latency for them)."""
    wanted = set(spec_ids) if spec_ids is not None else None
    rows = [r for r in store.measurements() if wanted is None or r["spec_id"] in wanted]
    disturbed = [r for r in rows if r["status"] == "disturbed"]

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["spec_id"], r["device"], r["runtime"], r.get("threads"), r.get("precision"), r.get("visit"))

    ok = {key(r) for r in rows if r["status"] == "ok"}
    left = {key(r) for r in disturbed} - ok
    return (
        f"{len(disturbed)} of {len(rows)} stored measurement(s) were disturbed (other processes competed "
        f"for the CPUs, stolen time or throttling) and are left out; {len(left)} visit(s) of a model "
        "have no undisturbed measurement."
    )


def collect(store: ResultsDB, spec_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per measured model (spec, device, runtime, threads, precision) with an undisturbed
    (``ok``) visit, joined with the spec's analytic metrics. ``latency_ms`` is the model's latency
    as ``nnflash_agent.stats.model_latency_ms`` defines it over all its ok visits (calibration
    measures a model in several); ``visits`` counts them, and the mean and p90 are its first
    visit's."""
    rows = []
    wanted = set(spec_ids) if spec_ids is not None else None
    metrics_cache: dict[str, dict[str, Any]] = {}
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for m in store.measurements(status="ok", full=True):
        key = (m["spec_id"], m["device"], m["runtime"], m.get("threads"), m.get("precision"))
        groups.setdefault(key, []).append(m)
    for visits in groups.values():
        usable = [v for v in visits if visit_latency_of(v) is not None]
        if not usable:
            continue
        lats = [visit_latency_of(v) or 0.0 for v in usable]
        m = {k: visits[0].get(k) for k in EXPORT_COLUMNS}
        m.update(latency_ms=model_latency_ms(lats, [visit_spread_of(v) for v in usable]), visits=len(lats))
        sid = m["spec_id"]
        if wanted is not None and sid not in wanted:
            continue
        if sid not in metrics_cache:
            spec_row = store.get_spec(sid)
            if spec_row is None:
                continue
            raw = spec_row.get("json")
            spec = parse_spec(raw if isinstance(raw, str) else json.dumps(raw))
            metrics_cache[sid] = compute_metrics(spec)
        mm = metrics_cache[sid]
        rows.append({**{k: mm.get(k) for k in ("nn_mass", "nn_degree", "params", "macs")}, **m})
    return rows


def _plot(rows: list[dict[str, Any]], x_key: str, x_label: str, log_x: bool = False) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(f"{r['device']} / {r['runtime']} / {r.get('threads') or 'default'} thr", []).append(r)
    for label, rs in sorted(groups.items()):
        ax.scatter(
            [r[x_key] for r in rs if r.get(x_key) is not None],
            [r["latency_ms"] for r in rs if r.get(x_key) is not None],
            s=18,
            alpha=0.8,
            label=label,
        )
    ax.set_xlabel(x_label)
    ax.set_ylabel("latency (ms)")
    if log_x:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def write_report(
    path: str | Path,
    store: ResultsDB,
    *,
    title: str = "nnflash report",
    spec_ids: Sequence[str] | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Write a self-contained HTML page (plots embedded as PNG) and return its path."""
    rows = collect(store, spec_ids)
    esc = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}"
        "img{max-width:32%;margin-right:1%}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from "
        f"<code>{esc(str(store.path))}</code>: {len(rows)} model(s) with an undisturbed measurement. "
        f"{esc(disturbance_note(store, spec_ids))}</p>",
    ]
    for n in notes:
        parts.append(f"<p>{esc(n)}</p>")
    if rows:
        parts.append("<h2>Latency against topology and size</h2><div>")
        for key, label, log in (
            ("nn_mass", "NN-Mass", False),
            ("nn_degree", "NN-Degree", False),
            ("macs", "MACs", True),
        ):
            parts.append(f"<img alt='latency vs {label}' src='data:image/png;base64,{_plot(rows, key, label, log)}'>")
        parts.append("</div>")
    by_dev: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_dev.setdefault(r["device"], []).append(r)
    for dev, rs in sorted(by_dev.items()):
        facts = store.latest_device_facts(dev) or {}
        f = facts.get("facts", facts) if isinstance(facts, dict) else {}
        desc = ", ".join(
            str(x)
            for x in (
                f.get("machine"),
                f.get("cpu_model"),
                f.get("os"),
                f"Python {f.get('python')}" if f.get("python") else None,
            )
            if x
        )
        parts.append(
            f"<h2>Device {esc(dev)}</h2><p>{esc(desc)}</p><table><tr>"
            "<th class='l'>spec</th><th>runtime</th><th>threads</th><th>NN-Mass</th><th>NN-Degree</th>"
            "<th>params</th><th>MACs</th><th>latency ms</th><th>visits</th><th>mean ms</th><th>p90 ms</th></tr>"
        )
        for r in sorted(rs, key=lambda r: (r["nn_mass"] or 0, r["latency_ms"])):
            parts.append(
                f"<tr><td class='l'><code>{esc(r['spec_id'])}</code></td><td>{esc(str(r['runtime']))}</td>"
                f"<td>{esc(str(r.get('threads') or '-'))}</td><td>{r['nn_mass']:.1f}</td><td>{r['nn_degree']:.1f}</td>"
                f"<td>{r['params']:,}</td><td>{r['macs']:,}</td><td>{r['latency_ms']:.3f}</td><td>{r['visits']}</td>"
                f"<td>{r['latency_ms_mean']:.3f}</td><td>{r['latency_ms_p90']:.3f}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "\n".join(parts))
    return out
