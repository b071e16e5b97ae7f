"""The torch module agrees with the analytic metrics on many random specs."""

from __future__ import annotations

import random

import pytest
import torch

from nnflash.models.builder import build_module, example_input
from nnflash.models.metrics import compute_metrics
from nnflash.models.spec import PRESETS, parse_spec, preset


def torch_counts(module: torch.nn.Module, x: torch.Tensor) -> tuple[int, int]:
    macs = 0

    def hook(m, inputs, out):
        nonlocal macs
        per_out = out.numel() // out.shape[0]
        if isinstance(m, torch.nn.Conv2d):
            macs += per_out * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            macs += per_out * m.in_features

    handles = [
        m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    with torch.no_grad():
        module(x)
    for h in handles:
        h.remove()
    return sum(p.numel() for p in module.parameters()), macs


def random_specs(n: int, seed: int):
    rng = random.Random(seed)
    for k in range(n):
        cells = [
            {"depth": rng.randint(1, 8), "width": rng.randint(1, 24), "tc": rng.randint(0, 40)}
            for _ in range(rng.randint(1, 4))
        ]
        yield parse_spec(
            {
                "family": "dense",
                "cells": cells,
                "conv": rng.choice(["regular", "depthwise"]),
                "input_shape": [rng.randint(1, 4), rng.randint(4, 24), rng.randint(4, 24)],
                "num_classes": rng.randint(1, 12),
                "seed": k,
            }
        )
        yield parse_spec(
            {
                "family": "mlp",
                "cells": cells,
                "input_shape": [rng.randint(1, 40)],
                "seed": k,
                "activation": rng.choice(["relu", "tanh"]),
            }
        )


@pytest.mark.parametrize("spec", list(random_specs(40, 0)), ids=lambda s: f"{s.family}-{s.spec_id}")
def test_params_and_macs_equal_the_torch_module(spec):
    m = compute_metrics(spec)
    assert torch_counts(build_module(spec), example_input(spec)) == (m["params"], m["macs"])


@pytest.mark.parametrize("name", [n for n in sorted(PRESETS) if n not in ("resnet101", "wide_resnet50_2")])
def test_presets_equal_the_torch_module(name):
    spec = preset(name)
    if spec.family in ("resnet", "mobilenetv2"):  # small input keeps the test fast; counts scale exactly
        spec = parse_spec({**spec.to_dict(), "input_shape": [3, 64, 64]})
    m = compute_metrics(spec)
    assert torch_counts(build_module(spec), example_input(spec)) == (m["params"], m["macs"])


def test_build_is_deterministic_and_uses_stored_wiring():
    spec = preset("nnmass_reference")
    a, b = build_module(spec), build_module(spec)
    x = example_input(spec, batch=2)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    cell = a.cells[2]
    assert cell.skip5.tolist() == list(spec.skips[2][5])


def test_builder_does_not_disturb_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_module(preset("nnmass_reference"))
    assert torch.equal(torch.rand(3), expected)
