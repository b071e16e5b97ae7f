"""Zero-cost proxies on one real batch of a tiny generated dataset: finite, deterministic, keyed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from accuracy_fixture import tiny_dataset

from nnflash.models.proxies import PROXY_NAMES, ProxyError, batch_key, compute_proxies, proxy_batch
from nnflash.models.spec import Cell, DenseSpec, MlpSpec

DS = tiny_dataset()
TINY = DenseSpec((Cell(2, 2, 0), Cell(2, 2, 0)), input_shape=(1, 8, 8), num_classes=4)
BIG = DenseSpec((Cell(3, 8, 4), Cell(4, 16, 16)), input_shape=(1, 8, 8), num_classes=4)


def test_batch_is_real_training_images_normalized_like_training() -> None:
    b = proxy_batch(DS, seed=3, batch_size=16)
    assert b.x.shape == (16, 1, 8, 8) and b.y.shape == (16,) and b.x.dtype == torch.float32
    idx = np.sort(np.random.default_rng(3).choice(len(DS.train_y), 16, replace=False))
    want = DS.normalization().apply(torch.from_numpy(DS.train_x[idx]))
    assert torch.equal(b.x, want) and np.array_equal(b.y.numpy(), DS.train_y[idx])
    assert b.key == batch_key(DS.fingerprint, DS.split_seed, 3, 16) == f"{DS.fingerprint}-v0-s3-b16"
    assert proxy_batch(DS, seed=4, batch_size=16).key != b.key
    assert proxy_batch(DS, seed=3, batch_size=8).key != b.key


def test_every_proxy_is_finite_and_deterministic() -> None:
    b = proxy_batch(DS, seed=0, batch_size=32)
    before = torch.random.get_rng_state()
    a = compute_proxies(BIG, b)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is left alone
    assert list(a) == list(PROXY_NAMES)
    assert all(math.isfinite(v) for v in a.values()), a
    assert a == compute_proxies(BIG, proxy_batch(DS, seed=0, batch_size=32))
    assert compute_proxies(BIG, b, init_seed=1) != a  # the weights matter
    assert compute_proxies(BIG, b, names=["naswot"]) == {"naswot": a["naswot"]}


def test_a_wider_deeper_net_has_a_larger_synflow_and_more_capacity_signals() -> None:
    b = proxy_batch(DS, seed=0, batch_size=32)
    small, big = compute_proxies(TINY, b), compute_proxies(BIG, b)
    assert big["synflow"] > 100 * small["synflow"]
    assert big["naswot"] > small["naswot"]  # more ReLU units tell the images apart better
    assert big["snip"] > small["snip"]


def test_mlp_specs_take_flattened_images() -> None:
    mlp = MlpSpec(cells=(Cell(3, 16, 2),), input_shape=(64,), num_classes=4)
    out = compute_proxies(mlp, proxy_batch(DS, batch_size=16))
    assert all(math.isfinite(v) for v in out.values())


def test_bad_input_is_a_clear_error() -> None:
    b = proxy_batch(DS, batch_size=8)
    with pytest.raises(ProxyError, match=r"input shape 3x32x32 does not fit dataset tiny-quadrants \(1x8x8\)"):
        compute_proxies(DenseSpec((Cell(2, 4, 0),), num_classes=4), b)
    with pytest.raises(ProxyError, match="10 classes, dataset tiny-quadrants has 4"):
        compute_proxies(DenseSpec((Cell(2, 4, 0),), input_shape=(1, 8, 8)), b)
    with pytest.raises(ProxyError, match="unknown proxy 'fisher'"):
        compute_proxies(TINY, b, names=["fisher"])
    with pytest.raises(ProxyError, match="batch size"):
        proxy_batch(DS, batch_size=1)
    with pytest.raises(ProxyError, match="batch size"):
        proxy_batch(DS, batch_size=10_000)
    with pytest.raises(ProxyError, match="seed"):
        proxy_batch(DS, seed=-1)


def test_a_network_without_a_path_from_its_input_scores_lowest_not_a_crash() -> None:
    from nnflash.models.spec import parse_spec

    dead = parse_spec(
        {"family": "nb201", "arch": "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "input_shape": [1, 8, 8],
         "num_classes": 4, "channels": 4, "cells_per_stage": 1}
    )  # fmt: skip
    live = parse_spec(
        {"family": "nb201", "arch": "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|nor_conv_1x1~2|",
         "input_shape": [1, 8, 8], "num_classes": 4, "channels": 4, "cells_per_stage": 1}
    )  # fmt: skip
    b = proxy_batch(DS, seed=0, batch_size=16)
    d, a = compute_proxies(dead, b), compute_proxies(live, b)
    assert all(math.isfinite(v) for v in d.values()), d
    assert d["synflow"] == d["snip"] == d["grad_norm"] == 0.0  # no convolution or linear weight at all
    assert a["synflow"] > 0 and a["snip"] > 0
    assert d["jacob_cov"] < a["jacob_cov"]  # every image looks alike to a constant network
