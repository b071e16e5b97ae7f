"""`nnflash profile --passes` on the built-in `local` device: the real agent, one visit of every model
per pass, resume by visit, and the model's latency by the one definition."""

from __future__ import annotations

import json
import sqlite3
import statistics
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from nnflash.controller.cli import cli  # noqa: E402
from nnflash.models.space import get_space  # noqa: E402
from nnflash_agent.stats import SPREAD_FACTOR, SPREAD_FLOOR, model_latency_ms, visit_spread_of  # noqa: E402

pytestmark = pytest.mark.integration

# the disturbance gate off: this test is about the passes, not whether the machine was quiet
QUICK = ["--threads", "1", "--repeat", "3", "--min-repeat-ms", "5", "--disturbed-share", "1"]


def _profile(tmp_path: Path, *extra: str) -> tuple[int, list[dict], str]:
    res = CliRunner().invoke(
        cli,
        ["profile", str(tmp_path / "s.jsonl"), "--device", "local", *QUICK, "--db", str(tmp_path / "n.db")]
        + ["--json", *extra],
    )
    lines = [json.loads(x) for x in res.output.splitlines() if x.startswith("{")]
    return res.exit_code, lines, res.output


def test_profile_visits_every_model_once_per_pass_and_resumes_by_visit(tmp_path: Path) -> None:
    specs = get_space("flash").sample(2, seed=11)
    (tmp_path / "s.jsonl").write_text("".join(s.to_json_line() + "\n" for s in specs))
    ids = sorted(s.spec_id for s in specs)

    code, lines, out = _profile(tmp_path, "--passes", "2")
    assert code == 0, out
    assert sorted((x["spec_id"], x["visit"]) for x in lines) == sorted((i, v) for i in ids for v in (0, 1))
    assert all(x["status"] == "ok" and x["latency_ms"] > 0 for x in lines)
    # pass 1 visits every model before pass 2 visits any
    assert [x["visit"] for x in lines] == [0, 0, 1, 1]

    # one more pass: only visit 2 is measured, the two stored visits are skipped
    code, more, out = _profile(tmp_path, "--passes", "3")
    assert code == 0, out
    assert sorted((x["spec_id"], x["visit"]) for x in more) == [(i, 2) for i in ids]
    con = sqlite3.connect(tmp_path / "n.db")
    try:
        stored = con.execute("SELECT spec_id, visit, summary_json FROM measurements WHERE status = 'ok'").fetchall()
    finally:
        con.close()
    assert sorted((sid, v) for sid, v, _ in stored) == sorted((i, v) for i in ids for v in (0, 1, 2))

    # the summary's latency of a model is the one definition over its three visits of both runs: the
    # median of the visits whose repeat spread is usual (a busy machine can make one unusual)
    spread = {(sid, v): visit_spread_of({"summary": json.loads(js)}) for sid, v, js in stored}
    by_spec: dict[str, list[tuple[float, float | None]]] = {}
    for x in lines + more:
        by_spec.setdefault(x["spec_id"], []).append((x["latency_ms"], spread[(x["spec_id"], x["visit"])]))
    for sid, visits in by_spec.items():
        lats = [lat for lat, _ in visits]
        spreads = [sp for _, sp in visits if sp is not None]
        assert len(spreads) == 3
        usual = max(SPREAD_FACTOR * statistics.median(spreads), SPREAD_FLOOR)
        kept = [lat for lat, sp in visits if sp is not None and sp <= usual]
        assert 2 <= len(kept) <= 3
        row = next(r for r in out.splitlines() if r.startswith("│ " + sid))
        cells = [c.strip() for c in row.strip("│ ").split("│")]
        assert cells[3] == "3", row
        assert float(cells[2]) == pytest.approx(statistics.median(kept), abs=6e-4), row
        assert float(cells[2]) == pytest.approx(model_latency_ms(lats, [sp for _, sp in visits]), abs=6e-4), row


def test_profile_rejects_bad_passes(tmp_path: Path) -> None:
    (tmp_path / "s.jsonl").write_text(get_space("flash").sample(1, seed=1)[0].to_json_line() + "\n")
    code, _, out = _profile(tmp_path, "--passes", "0")
    assert code == 2 and out.strip().splitlines()[-1].startswith("nnflash: error: --passes")
    assert not (tmp_path / "n.db").exists()
