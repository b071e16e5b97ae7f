"""Zero-cost proxies: scores of an untrained network, computed at initialization on one real batch.

A *proxy batch* (:func:`proxy_batch`) is ``batch_size`` images of the dataset's **training split**,
drawn without replacement by ``seed`` and normalized exactly as training normalizes them
(:meth:`Dataset.normalization`). Its :attr:`ProxyBatch.key` -- dataset fingerprint, validation split
seed, batch seed and size -- identifies it, so proxies can be cached per (spec, dataset, batch key).

Every proxy builds a fresh module from the spec (weights drawn from ``init_seed``, as training does),
so the results are deterministic for fixed seeds and thread count. Definitions (our own code, after
Mellor et al. 2021, "Neural Architecture Search without Training", and Abdelfattah et al. 2021,
"Zero-Cost Proxies for Lightweight NAS"); ``W`` ranges over the weights of every convolution and
linear layer, ``L`` is the cross-entropy of the batch, modules are in training mode (batch-norm on
batch statistics) unless said otherwise:

- ``synflow`` (Tanaka et al. 2020): every parameter replaced by its absolute value, the module in
  float64 and eval mode (batch-norm at its initial running statistics: the identity, as removing it),
  ``R = sum(f(1))`` for an all-ones input of the batch's shape; score ``sum |W * dR/dW|``. By
  definition it is data-independent: it uses the batch's shape, not its pixels.
- ``naswot``: for every ReLU, the binary pattern ``c = (input > 0)`` of each image over its units;
  the kernel ``K[i, j]`` counts the units on which images ``i`` and ``j`` agree
  (``c c^T + (1-c)(1-c)^T`` summed over ReLUs); score ``log|det K|``. A singular kernel (two
  images with identical patterns) gets a ridge of ``1e-3`` on the diagonal so the score stays
  finite.
- ``grad_norm``: ``sum over layers of ||dL/dW||_2``.
- ``snip``: ``sum |W * dL/dW|`` (the connection sensitivity of Lee et al. 2019).
- ``jacob_cov``: the input gradients ``J_i = d sum(f(x_i)) / d x_i``, their correlation matrix
  ``C`` over the batch (rows with no variation count as uncorrelated), eigenvalues ``v``; score
  ``-sum(log(v + k) + 1 / (v + k))`` with ``k = 1e-5``.

Larger is "better" for every proxy (the papers' sign conventions). ``synflow``, ``grad_norm`` and
``snip`` span orders of magnitude: predictors take their logarithm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnflash.models.builder import build_module
from nnflash.models.datasets import Dataset
from nnflash.models.errors import NnflashError
from nnflash.models.spec import AnySpec

PROXY_NAMES = ("synflow", "naswot", "grad_norm", "snip", "jacob_cov")
DEFAULT_BATCH_SIZE = 64
DEFAULT_BATCH_SEED = 0
_JACOB_K = 1e-5
_NASWOT_RIDGE = 1e-3


class ProxyError(NnflashError, ValueError):
    """A proxy cannot be computed: spec and dataset disagree, a bad batch size or proxy name."""


@dataclass(frozen=True, eq=False)
class ProxyBatch:
    """One normalized batch of real images ``x`` (float32, ``(N, C, H, W)``) and labels ``y``."""

    dataset: str
    fingerprint: str
    split_seed: int
    seed: int
    input_shape: tuple[int, int, int]
    num_classes: int
    x: torch.Tensor = field(repr=False)
    y: torch.Tensor = field(repr=False)

    @property
    def batch_size(self) -> int:
        return int(self.x.shape[0])

    @property
    def key(self) -> str:
        """``<fingerprint>-v<split seed>-s<seed>-b<size>``: the cache key of proxies on this batch."""
        return batch_key(self.fingerprint, self.split_seed, self.seed, self.batch_size)


def batch_key(fingerprint: str, split_seed: int, seed: int, batch_size: int) -> str:
    return f"{fingerprint}-v{split_seed}-s{seed}-b{batch_size}"


def proxy_batch(dataset: Dataset, seed: int = DEFAULT_BATCH_SEED, batch_size: int = DEFAULT_BATCH_SIZE) -> ProxyBatch:
    """``batch_size`` training images of ``dataset`` drawn by ``seed``, normalized as in training."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ProxyError(f"proxy batch seed: must be a non-negative integer, got {seed!r}")
    n = len(dataset.train_y)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 2 <= batch_size <= n:
        raise ProxyError(f"proxy batch size: must be an integer in 2..{n}, got {batch_size!r}")
    idx = np.sort(np.random.default_rng(seed).choice(n, batch_size, replace=False))
    x = dataset.normalization().apply(torch.from_numpy(np.ascontiguousarray(dataset.train_x[idx])))
    y = torch.from_numpy(dataset.train_y[idx].astype(np.int64))
    return ProxyBatch(
        dataset=dataset.name,
        fingerprint=dataset.fingerprint,
        split_seed=dataset.split_seed,
        seed=seed,
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        x=x,
        y=y,
    )


def _inputs(spec: AnySpec, batch: ProxyBatch) -> torch.Tensor:
    shape = tuple(spec.input_shape)
    if shape == tuple(batch.input_shape):
        return batch.x
    if len(shape) == 1 and shape[0] == math.prod(batch.input_shape):
        return batch.x.flatten(1)
    raise ProxyError(
        f"spec {spec.spec_id}: input shape {'x'.join(map(str, shape))} does not fit dataset "
        f"{batch.dataset} ({'x'.join(map(str, batch.input_shape))})"
    )


def _weights(module: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _loss_grads(spec: AnySpec, x: torch.Tensor, y: torch.Tensor, init_seed: int) -> tuple[float, float]:
    """``grad_norm`` and ``snip`` from one backward pass of the cross-entropy."""
    module = build_module(spec, init_seed=init_seed).train()
    loss = F.cross_entropy(module(x), y)
    weights = _weights(module)
    if not weights:  # no convolution or linear layer (an NB201 cell without a path): no saliency
        return 0.0, 0.0
    grads = torch.autograd.grad(loss, weights)
    grad_norm = sum(float(g.norm()) for g in grads)
    snip = sum(float((w.detach() * g).abs().sum()) for w, g in zip(weights, grads))
    return grad_norm, snip


def _synflow(spec: AnySpec, x: torch.Tensor, init_seed: int) -> float:
    module = build_module(spec, init_seed=init_seed).double().eval()
    with torch.no_grad():
        for p in module.parameters():
            p.abs_()
    ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64)
    r = module(ones).sum()
    weights = _weights(module)
    if not weights:  # no convolution or linear layer: no synaptic flow
        return 0.0
    grads = torch.autograd.grad(r, weights)
    return float(sum((w.detach() * g).abs().sum() for w, g in zip(weights, grads)))


def _naswot(spec: AnySpec, x: torch.Tensor, init_seed: int) -> float:
    module = build_module(spec, init_seed=init_seed).train()
    n = x.shape[0]
    kernel = torch.zeros((n, n), dtype=torch.float64)

    def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        c = (inp[0].detach().reshape(n, -1) > 0).to(torch.float64)
        kernel.add_(c @ c.T + (1 - c) @ (1 - c).T)

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    k = kernel.numpy()
    sign, logdet = np.linalg.slogdet(k)
    if sign <= 0 or not math.isfinite(logdet):
        sign, logdet = np.linalg.slogdet(k + _NASWOT_RIDGE * np.eye(n))
    return float(logdet)


def _jacob_cov(spec: AnySpec, x: torch.Tensor, init_seed: int) -> float:
    module = build_module(spec, init_seed=init_seed).train()
    xi = x.clone().requires_grad_(True)
    out = module(xi)
    (jac,) = torch.autograd.grad(out.sum(), xi, allow_unused=True)
    if jac is None:  # the output does not depend on the input: every image looks alike (the worst score)
        corr = np.ones((len(x), len(x)))
    else:
        j = jac.reshape(len(x), -1).double().numpy()
        j = j - j.mean(1, keepdims=True)
        norm = np.linalg.norm(j, axis=1)
        j = np.divide(j, norm[:, None], out=np.zeros_like(j), where=norm[:, None] > 0)
        corr = j @ j.T
        flat = norm == 0  # images the network cannot tell apart at all: perfectly correlated
        corr[np.ix_(flat, flat)] = 1.0
    np.fill_diagonal(corr, 1.0)
    v = np.linalg.eigvalsh(corr)
    return float(-np.sum(np.log(v + _JACOB_K) + 1.0 / (v + _JACOB_K)))


def compute_proxies(
    spec: AnySpec, batch: ProxyBatch, *, init_seed: int = 0, names: Sequence[str] = PROXY_NAMES
) -> dict[str, float]:
    """The zero-cost proxies ``names`` of ``spec`` on ``batch`` (see the module docstring)."""
    unknown = [n for n in names if n not in PROXY_NAMES]
    if unknown:
        raise ProxyError(f"unknown proxy {unknown[0]!r} (known: {', '.join(PROXY_NAMES)})")
    if spec.num_classes != batch.num_classes:
        raise ProxyError(
            f"spec {spec.spec_id}: {spec.num_classes} classes, dataset {batch.dataset} has {batch.num_classes}"
        )
    x = _inputs(spec, batch)
    out: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        if "grad_norm" in names or "snip" in names:
            gn, sn = _loss_grads(spec, x, batch.y, init_seed)
            out["grad_norm"], out["snip"] = gn, sn
        if "synflow" in names:
            out["synflow"] = _synflow(spec, x, init_seed)
        if "naswot" in names:
            out["naswot"] = _naswot(spec, x, init_seed)
        if "jacob_cov" in names:
            out["jacob_cov"] = _jacob_cov(spec, x, init_seed)
    return {n: out[n] for n in names}
