"""Cost-model features of specs."""

from __future__ import annotations

import numpy as np
import pytest

from nnflash.calibration import CostModelError, feature_matrix, feature_names, features
from nnflash.calibration.features import as_layer_tables, layer_records
from nnflash.models.metrics import compute_metrics, layer_table
from nnflash.models.space import get_space
from nnflash.models.spec import DenseSpec, parse_spec, preset

SPACE = get_space("flash")


def test_names_are_fixed_and_unique() -> None:
    names = feature_names()
    assert len(names) == len(set(names))
    assert names == feature_names()
    for n in ("macs_conv", "bytes_gather", "ops_bn", "macs_total", "input_bytes", "output_bytes"):
        assert n in names


def test_totals_match_the_analytic_metrics() -> None:
    for spec in SPACE.sample(5, seed=1) + [preset("resnet18"), preset("mobilenet_v2")]:
        f = dict(zip(feature_names(), features(spec)))
        m = compute_metrics(spec)
        assert f["macs_total"] == m["macs"]
        assert f["bytes_weights"] == m["bytes_weights"]
        assert f["macs_conv"] + f["macs_pointwise"] + f["macs_depthwise"] + f["macs_linear"] == m["macs"]
        assert f["input_bytes"] == 4 * np.prod(spec.input_shape)
        assert f["output_bytes"] == 4 * spec.num_classes


def test_gather_counts_the_pool_concatenation() -> None:
    spec = DenseSpec.from_dict(
        {"family": "dense", "cells": [{"depth": 4, "width": 8, "tc": 4}], "input_shape": [3, 8, 8], "num_classes": 10}
    )
    recs = [r for r in layer_records(spec) if r.kind == "gather"]
    # layer 2: 4 skips from layer 0 (no pool concat); layer 3: pool of 16 channels, 4 skips
    plane = 4 * 8 * 8
    assert recs[0].bytes == plane * (2 * 4 + 2 * 12) and recs[0].ops == 2
    assert recs[1].bytes == plane * (2 * 16 + 2 * 4 + 2 * 12) and recs[1].ops == 3


def test_matrix_and_accepted_inputs() -> None:
    specs = SPACE.sample(4, seed=2)
    x = feature_matrix(specs)
    assert x.shape == (4, len(feature_names()))
    assert np.array_equal(x[1], features(specs[1].to_dict()))
    assert np.array_equal(x[1], features(specs[1].to_json_line()))
    assert feature_matrix([]).shape == (0, len(feature_names()))
    tables = as_layer_tables([layer_table(specs[0]), specs[1]])
    assert len(tables) == 2
    assert parse_spec(specs[0].to_dict()).spec_id == specs[0].spec_id


def test_bad_inputs() -> None:
    with pytest.raises(CostModelError):
        as_layer_tables(SPACE.sample(1)[0])
    with pytest.raises(CostModelError):
        as_layer_tables(5)
    with pytest.raises(CostModelError):
        layer_records(3.0)
    with pytest.raises(CostModelError, match="empty"):
        layer_records([])
