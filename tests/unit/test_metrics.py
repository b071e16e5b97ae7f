"""Metrics against the paper's reference values and hand-derived cases."""

from __future__ import annotations

import numpy as np
import pytest

from nnflash.models.metrics import (
    compute_metrics,
    dense_metrics,
    layer_table,
    mobilenetv2_block_masses,
    nn_degree,
    nn_density,
    nn_mass,
    skip_sum,
)
from nnflash.models.spec import parse_spec, preset


def test_reference_densenet_from_the_paper():
    m = compute_metrics(preset("nnmass_reference"))
    assert m["nn_density"] == pytest.approx([0.204545, 0.204545, 0.162760], abs=1e-6)
    assert m["nn_mass"] == pytest.approx(526.106, abs=1e-3)


def test_reference_mlp_from_the_paper():
    m = compute_metrics(parse_spec({"family": "mlp", "cells": [{"depth": 16, "width": 8, "tc": 1}]}))
    assert m["nn_mass"] == pytest.approx(2.1333, abs=1e-4)


def test_saturated_cell_identity():
    # when tc <= w every layer receives exactly tc channels: m = 2*tc*d/(d-1)
    for d, w, t in [(5, 10, 3), (9, 4, 4), (20, 64, 1), (3, 7, 7)]:
        assert nn_mass([[d]], [[w]], [[t]])[0] == pytest.approx(2 * t * d / (d - 1))


def test_hand_derived_small_cell():
    # d=5, w=2, tc=3: layers 2,3,4 may draw from 2, 4, 6 channels -> receive 2, 3, 3 = 8 of 12
    assert skip_sum(5, 2, 3) == 8
    assert nn_density([[5]], [[2]], [[3]])[0, 0] == pytest.approx(8 / 12)
    assert nn_mass([[5]], [[2]], [[3]])[0] == pytest.approx(8 / 12 * 2 * 5)
    assert nn_degree([[5]], [[2]], [[3]])[0] == pytest.approx(2 + 8 / 5)


def test_cells_without_possible_links():
    for d in (1, 2):
        assert nn_density([[d]], [[8]], [[5]])[0, 0] == 0.0
        assert nn_mass([[d]], [[8]], [[5]])[0] == 0.0


def test_skip_sum_closed_form_matches_the_loop():
    rng = np.random.default_rng(0)
    d, w, t = rng.integers(1, 30, 2000), rng.integers(1, 70, 2000), rng.integers(0, 300, 2000)
    loop = [sum(min(tc, wc * (i - 1)) for i in range(2, dc)) for dc, wc, tc in zip(d, w, t)]
    assert skip_sum(d, w, t).tolist() == loop


def test_vectorized_equals_per_spec():
    rng = np.random.default_rng(1)
    n = 50
    d, w, t = rng.integers(1, 12, (n, 3)), rng.integers(1, 40, (n, 3)), rng.integers(0, 80, (n, 3))
    for conv in ("regular", "depthwise"):
        vec = dense_metrics(d, w, t, conv=conv, input_shape=(3, 17, 23), num_classes=7)
        for k in range(n):
            cells = [{"depth": int(d[k, c]), "width": int(w[k, c]), "tc": int(t[k, c])} for c in range(3)]
            m = compute_metrics(
                parse_spec(
                    {"family": "dense", "cells": cells, "conv": conv, "input_shape": [3, 17, 23], "num_classes": 7}
                )
            )
            assert vec["params"][k] == m["params"] and vec["macs"][k] == m["macs"]
            assert vec["nn_mass"][k] == pytest.approx(m["nn_mass"])
            assert vec["nn_degree"][k] == pytest.approx(m["nn_degree"])


def test_resnet_block_formulas():
    # resnet18: sum over blocks of inplanes + planes
    expected = (64 + 64) * 2 + (64 + 128) + (128 + 128) + (128 + 256) + (256 + 256) + (256 + 512) + (512 + 512)
    assert compute_metrics(preset("resnet18"))["nn_mass"] == expected
    # resnet50 first block: inplanes 64, width 64 -> (64+128)*64/(128+64) = 64
    m50 = compute_metrics(preset("resnet50"))["nn_mass_per_block"]
    assert m50[0] == pytest.approx(64.0)
    # second block: inplanes 256, width 64 -> (256+128)*256/(512+64)
    assert m50[1] == pytest.approx(384 * 256 / 576)
    # wide_resnet50_2 first block: width 128 -> (64+256)*64/(128+128) = 80
    assert compute_metrics(preset("wide_resnet50_2"))["nn_mass_per_block"][0] == pytest.approx(80.0)


def test_mobilenetv2_only_residual_blocks_count():
    bm = mobilenetv2_block_masses(preset("mobilenet_v2"))
    assert bm[0] == 0.0  # 32 -> 16, no residual
    assert bm[1] == 0.0  # stride 2
    # block 2: 24 -> 24, hidden 144: (24 + 288)*24/(48 + 144) = 39
    assert bm[2] == pytest.approx(39.0)
    assert sum(1 for x in bm if x > 0) == 10


@pytest.mark.parametrize(
    "name, params",
    [
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("resnet101", 44_549_160),
        ("wide_resnet50_2", 68_883_240),
        ("mobilenet_v2", 3_504_872),
    ],
)
def test_presets_match_torchvision_parameter_counts(name, params):
    assert compute_metrics(preset(name))["params"] == params


def test_layer_table_bytes():
    s = parse_spec({"family": "dense", "cells": [{"depth": 3, "width": 4, "tc": 2}], "input_shape": [3, 8, 8]})
    rows = layer_table(s)
    stem = rows[0]
    assert stem.kind == "conv" and stem.bytes_in == 4 * 3 * 64 and stem.bytes_out == 4 * 4 * 64
    assert stem.bytes_weights == 4 * 9 * 3 * 4
    assert any(r.kind == "gather" for r in rows)
    assert sum(r.params for r in rows) == compute_metrics(s)["params"]


def test_layers_say_where_they_are():
    s = parse_spec({"family": "dense", "cells": [{"depth": 3, "width": 4, "tc": 2}] * 2, "input_shape": [3, 8, 8]})
    rows = layer_table(s)
    gather = next(r for r in rows if r.kind == "gather")
    assert (gather.section, gather.cell, gather.index, gather.role) == ("body", 0, 2, "gather")
    assert [(r.cell, r.index, r.role) for r in rows if r.section == "body"][:3] == [
        (0, 0, "conv"),
        (0, 1, "bn"),
        (0, 1, "conv"),
    ]
    assert [(r.section, r.cell, r.index, r.role) for r in rows[-3:]] == [
        ("head", None, None, "bn"),
        ("head", None, None, "pool"),
        ("head", None, None, "fc"),
    ]
    resnet = layer_table(preset("resnet18"))
    assert {(r.section, r.role) for r in resnet if r.section != "body"} == {
        ("stem", "conv"),
        ("stem", "bn"),
        ("stem", "pool"),
        ("head", "pool"),
        ("head", "fc"),
    }
    down = [(r.cell, r.index) for r in resnet if r.role == "down"]
    assert down == [(1, 0), (2, 0), (3, 0)]
    mb = preset("mobilenet_v2")
    blocks = sorted({(r.cell, r.index) for r in layer_table(mb) if r.section == "body"})
    assert blocks == [(row, k) for row, (_, _, n, _) in enumerate(mb.setting) for k in range(n)]
    for spec in (s, preset("resnet18"), mb):
        for r in layer_table(spec):
            assert r.section in ("stem", "body", "head")
            assert (r.cell is None) == (r.index is None) == (r.section != "body")
            assert r.name.endswith("." + r.role)  # the name is for display, derived from the fields
            assert r.to_dict()["role"] == r.role
