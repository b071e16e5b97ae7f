"""LDI: hand-computed cases, the im2col adaptation, and loose checks of the paper's claims."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nnflash.models import ldi as ldi_mod
from nnflash.models.ldi import ldi


def _orthogonal_linear(n: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(n, n, bias=False)
    nn.init.orthogonal_(layer.weight)
    return layer


def test_orthogonal_linear_on_raw_input_is_exactly_isometric() -> None:
    r = ldi(_orthogonal_linear(16), (16,), batch=4)
    assert r.n_singular_values == 4 * 16
    assert r.mean == pytest.approx(1.0, abs=1e-6)
    assert r.std < 1e-5
    assert [name for name, _, _ in r.per_layer] == ["Linear"]


def test_relu_mask_gives_the_fraction_of_active_units() -> None:
    # J = W diag(1[x>0]) with W orthogonal: singular values are 1 (active unit) or 0 (inactive).
    n, batch, seed = 32, 8, 3
    net = nn.Sequential(nn.ReLU(), _orthogonal_linear(n))
    x = torch.randn((batch, n), generator=torch.Generator().manual_seed(seed))
    active = float((x > 0).float().mean())
    r = ldi(net, (n,), batch=batch, seed=seed)
    assert r.mean == pytest.approx(active, abs=1e-6)
    assert r.std == pytest.approx(math.sqrt(active * (1 - active)), abs=1e-5)


def test_all_positive_input_through_relu_keeps_isometry() -> None:
    # the "all-positive input" case: a ReLU that passes everything leaves J = W orthogonal
    class Shift(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.abs() + 1.0

    net = nn.Sequential(Shift(), nn.ReLU(), _orthogonal_linear(8))
    r = ldi(net, (8,), batch=3)
    assert r.mean == pytest.approx(1.0, abs=1e-6) and r.std < 1e-5


def test_gram_singular_values_match_svdvals() -> None:
    g = torch.Generator().manual_seed(0)
    for o, n in ((5, 40), (40, 5), (7, 7)):
        w = torch.randn(o, n, generator=g)
        masks = (torch.rand(6, n, generator=g) > 0.4).float()
        got = ldi_mod._singular_values(w, masks)
        want = torch.linalg.svdvals(w.unsqueeze(0) * masks.unsqueeze(1))
        got_sorted = got.sort(dim=1, descending=True).values.float()
        torch.testing.assert_close(got_sorted, want, atol=1e-4, rtol=1e-4)


def test_orthogonal_pointwise_conv_is_isometric() -> None:
    conv = nn.Conv2d(8, 8, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(_orthogonal_linear(8, seed=2).weight.view(8, 8, 1, 1))
    r = ldi(conv, (8, 5, 5), batch=2, max_positions=7)
    assert r.n_singular_values == 2 * 7 * 8
    assert r.mean == pytest.approx(1.0, abs=1e-6)


def test_depthwise_conv_singular_value_is_the_kernel_norm() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, groups=4, bias=False)  # no padding: every patch is interior
    r = ldi(conv, (4, 6, 6), batch=2, max_positions=100)
    norms = conv.weight.detach().reshape(4, -1).norm(dim=1).double()
    assert r.n_singular_values == 2 * 16 * 4  # 4x4 output positions, one value per channel
    assert r.mean == pytest.approx(float(norms.mean()), rel=1e-5)
    assert r.std == pytest.approx(float(norms.std(unbiased=False)), rel=1e-4)


def test_conv_matches_brute_force_jacobian() -> None:
    # Regular 3x3 conv after a ReLU: the singular values at an interior position equal those of the
    # autograd Jacobian of that output position w.r.t. the pre-activation patch.
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 4, 3, bias=False)
    net = nn.Sequential(nn.ReLU(), conv)
    r = ldi(net, (3, 3, 3), batch=1, seed=5)  # one output position
    z = torch.randn((1, 3, 3, 3), generator=torch.Generator().manual_seed(5))
    jac = torch.autograd.functional.jacobian(lambda t: conv(torch.relu(t)).reshape(-1), z)
    sv = torch.linalg.svdvals(jac.reshape(4, -1).double())
    assert r.n_singular_values == 4
    assert r.mean == pytest.approx(float(sv.mean()), rel=1e-5)


def test_caller_module_is_untouched_and_result_deterministic() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).eval()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    a = ldi(net, (3, 6, 6), seed=1)
    b = ldi(net, (3, 6, 6), seed=1)
    assert a == b
    assert not net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert ldi(net, (3, 6, 6), seed=2) != a


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="batch"):
        ldi(_orthogonal_linear(4), (4,), batch=0)
    with pytest.raises(ValueError, match="max_positions"):
        ldi(_orthogonal_linear(4), (4,), max_positions=0)
    with pytest.raises(ValueError, match="bn_mode"):
        ldi(_orthogonal_linear(4), (4,), bn_mode="other")
    with pytest.raises(ValueError, match="no Linear or Conv2d"):
        ldi(nn.ReLU(), (4,))


def test_specs_of_every_family() -> None:
    builder = pytest.importorskip("nnflash.models.builder")
    from nnflash.models.spec import parse_spec

    specs = [
        {
            "family": "dense",
            "cells": [{"depth": 4, "width": 8, "tc": 6}],
            "conv": "regular",
            "input_shape": [3, 8, 8],
            "num_classes": 10,
            "seed": 1,
        },
        {
            "family": "dense",
            "cells": [{"depth": 4, "width": 8, "tc": 6}],
            "conv": "depthwise",
            "input_shape": [3, 8, 8],
            "num_classes": 10,
            "seed": 1,
        },
        {
            "family": "resnet",
            "layers": [1, 1, 1, 1],
            "planes": [8, 8, 16, 16],
            "input_shape": [3, 32, 32],
            "num_classes": 10,
        },
        {"family": "mobilenetv2", "width_mult": 0.25, "input_shape": [3, 32, 32], "num_classes": 10},
        {"family": "mlp", "cells": [{"depth": 4, "width": 8, "tc": 2}], "input_shape": [16], "num_classes": 4},
    ]
    for obj in specs:
        spec = parse_spec(obj)
        module = builder.build_module(spec)
        n_layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in module.modules())
        r = ldi(module, spec.input_shape, batch=4, max_positions=8)
        assert math.isfinite(r.mean) and r.mean > 0 and r.std >= 0, obj
        assert len(r.per_layer) == n_layers
        assert r.n_singular_values > 0


def test_concatenation_skips_move_mlp_ldi_up_loosely() -> None:
    # The paper ties more concatenation skips (higher NN-Mass) to better gradient flow. We only
    # check the direction, with a wide gap between "no skips" and "many skips", on two seeds.
    builder = pytest.importorskip("nnflash.models.builder")
    from nnflash.models.spec import parse_spec

    def mean_ldi(tc: int, seed: int) -> float:
        spec = parse_spec(
            {
                "family": "mlp",
                "cells": [{"depth": 12, "width": 16, "tc": tc}],
                "input_shape": [32],
                "num_classes": 10,
                "seed": seed,
            }
        )
        return ldi(builder.build_module(spec), spec.input_shape, batch=8, seed=seed).mean

    for seed in (1, 2):
        assert mean_ldi(64, seed) > mean_ldi(0, seed)
