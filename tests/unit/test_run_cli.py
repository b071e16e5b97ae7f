"""`nnflash run`: bad inputs are one-line errors (exit 2) before anything is measured, and the
loop's pure pieces (the reasons a verified design joins the training data, design lines)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from nnflash.calibration.base import make_model
from nnflash.controller.cli import cli
from nnflash.controller.runloop import Verified, fresh_specs
from nnflash.models.space import get_space
from nnflash.search import Deployment, Limits, Objective, evaluate


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> Result:
    monkeypatch.chdir(tmp_path)
    return CliRunner().invoke(cli, ["run", "--db", str(tmp_path / "n.db"), *args])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--threads", "0"], "--threads"),
        (["--threads", "two"], "--threads"),
        (["--max-latency-ms", "5,abc"], "--max-latency-ms"),
        (["--max-latency-ms", "-3"], "--max-latency-ms"),
        (["--max-params", "0"], "--max-params"),
        (["--rounds", "0"], "--rounds"),
        (["--budget", "0"], "--budget"),
        (["--quick", "--train-budget", "10", "--protocol", "quick"], "--quick"),
        (["--train-budget", "10"], "--protocol"),
        (["--max-energy-mj", "3"], "energy meter"),
        (["--device", "nosuchdevice"], "nosuchdevice"),
        (["--out", "/nonexistent/dir/out"], "--out"),
        (["--space", "nosuchspace"], "nosuchspace"),
        (["--accuracy", "missing.json"], "missing.json"),
        (["--runtime", "onnxruntime", "--precision", "int8"], "int8"),
    ],
)
def test_bad_inputs_are_one_line_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], needle: str
) -> None:
    res = _run(tmp_path, monkeypatch, *args)
    assert res.exit_code == 2, res.output
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("nnflash: error:"), res.output
    assert needle in lines[0]
    assert res.stdout == ""
    assert not (tmp_path / "n.db").exists()  # nothing measured, nothing stored


def _design(latency_scale: float) -> tuple[Verified, float]:
    space = get_space("flash")
    specs = space.sample(12, seed=3)
    macs = make_model("macs").fit(specs, [float(i + 1) for i in range(len(specs))])
    macs.metadata_.update(space="flash", input_shape=list(space.input_shape))
    dep = Deployment.from_model(macs)
    d = evaluate(specs[0], dep, Objective.parse("nn-degree"), Limits(max_latency_ms=100.0))
    return Verified(d, 100.0, d.objective), d.latency_ms * latency_scale


def test_miss_reasons() -> None:
    v, meas = _design(1.0)
    v.measured_ms, v.status = meas, "ok"
    assert v.miss(0.10) is None and v.meets_limit
    v.measured_ms = v.design.latency_ms * 1.5  # predicted a third too low
    assert "off the measured" in (v.miss(0.10) or "")
    v.measured_ms = 150.0  # breaks the 100 ms limit
    assert "breaks its 100 ms limit" in (v.miss(0.10) or "")
    v.measured_ms, v.status = None, "disturbed"
    assert v.miss(0.10) is None and v.meets_limit is None
    line = v.to_dict()
    assert line["measured"] == {
        "latency_ms": None,
        "energy_mj": None,
        "status": "disturbed",
        "error": None,
        "prediction_error": None,
        "meets_limit": None,
    }
    assert line["spec_id"] == v.design.spec_id and "spec" in line and line["limit_latency_ms"] == 100.0


def test_fresh_specs_are_new_and_repeatable() -> None:
    space = get_space("flash")
    exclude = {s.spec_id for s in space.sample(5, seed=7)}
    a = fresh_specs(space, exclude, 3, seed=7)
    assert len(a) == 3 and not exclude & {s.spec_id for s in a}
    assert [s.spec_id for s in a] == [s.spec_id for s in fresh_specs(space, exclude, 3, seed=7)]
    assert [s.spec_id for s in a] != [s.spec_id for s in fresh_specs(space, exclude, 3, seed=8)]


def test_accuracy_predictor_objective_and_foreign_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flash predictor fitted on real trainings of a 1x8x8 task becomes the objective with its
    note; for the 3x32x32 flash space it is a one-line error before anything is measured."""
    import dataclasses

    from accuracy_fixture import fixture_specs_and_accuracy

    from nnflash.calibration.accuracy import make_accuracy_model
    from nnflash.controller.commands.common import devices_from, load_inventory
    from nnflash.controller.runloop import RunRequest, choose_objective

    specs, acc = fixture_specs_and_accuracy()
    pred = make_accuracy_model("flash").fit(specs, acc)
    path = tmp_path / "acc.json"
    pred.save(path, dataset="tiny-quadrants")
    res = _run(tmp_path, monkeypatch, "--accuracy", str(path))
    assert res.exit_code == 2 and "1x8x8" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    space = dataclasses.replace(get_space("flash"), input_shape=tuple(specs[0].input_shape))
    space = dataclasses.replace(space, num_classes=specs[0].num_classes)
    req = RunRequest(
        device=devices_from(load_inventory(None), "local")[0],
        space=space,
        db_path=str(tmp_path / "n.db"),
        out_dir=str(tmp_path),
        artifacts_dir=str(tmp_path),
        accuracy_path=str(path),
    )
    obj, note, reranker = choose_objective(req)
    assert obj.name == "accuracy:flash" and reranker is None and "flash predictor" in note
    assert obj.predictor is not None


def test_profile_in_passes_passes_max_disturbed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """run raises the disturbed-attempt limit by what the database holds (a model left disturbed on
    a busy day is measured again later): profile_in_passes hands the limit to every pass."""
    from nnflash.controller import profiling
    from nnflash.controller.campaign import CampaignResult, MeasureSettings

    seen: list[int] = []

    def fake_campaign(*args: object, **kw: object) -> CampaignResult:
        seen.append(int(kw["max_disturbed"]))  # type: ignore[call-overload]
        return CampaignResult(1)

    monkeypatch.setattr(profiling, "run_campaign", fake_campaign)
    monkeypatch.setattr(profiling, "stored_rows", lambda *a, **k: [])
    spec = get_space("flash").sample(1, seed=0)[0]
    profiling.profile_in_passes([spec], [], MeasureSettings(), tmp_path / "n.db", tmp_path, passes=2, max_disturbed=7)
    assert seen == [7, 7]
