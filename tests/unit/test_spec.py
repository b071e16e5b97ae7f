"""Specs: parsing, validation, canonical JSON, content ids, stored wiring."""

from __future__ import annotations

import json

import pytest

from nnflash.models.errors import SpecError
from nnflash.models.spec import FAMILIES, PRESETS, DenseSpec, draw_skips, parse_spec, preset

MINIMAL = {
    "family": "dense",
    "cells": [
        {"depth": 13, "width": 32, "tc": 40},
        {"depth": 13, "width": 64, "tc": 80},
        {"depth": 13, "width": 128, "tc": 125},
    ],
    "conv": "regular",
    "input_shape": [3, 32, 32],
    "num_classes": 10,
    "seed": 2,
}


def test_minimal_dense_spec_is_accepted_with_defaults():
    s = parse_spec(MINIMAL)
    assert isinstance(s, DenseSpec)
    assert [c.depth for c in s.cells] == [13, 13, 13]
    only_cells = parse_spec({"family": "dense", "cells": MINIMAL["cells"]})
    assert only_cells.conv == "regular" and only_cells.input_shape == (3, 32, 32) and only_cells.seed == 0


def test_spec_id_is_stable_and_content_addressed():
    a, b = parse_spec(MINIMAL), parse_spec(json.dumps(MINIMAL))
    assert a.spec_id == b.spec_id and len(a.spec_id) == 12
    assert hash(a) == hash(b) and a == b
    other_seed = parse_spec({**MINIMAL, "seed": 3})
    assert other_seed.spec_id != a.spec_id  # other wiring, other network


def test_wiring_is_stored_and_round_trips_exactly():
    s = parse_spec(MINIMAL)
    again = parse_spec(s.to_json_line())
    assert again == s and again.skips == s.skips
    for cell, layers in zip(s.cells, s.skips):
        assert len(layers) == cell.depth
        for i, sel in enumerate(layers):
            n = cell.width * (i - 1) if i >= 2 else 0
            assert len(sel) == min(cell.tc, n)
            assert len(set(sel)) == len(sel) and all(0 <= x < n for x in sel)


def test_draw_is_deterministic_and_depends_on_seed():
    assert draw_skips(5, 0, 8, 4, 3) == draw_skips(5, 0, 8, 4, 3)
    assert draw_skips(5, 0, 8, 4, 3) != draw_skips(6, 0, 8, 4, 3)
    assert draw_skips(5, 0, 8, 4, 3) != draw_skips(5, 1, 8, 4, 3)


def test_explicit_wiring_is_validated():
    d = json.loads(parse_spec({"family": "dense", "cells": [{"depth": 4, "width": 2, "tc": 2}]}).canonical_json())
    d["skips"][0][3] = [0, 0]
    with pytest.raises(SpecError, match=r"skips\[0\]\[3\].*distinct"):
        parse_spec(d)
    d["skips"][0][3] = [0]
    with pytest.raises(SpecError, match=r"skips\[0\]\[3\].*2 channels"):
        parse_spec(d)


def test_tampered_spec_id_is_refused():
    line = json.loads(parse_spec(MINIMAL).to_json_line())
    line["cells"][0]["tc"] = 41
    line.pop("skips")
    with pytest.raises(SpecError, match="spec_id"):
        parse_spec(line)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["cells"][0].update(depth=0), r"cells\[0\]\.depth: must be a positive integer, got 0"),
        (lambda d: d["cells"][1].update(depth=-3), r"cells\[1\]\.depth: must be a positive integer"),
        (lambda d: d["cells"][0].update(width=0), r"cells\[0\]\.width: must be a positive integer"),
        (lambda d: d["cells"][2].update(width=-1), r"cells\[2\]\.width: must be a positive integer"),
        (lambda d: d["cells"][0].update(tc=-1), r"cells\[0\]\.tc: must be >= 0"),
        (lambda d: d["cells"][0].update(width=32.5), r"cells\[0\]\.width: must be an integer, got 32.5"),
        (lambda d: d["cells"][0].update(depth="13"), r"cells\[0\]\.depth: must be an integer"),
        (lambda d: d["cells"][0].update(tc=True), r"cells\[0\]\.tc: must be an integer"),
        (lambda d: d.update(seed=1.0), r"seed: must be an integer"),
        (lambda d: d.update(family="densenet"), r"family: unknown family \"densenet\""),
        (lambda d: d.pop("family"), r"family: missing"),
        (lambda d: d.update(conv="3x3"), r"conv: must be one of regular, depthwise"),
        (lambda d: d.update(input_shape=[3, 32]), r"input_shape: must have 3 entries"),
        (lambda d: d.update(cells=[]), r"cells: must be a non-empty list"),
        (lambda d: d["cells"][0].pop("tc"), r"cells\[0\]\.tc: missing required field"),
        (lambda d: d.update(colour="red"), r"colour: unknown field"),
    ],
)
def test_bad_specs_name_the_field(mutate, message):
    d = json.loads(json.dumps(MINIMAL))
    mutate(d)
    with pytest.raises(SpecError, match=message):
        parse_spec(d)


def test_malformed_json():
    with pytest.raises(SpecError, match="malformed JSON"):
        parse_spec('{"family": "dense", ')
    with pytest.raises(SpecError, match="must be a JSON object"):
        parse_spec("[1, 2]")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips(name):
    s = preset(name)
    assert s.family in FAMILIES
    assert parse_spec(s.to_json_line()) == s


def test_width_mult_only_where_it_exists():
    assert preset("mobilenet_v2", 0.5).spec_id != preset("mobilenet_v2").spec_id
    with pytest.raises(SpecError, match="width_mult"):
        preset("nnmass_reference", 0.5)
    with pytest.raises(SpecError, match="unknown preset"):
        preset("vgg16")
