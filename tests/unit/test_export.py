"""ONNX export: round-trip agreement, the cache, corruption, refusal. (TFLite: tests/integration.)"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from nnflash.models import export as ex
from nnflash.models.errors import ExportError
from nnflash.models.export import artifact_name, export_many, export_spec, read_manifest, relative_error
from nnflash_agent.fileio import sha256_file


class ConcatNet(nn.Module):
    """conv -> BN/ReLU on a concatenation with index_select'ed channels -> depthwise -> pool -> fc."""

    def __init__(self, cin: int = 3, width: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(cin, width, 3, padding=1, bias=False)
        self.register_buffer("idx", torch.tensor([0, 3, 5, 6]))
        self.pre = nn.Sequential(nn.BatchNorm2d(width + 4), nn.ReLU())
        self.dw = nn.Conv2d(width + 4, width + 4, 3, stride=2, padding=1, groups=width + 4)
        self.pw = nn.Conv2d(width + 4, width, 1)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = torch.cat([h, torch.index_select(h, 1, self.idx)], dim=1)
        return self.head(self.pw(self.dw(self.pre(h))))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))


def _plain_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, groups=6, padding=1),
        nn.ReLU6(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 3),
    )


def _randomize_bn(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BN running statistics, so a wrong BN folding would show."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return module.eval()


CASES = {
    "concat_index_select_depthwise": ((3, 8, 8), lambda: ConcatNet()),
    "mlp": ((12,), _mlp),
    "plain_cnn_relu6": ((3, 8, 8), _plain_cnn),
}


def _toy_spec(name: str, shape: tuple[int, ...]) -> SimpleNamespace:
    return SimpleNamespace(spec_id=f"toy{name}", input_shape=shape, family="toy")


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnx_roundtrip_small_modules(tmp_path: Path, name: str) -> None:
    shape, make = CASES[name]
    torch.manual_seed(1)
    module = _randomize_bn(make(), 1)
    art = export_spec(_toy_spec(name, shape), "onnx", tmp_path, module=module)
    assert art.path == tmp_path / f"toy{name}.onnx" and art.path.is_file()
    assert art.max_rel_err <= 1e-4 and art.max_abs_err >= 0 and not art.cached
    model = onnx.load(str(art.path))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 17
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, *shape]
    # self-contained: nothing but the artifact and its sidecar
    assert sorted(p.name for p in tmp_path.iterdir()) == [art.path.name, art.path.name + ".json"]


def _specs() -> list:
    from nnflash.models.spec import parse_spec

    cells = [{"depth": 4, "width": 8, "tc": 6}, {"depth": 3, "width": 12, "tc": 20}]
    out = [
        parse_spec(
            {
                "family": "dense",
                "cells": cells,
                "conv": conv,
                "input_shape": [3, 16, 16],
                "num_classes": 10,
                "seed": seed,
            }
        )
        for conv, seed in (("regular", 3), ("depthwise", 4))
    ]
    out.append(
        parse_spec(
            {
                "family": "resnet",
                "layers": [1, 1, 1, 1],
                "planes": [8, 16, 16, 32],
                "input_shape": [3, 32, 32],
                "num_classes": 10,
            }
        )
    )
    out.append(parse_spec({"family": "mobilenetv2", "width_mult": 0.25, "input_shape": [3, 32, 32], "num_classes": 10}))
    out.append(
        parse_spec(
            {"family": "mlp", "cells": [{"depth": 5, "width": 8, "tc": 3}], "input_shape": [20], "num_classes": 4}
        )
    )
    return out


def test_onnx_roundtrip_specs_of_every_family(tmp_path: Path) -> None:
    pytest.importorskip("nnflash.models.builder")
    specs = _specs()
    seen = []
    outcomes = export_many(specs, ["onnx"], tmp_path, progress=lambda d, t, o: seen.append((d, t)))
    assert seen == [(i + 1, len(specs)) for i in range(len(specs))]
    for spec, out in zip(specs, outcomes):
        assert out.ok, out.error
        assert out.artifact is not None
        assert out.artifact.path.name == f"{spec.spec_id}.onnx"
        assert out.artifact.max_rel_err <= 1e-4
    manifest = read_manifest(tmp_path)
    assert {m["spec_id"] for m in manifest} == {s.spec_id for s in specs}
    entry = manifest[0]
    for key in (
        "spec_id",
        "format",
        "sha256",
        "size",
        "exporter",
        "versions",
        "opset",
        "quantization",
        "max_abs_err",
        "max_rel_err",
        "export_s",
        "family",
    ):
        assert key in entry
    assert {"torch", "onnx", "onnxruntime"} <= set(entry["versions"])


@pytest.mark.parametrize("seed", range(6))
def test_onnx_roundtrip_random_dense_specs(tmp_path: Path, seed: int) -> None:
    pytest.importorskip("nnflash.models.builder")
    from nnflash.models.spec import parse_spec

    rng = np.random.default_rng(seed)
    cells = [
        {"depth": int(rng.integers(1, 6)), "width": int(rng.integers(2, 17)), "tc": int(rng.integers(0, 30))}
        for _ in range(int(rng.integers(1, 4)))
    ]
    conv = ("regular", "depthwise")[seed % 2]
    hw = int(rng.choice([8, 16, 20]))
    spec = parse_spec(
        {
            "family": "dense",
            "cells": cells,
            "conv": conv,
            "input_shape": [3, hw, hw],
            "num_classes": int(rng.integers(2, 12)),
            "seed": seed,
        }
    )
    art = export_spec(spec, "onnx", tmp_path)
    assert art.max_rel_err <= 1e-4, (cells, conv)


def test_spec_given_as_json_text(tmp_path: Path) -> None:
    pytest.importorskip("nnflash.models.builder")
    text = json.dumps(
        {"family": "mlp", "cells": [{"depth": 3, "width": 4, "tc": 1}], "input_shape": [6], "num_classes": 2}
    )
    art = export_spec(text, "onnx", tmp_path)
    assert art.path.is_file() and art.format == "onnx"


def _counting_build(calls: list) -> object:
    def build(spec: object) -> nn.Module:
        calls.append(spec)
        torch.manual_seed(0)
        return ConcatNet()

    return build


def test_cache_hit_on_reexport(tmp_path: Path) -> None:
    spec = _toy_spec("c", (3, 8, 8))
    calls: list = []
    first = export_spec(spec, "onnx", tmp_path, build=_counting_build(calls))
    mtime = first.path.stat().st_mtime_ns
    second = export_spec(spec, "onnx", tmp_path, build=_counting_build(calls))
    assert len(calls) == 1, "a cache hit must not even build the module"
    assert second.cached and not first.cached
    assert second.sha256 == first.sha256 and second.path.stat().st_mtime_ns == mtime
    assert second.max_rel_err == first.max_rel_err
    forced = export_spec(spec, "onnx", tmp_path, build=_counting_build(calls), force=True)
    assert not forced.cached and len(calls) == 2


def test_corrupted_cached_file_is_reexported(tmp_path: Path) -> None:
    spec = _toy_spec("x", (3, 8, 8))
    calls: list = []
    first = export_spec(spec, "onnx", tmp_path, build=_counting_build(calls))
    data = bytearray(first.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first.path.write_bytes(bytes(data))
    again = export_spec(spec, "onnx", tmp_path, build=_counting_build(calls))
    assert not again.cached and len(calls) == 2
    assert again.sha256 == sha256_file(again.path)
    onnx.checker.check_model(str(again.path))


def test_missing_or_garbled_sidecar_is_a_miss(tmp_path: Path) -> None:
    spec = _toy_spec("s", (3, 8, 8))
    calls: list = []
    art = export_spec(spec, "onnx", tmp_path, build=_counting_build(calls))
    sidecar = art.path.with_name(art.path.name + ".json")
    sidecar.write_text("{not json")
    assert not export_spec(spec, "onnx", tmp_path, build=_counting_build(calls)).cached
    sidecar.unlink()
    assert not export_spec(spec, "onnx", tmp_path, build=_counting_build(calls)).cached
    assert len(calls) == 3


def test_toolchain_change_is_a_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _toy_spec("t", (3, 8, 8))
    calls: list = []
    export_spec(spec, "onnx", tmp_path, build=_counting_build(calls))
    real = ex.toolchain_versions
    monkeypatch.setattr(ex, "toolchain_versions", lambda f, q=None: {**real(f, q), "onnx": "9.9"})
    art = export_spec(spec, "onnx", tmp_path, build=_counting_build(calls))
    assert not art.cached and dict(art.versions)["onnx"] == "9.9"


def test_refusal_raises_and_publishes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_run = ex._run_onnx

    def wrong_runtime(path: Path, x: np.ndarray) -> np.ndarray:
        y = real_run(path, x)
        return y + 1e-2 * np.abs(y).max()  # a 1% disagreement

    monkeypatch.setattr(ex, "_run_onnx", wrong_runtime)
    spec = _toy_spec("r", (3, 8, 8))
    with pytest.raises(ExportError, match="disagrees with torch"):
        export_spec(spec, "onnx", tmp_path, build=_counting_build([]))
    assert list(tmp_path.iterdir()) == [], "no artifact, sidecar or temporary file may remain"
    # a looser tolerance accepts the same disagreement
    art = export_spec(spec, "onnx", tmp_path, build=_counting_build([]), tolerance=0.05)
    assert 5e-3 < art.max_rel_err < 0.05


def test_refusal_keeps_previous_good_artifact_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _toy_spec("k", (3, 8, 8))
    good = export_spec(spec, "onnx", tmp_path, build=_counting_build([]))
    before = good.path.read_bytes()
    monkeypatch.setattr(ex, "_run_onnx", lambda p, x: np.full((1, 5), np.nan, np.float32))
    with pytest.raises(ExportError):
        export_spec(spec, "onnx", tmp_path, build=_counting_build([]), force=True)
    assert good.path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.path.name, good.path.name + ".json"]


def test_export_many_keeps_going(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good, bad = _toy_spec("g", (3, 8, 8)), _toy_spec("b", (3, 8, 8))

    def build(spec: SimpleNamespace) -> nn.Module:
        if spec is bad:
            raise ExportError("cannot build")
        torch.manual_seed(0)
        return ConcatNet()

    outcomes = export_many([bad, good], ["onnx"], tmp_path, build=build)
    assert [o.ok for o in outcomes] == [False, True]
    assert outcomes[0].error == "cannot build"
    with pytest.raises(ExportError):
        export_many([bad], ["onnx"], tmp_path, build=build, keep_going=False)


def test_bad_arguments() -> None:
    spec = _toy_spec("a", (3, 8, 8))
    with pytest.raises(ExportError, match="format"):
        export_spec(spec, "pt", "unused", module=ConcatNet())
    with pytest.raises(ExportError, match="only supported for tflite"):
        export_spec(spec, "onnx", "unused", module=ConcatNet(), quantize="int8")
    with pytest.raises(ExportError, match="quantization"):
        export_spec(spec, "tflite", "unused", module=ConcatNet(), quantize="fp16")
    with pytest.raises(ExportError, match="exporter"):
        export_spec(spec, "onnx", "unused", module=ConcatNet(), exporter="magic")


def test_names_and_relative_error() -> None:
    assert artifact_name("abc", "onnx") == "abc.onnx"
    assert artifact_name("abc", "tflite") == "abc.tflite"
    assert artifact_name("abc", "tflite", "int8") == "abc.int8.tflite"
    a, r = relative_error(np.array([1.0, -2.0, 4.0]), np.array([1.0, -2.0, 3.0]))
    assert a == pytest.approx(1.0) and r == pytest.approx(1.0 / 3.0)
    assert relative_error(np.zeros(3), np.zeros(3)) == (0.0, 0.0)
    assert relative_error(np.array([np.nan]), np.array([1.0]))[1] == float("inf")
    with pytest.raises(ExportError, match="shape"):
        relative_error(np.zeros(3), np.zeros(4))


def test_dynamo_exporter_single_file(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    spec = _toy_spec("dyn", (3, 8, 8))
    art = export_spec(spec, "onnx", tmp_path, module=ConcatNet(), exporter="dynamo")
    assert art.max_rel_err <= 1e-4 and art.exporter == "torch.onnx.export[dynamo]"
    assert sorted(p.name for p in tmp_path.iterdir()) == [art.path.name, art.path.name + ".json"]


def test_dynamo_exporter_without_onnxscript_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` fail
    with pytest.raises(ExportError, match="onnxscript"):
        export_spec(_toy_spec("nodyn", (3, 8, 8)), "onnx", tmp_path, module=ConcatNet(), exporter="dynamo")
    assert list(tmp_path.iterdir()) == []


def test_quiet_restores_stderr_after_overlapping_threads() -> None:
    import os
    import threading

    before = os.fstat(2)
    started, release = threading.Barrier(2), threading.Event()

    def worker() -> None:
        with ex._quiet():
            started.wait(timeout=5)
            release.wait(timeout=5)

    t = threading.Thread(target=worker)
    t.start()
    with ex._quiet():
        started.wait(timeout=5)
    release.set()  # the thread leaves last
    t.join()
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
    assert ex._quiet_depth == 0
