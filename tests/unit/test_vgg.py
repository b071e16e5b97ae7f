"""The plain ``vgg`` family: layers as data, counts equal to the torch module, NN-Mass 0."""

from __future__ import annotations

import random

import pytest
from test_builder import torch_counts

from nnflash.models.builder import build_module, example_input
from nnflash.models.errors import SpecError
from nnflash.models.metrics import compute_metrics, layer_table
from nnflash.models.spec import VggSpec, parse_spec, preset


def random_vgg(seed: int) -> VggSpec:
    rng = random.Random(seed)
    h = 16
    layers: list[dict] = []
    for _ in range(rng.randint(1, 5)):
        layers.append({"type": "conv", "out": rng.randint(1, 24), "kernel": rng.choice([1, 3, 5])})
        if h >= 2 and rng.random() < 0.5:
            layers.append({"type": "pool"})
            h //= 2
    layers += [{"type": "linear", "out": rng.randint(1, 20)} for _ in range(rng.randint(0, 2))]
    spec = parse_spec(
        {
            "family": "vgg",
            "layers": layers,
            "input_shape": [rng.randint(1, 3), 16, 16],
            "num_classes": rng.randint(1, 12),
            "batch_norm": rng.random() < 0.5,
            "bias": rng.random() < 0.5,
        }
    )
    assert isinstance(spec, VggSpec)
    return spec


@pytest.mark.parametrize("seed", range(12))
def test_random_vgg_counts_equal_the_torch_module(seed: int) -> None:
    spec = random_vgg(seed)
    m = compute_metrics(spec)
    assert torch_counts(build_module(spec), example_input(spec)) == (m["params"], m["macs"])
    assert m["nn_mass"] == 0.0


def test_vgg8_is_neurosims_network() -> None:
    spec = preset("vgg8_cifar")
    m = compute_metrics(spec)
    # NeuroSim V1.3 counts 2 * sum(IFM^2 * C_in * k^2 * C_out) = 1.23184e9 operations for VGG-8
    assert 2 * m["macs"] == 1_231_835_136
    convs = [x for x in layer_table(spec) if x.kind == "conv"]
    assert [(x.in_ch, x.out_ch, x.h_in) for x in convs] == [
        (3, 128, 32),
        (128, 128, 32),
        (128, 256, 16),
        (256, 256, 16),
        (256, 512, 8),
        (512, 512, 8),
    ]
    fcs = [x for x in layer_table(spec) if x.kind == "linear"]
    assert [(x.in_ch, x.out_ch) for x in fcs] == [(8192, 1024), (1024, 10)]
    assert parse_spec(spec.to_json_line()) == spec


@pytest.mark.parametrize(
    "layers, message",
    [
        ([], r"layers: must be a non-empty list"),
        ([{"type": "dense", "out": 3}], r"layers\[0\]\.type: must be one of conv, pool, linear"),
        ([{"type": "conv", "out": 0}], r"layers\[0\]\.out: must be a positive integer"),
        ([{"type": "conv", "out": 4, "kernel": 2}], r"layers\[0\]\.kernel: must be odd"),
        ([{"type": "conv", "out": 4, "stride": 2}], r"layers\[0\]\.stride: unknown field"),
        ([{"type": "linear", "out": 4}, {"type": "conv", "out": 4}], r"layers\[1\]: a convolution cannot follow"),
        ([{"type": "pool"}] * 6, r"layers\[5\]: nothing left to pool"),
        (["conv"], r"layers\[0\]: must be an object"),
    ],
)
def test_bad_vgg_specs_name_the_field(layers: list, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec({"family": "vgg", "layers": layers})
    with pytest.raises(SpecError, match=r"bias: must be true or false"):
        parse_spec({"family": "vgg", "layers": [{"type": "conv", "out": 4}], "bias": 1})
