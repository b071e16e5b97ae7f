"""The nb201 family: architecture strings, the effective cell, hand-worked metrics, counts against
torch, ONNX and TFLite export, the space."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from test_builder import torch_counts

from nnflash.models.builder import build_module, example_input
from nnflash.models.errors import SpecError
from nnflash.models.metrics import compute_metrics, layer_table
from nnflash.models.nb201 import OPS, arch_from_index, arch_string, cell_graph, parse_arch
from nnflash.models.space import get_space
from nnflash.models.spec import parse_spec

ALL_3X3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
NO_PATH = "|none~0|+|none~0|none~1|+|none~0|nor_conv_3x3~1|none~2|"


def spec(arch: str, **kw: object):
    return parse_spec({"family": "nb201", "arch": arch, **kw})


def test_minimal_spec_and_round_trip() -> None:
    s = spec(EXAMPLE)
    assert (s.input_shape, s.num_classes, s.channels, s.cells_per_stage) == ((3, 32, 32), 10, 16, 5)
    again = parse_spec(s.to_json_line())
    assert again == s and again.spec_id == s.spec_id
    assert arch_string(parse_arch(EXAMPLE)) == EXAMPLE


@pytest.mark.parametrize(
    ("arch", "needle"),
    [
        ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|", "3 nodes"),
        ("|conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown operation 'conv_5x5'"),
        ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "op~0"),
        ("|none~0|+|none~0|+|none~0|none~1|none~2|", "node 2 must have 2"),
        ("none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "node 1 must be written"),
    ],
)
def test_bad_arch_strings_name_the_problem(arch: str, needle: str) -> None:
    with pytest.raises(SpecError, match="arch: ") as e:
        spec(arch)
    assert needle in str(e.value)


def test_missing_arch_and_unknown_field() -> None:
    with pytest.raises(SpecError, match="arch: missing"):
        parse_spec({"family": "nb201"})
    with pytest.raises(SpecError, match="unknown field"):
        parse_spec({"family": "nb201", "arch": EXAMPLE, "cells": 3})


def test_live_edges_hand_worked() -> None:
    # 1<-0 none, so node 1 is unreachable and 3<-1 is dead; 3<-2 none, so 2<-0 leads nowhere
    g = cell_graph(parse_arch("|none~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|nor_conv_3x3~1|none~2|"))
    assert g.live == (False, False, False, True, False, False)
    assert g.has_path and g.live_nodes() == (0, 3)
    g = cell_graph(parse_arch(NO_PATH))
    assert not g.has_path and g.live_nodes() == ()
    g = cell_graph(parse_arch(ALL_3X3))
    assert all(g.live) and g.live_nodes() == (0, 1, 2, 3)


def test_nn_mass_and_degree_hand_worked() -> None:
    # all six edges live: 3 long-range links of 3 possible, volume 3C -> C * 3 per cell;
    # 5 cells per stage at 16/32/64 plus the two reduction blocks (16+32) + (32+64)
    m = compute_metrics(spec(ALL_3X3))
    assert m["nn_mass_per_cell"] == [48.0, 96.0, 192.0]
    assert m["nn_mass"] == pytest.approx(5 * (48 + 96 + 192) + 48 + 96)
    # degree: layers on edges from node 0 see 1 input, from node 1 one (k=1), from node 2 two (k=2):
    # extras over the 6 convs = (0+0+0+0+0+1)/6 -> C * (1 + 1/6)
    assert m["nn_degree"] == pytest.approx(5 * (16 + 32 + 64) * (1 + 1 / 6))
    # live nodes 0, 2, 3 (node 1 dead): one possible link (3<-0), present -> volume 2C, density 1
    m = compute_metrics(spec("|none~0|+|nor_conv_1x1~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"))
    assert m["nn_mass_per_cell"] == [32.0, 64.0, 128.0]
    assert m["nn_degree"] == pytest.approx(5 * (16 + 32 + 64))  # both convs read a single-input node
    m = compute_metrics(spec(NO_PATH))
    assert (m["nn_mass"], m["nn_degree"], m["constant_output"]) == (0.0, 0.0, True)


def test_published_size_of_the_all_3x3_network() -> None:
    # NAS-Bench-201 lists 1.53 M parameters and 220 M FLOPs (multiply-adds) for this cell
    m = compute_metrics(spec(ALL_3X3))
    assert m["params"] == 1_531_546
    assert round(m["macs"] / 1e6, 1) == 220.1


def _random_archs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [arch_string([rng.choice(OPS) for _ in range(6)]) for _ in range(n)]


@pytest.mark.parametrize("arch", _random_archs(10, 3) + [NO_PATH, ALL_3X3])
def test_counts_equal_the_torch_module(arch: str) -> None:
    s = spec(arch, channels=8, cells_per_stage=2)
    m = compute_metrics(s)
    assert torch_counts(build_module(s), example_input(s)) == (m["params"], m["macs"])
    assert sum(x.params for x in layer_table(s)) == m["params"]


def test_dead_edges_change_nothing_in_the_output() -> None:
    import torch

    # the dead 2<-0 conv (node 2 never reaches 3) is not built: same counts as with none there
    a = spec("|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|nor_conv_1x1~1|none~2|", channels=8)
    b = spec("|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|nor_conv_1x1~1|none~2|", channels=8)
    assert a.spec_id != b.spec_id
    assert compute_metrics(a)["params"] == compute_metrics(b)["params"]
    x = example_input(a, batch=2)
    with torch.no_grad():
        assert torch.equal(build_module(a)(x), build_module(b)(x))


def test_constant_network_ignores_its_input() -> None:
    import torch

    s = spec(NO_PATH)
    m = build_module(s)
    with torch.no_grad():
        y1, y2 = m(example_input(s, seed=1)), m(example_input(s, seed=2))
    assert y1.shape == (1, 10) and torch.equal(y1, y2)


def test_space_counts_every_string_once() -> None:
    space = get_space("nb201")
    assert space.count() == 15_625
    archs = {arch_string(arch_from_index(i)) for i in range(space.count())}
    assert len(archs) == 15_625
    sample = space.sample(50, seed=1)
    assert len({s.spec_id for s in sample}) == 50 and all(s.family == "nb201" for s in sample)


def test_space_count_cli() -> None:
    from click.testing import CliRunner

    from nnflash.controller.cli import cli

    r = CliRunner().invoke(cli, ["space", "count", "--space", "nb201"])
    assert r.exit_code == 0 and "15,625 configurations" in r.output and "not merged" in r.output


@pytest.mark.parametrize("arch", [EXAMPLE, NO_PATH])
def test_onnx_export_round_trip(tmp_path: Path, arch: str) -> None:
    from nnflash.models.export import export_spec

    art = export_spec(spec(arch, channels=4, cells_per_stage=1), "onnx", tmp_path)
    assert Path(art.path).is_file() and art.max_abs_err <= art.tolerance


def test_tflite_export_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("litert_torch")
    from nnflash.models.export import export_spec

    for arch in (EXAMPLE, NO_PATH):
        art = export_spec(spec(arch, channels=4, cells_per_stage=1), "tflite", tmp_path)
        assert Path(art.path).is_file() and art.max_abs_err <= art.tolerance


def test_cost_model_records_carry_the_layer_places_and_fit() -> None:
    import numpy as np

    from nnflash.calibration.features import layer_records
    from nnflash.calibration.roofline import RooflineLatencyModel

    recs = layer_records(spec(EXAMPLE))
    body = [r for r in recs if r.section == "body"]
    assert {r.section for r in recs} == {"stem", "body", "head"}
    assert {r.cell for r in body} == set(range(17)) and all(r.index is not None and r.role for r in body)
    assert {r.role for r in body if r.cell == 5} >= {"conv_a", "conv_b", "down", "down_pool", "add"}
    specs = get_space("nb201").sample(10, seed=2)
    # a stand-in latency that follows the work (data for the fit, not a measurement claim)
    y = np.array([0.2 + compute_metrics(s)["macs"] / 4e6 + 0.01 * len(layer_table(s)) for s in specs])
    pred = RooflineLatencyModel(conv_algorithm="im2col", max_nfev=100).fit(specs, y).predict(specs)
    assert np.all(np.isfinite(pred)) and np.all(pred > 0)
    assert np.median(np.abs(pred / y - 1)) < 0.25
