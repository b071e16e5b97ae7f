"""The roofline's simulation of onnxruntime's optimized graph (``ort_*`` conv algorithms)."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from nnflash.calibration import RooflineLatencyModel
from nnflash.calibration.features import as_layer_tables
from nnflash.calibration.roofline import ROOF_KINDS, ort_graph_ops
from nnflash.calibration.synthetic import known_roofline, synthetic_latency
from nnflash.models.space import get_space
from nnflash.models.spec import parse_spec

# Nodes of onnxruntime's optimized graph (1.32, CPU provider, AVX-512, ORT_ENABLE_ALL), read from
# SessionOptions.optimized_model_filepath and grouped into roofline kinds: conv = NCHWc Conv
# (group 1), conv_im2col = Conv/FusedConv, bn = BatchNormalization + Relu + NCHWc 1x1 depthwise
# Conv, gather = Gather + Concat, reorder = ReorderInput + ReorderOutput.
ORT_NODES = [
    (
        [(4, 24, 0), (7, 32, 87), (11, 192, 106)],
        "3eedb8c3deaa",
        {"bn": 30, "conv": 10, "conv_im2col": 12, "gather": 40, "reorder": 13},
    ),
    (
        [(8, 8, 30), (11, 16, 41), (11, 32, 145)],
        "0c8c807282fa",
        {"bn": 51, "conv": 15, "conv_im2col": 15, "gather": 69, "reorder": 34},
    ),
    (
        [(9, 48, 44), (4, 48, 93), (6, 32, 101)],
        "b73a91046f01",
        {"bn": 29, "conv": 17, "conv_im2col": 2, "gather": 36, "reorder": 38},
    ),
    (
        [(7, 8, 32), (3, 80, 54), (5, 64, 148)],
        "dadb49feb11f",
        {"bn": 21, "conv": 14, "conv_im2col": 1, "gather": 24, "reorder": 26},
    ),
]


def _spec(cells: list[tuple[int, int, int]]):
    return parse_spec({"family": "dense", "cells": [{"depth": d, "width": w, "tc": t} for d, w, t in cells], "seed": 1})


@pytest.mark.parametrize(("cells", "spec_id", "nodes"), ORT_NODES)
def test_simulated_graph_has_onnxruntimes_nodes(cells, spec_id, nodes) -> None:
    spec = _spec(cells)
    assert spec.spec_id == spec_id
    ops = ort_graph_ops(as_layer_tables([spec])[0], 16, 2.0)
    assert ops is not None
    got = collections.Counter(ROOF_KINDS[k] for k, _, _ in ops if ROOF_KINDS[k] != "im2col")
    assert dict(got) == {**nodes, "add": 1, "linear": 1, "pool": 1}  # + Flatten, Gemm, GlobalAveragePool


def test_blocking_and_folding_rules() -> None:
    # no skips: every BatchNorm-ReLU folds into the convolution before it; all inputs are
    # multiples of 4 (or the 3-channel image), so every convolution is blocked
    ops = ort_graph_ops(as_layer_tables([_spec([(3, 8, 0), (3, 16, 0), (3, 32, 0)])])[0], 16, 0.0)
    assert ops is not None
    kinds = collections.Counter(ROOF_KINDS[k] for k, _, _ in ops)
    assert kinds["conv"] == 9 and kinds["bn"] == 0 and kinds["gather"] == 0 and kinds["conv_im2col"] == 0
    # a skip of 5 channels gives a 21-channel input: an unblocked im2col convolution
    ops = ort_graph_ops(as_layer_tables([_spec([(3, 16, 5), (2, 16, 0), (2, 32, 0)])])[0], 16, 0.0)
    assert ops is not None
    kinds = collections.Counter(ROOF_KINDS[k] for k, _, _ in ops)
    assert kinds["conv_im2col"] == 1 and kinds["im2col"] == 1 and kinds["gather"] == 2  # Gather + Concat


def test_edge_cost_scales_convolution_work() -> None:
    table = as_layer_tables([_spec([(3, 8, 0), (3, 16, 0), (3, 32, 0)])])[0]
    a, b = ort_graph_ops(table, 16, 0.0), ort_graph_ops(table, 16, 2.0)
    assert a is not None and b is not None
    conv = ROOF_KINDS.index("conv")
    fa = sum(f for k, f, _ in a if k == conv)
    fb = sum(f for k, f, _ in b if k == conv)
    assert fa < fb < 1.5 * fa  # 32x32 and 16x16 maps: border columns are 1/16 and 1/8 of the work


def test_non_dense_networks_fall_back_to_the_layer_expansion() -> None:
    from nnflash.models.spec import ResNetSpec

    resnet = ResNetSpec(block="basic", layers=(1, 1, 1, 1), input_shape=(3, 64, 64))
    assert ort_graph_ops(as_layer_tables([resnet])[0], 16, 2.0) is None
    specs = get_space("flash").sample(12, seed=4)
    y = synthetic_latency(specs)
    m = RooflineLatencyModel(conv_algorithm="ort_nchwc16").fit(specs, y)
    pred = m.predict([resnet])
    assert pred.shape == (1,) and np.isfinite(pred[0]) and pred[0] > 0


def test_auto_recovers_a_simulated_graph_roofline() -> None:
    specs = get_space("flash").sample(40, seed=7)
    truth = known_roofline(conv_algorithm="ort_nchwc16")
    y = synthetic_latency(specs, model=truth)
    m = RooflineLatencyModel(regularization=0.0).fit(specs, y)
    assert m.report()["conv_algorithm"] == "ort_nchwc16"
    assert m.report()["gflops"]["conv"] == pytest.approx(200.0, rel=0.05)
    assert m.score(specs, y)["within_5"] == 1.0


def test_layer_names_are_display_only() -> None:
    """The records and the simulated graph read the layers' structured fields, not their names."""
    import dataclasses

    from nnflash.calibration.features import layer_records
    from nnflash.models.metrics import layer_table

    spec = _spec([(4, 16, 5), (3, 16, 3), (3, 32, 0)])
    renamed = [dataclasses.replace(r, name=f"op{j}") for j, r in enumerate(layer_table(spec))]
    a, b = layer_records(spec), layer_records(renamed)
    assert [dataclasses.replace(r, name="") for r in a] == [dataclasses.replace(r, name="") for r in b]
    assert ort_graph_ops(a, 16, 2.0) == ort_graph_ops(b, 16, 2.0) is not None
