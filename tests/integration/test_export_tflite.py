"""TFLite export through litert-torch (a few seconds per model): float32, int8 PTQ, refusal."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

from nnflash.models import export as ex  # noqa: E402
from nnflash.models.errors import ExportError  # noqa: E402
from nnflash.models.export import export_many, export_spec, read_manifest  # noqa: E402

pytestmark = pytest.mark.integration


class ConcatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.register_buffer("idx", torch.tensor([1, 2, 7]))
        self.pre = nn.Sequential(nn.BatchNorm2d(11), nn.ReLU())
        self.dw = nn.Conv2d(11, 11, 3, stride=2, padding=1, groups=11)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(11, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = torch.cat([h, torch.index_select(h, 1, self.idx)], dim=1)
        return self.head(self.dw(self.pre(h)))


def _interpreter(path: Path):  # noqa: ANN202
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    return it


def test_float32_module_roundtrip_and_signature(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = SimpleNamespace(spec_id="toyconcat", input_shape=(3, 8, 8), family="toy")
    art = export_spec(spec, "tflite", tmp_path, module=ConcatNet())
    assert art.path.name == "toyconcat.tflite" and art.max_rel_err <= 1e-4
    it = _interpreter(art.path)
    assert it.get_signature_list() == {"serving_default": {"inputs": ["input"], "outputs": ["logits"]}}
    (inp,) = it.get_input_details()
    assert list(inp["shape"]) == [1, 3, 8, 8] and inp["dtype"] == np.float32
    versions = dict(art.versions)
    assert {"torch", "litert-torch", "ai-edge-litert"} <= set(versions)


def test_dense_specs_both_conv_variants_onnx_and_tflite(tmp_path: Path) -> None:
    pytest.importorskip("nnflash.models.builder")
    from nnflash.models.spec import parse_spec

    cells = [{"depth": 3, "width": 8, "tc": 5}, {"depth": 3, "width": 16, "tc": 12}]
    specs = [
        parse_spec(
            {"family": "dense", "cells": cells, "conv": conv, "input_shape": [3, 16, 16], "num_classes": 10, "seed": 7}
        )
        for conv in ("regular", "depthwise")
    ]
    outcomes = export_many(specs, ["onnx", "tflite"], tmp_path)
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    assert all(o.artifact is not None and o.artifact.max_rel_err <= 1e-4 for o in outcomes)
    names = sorted(m["path"] for m in read_manifest(tmp_path))
    assert names == sorted(f"{s.spec_id}.{f}" for s in specs for f in ("onnx", "tflite"))
    again = export_many(specs, ["onnx", "tflite"], tmp_path)
    assert all(o.artifact is not None and o.artifact.cached for o in again)


def test_int8_ptq_dense_spec(tmp_path: Path) -> None:
    pytest.importorskip("ai_edge_quantizer")
    pytest.importorskip("nnflash.models.builder")
    from nnflash.models.spec import parse_spec

    spec = parse_spec(
        {
            "family": "dense",
            "cells": [{"depth": 3, "width": 8, "tc": 5}],
            "conv": "regular",
            "input_shape": [3, 16, 16],
            "num_classes": 10,
            "seed": 1,
        }
    )
    art = export_spec(spec, "tflite", tmp_path, quantize="int8")
    assert art.path.name == f"{spec.spec_id}.int8.tflite"
    assert art.quantization == "int8" and art.tolerance == ex.DEFAULT_TOLERANCE["int8"]
    assert 0 < art.max_rel_err <= art.tolerance
    (inp,) = _interpreter(art.path).get_input_details()
    assert inp["dtype"] == np.int8
    assert "ai-edge-quantizer" in dict(art.versions)
    assert not list(tmp_path.glob("*.float")) and not list(tmp_path.glob(".export-*"))


def test_tflite_refusal_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ex, "_run_tflite", lambda p, x: np.zeros((1, 4), np.float32))
    spec = SimpleNamespace(spec_id="toybad", input_shape=(3, 8, 8), family="toy")
    torch.manual_seed(0)
    with pytest.raises(ExportError, match="tflite export disagrees"):
        export_spec(spec, "tflite", tmp_path, module=ConcatNet())
    assert list(tmp_path.iterdir()) == []
