"""Layerwise dynamical isometry (LDI): the gradient-propagation diagnostic of the NN-Mass paper.

At initialization, for each layer ``i`` form the Jacobian ``J_i = W_i diag(phi'(x_i))`` of the
layer's output with respect to the pre-activation that feeds it, take its singular values, pool
them over layers and a batch of inputs, and report their mean and standard deviation. A mean close
to 1 (and a small spread) means gradients neither vanish nor explode as they cross the layer.

How it is computed here (our adaptation; the paper defines it for fully connected layers)
----------------------------------------------------------------------------------------
* **Which layers.** Every ``nn.Linear`` and ``nn.Conv2d`` in the module, found generically with
  forward hooks that capture each layer's input on one forward pass of a seeded standard-normal
  batch. BatchNorm uses batch statistics (the module is copied and put in train mode, so the
  caller's module and its running statistics are untouched); ``bn_mode="eval"`` uses running
  statistics instead.
* **phi'.** Forward hooks on the elementwise activation modules (ReLU, ReLU6, LeakyReLU, GELU,
  SiLU, Hardswish, Tanh, Sigmoid, ...) record ``phi'(z)`` by autograd at the activation's own input
  ``z``, keyed by the output tensor. A layer whose input *is* such an output uses that derivative.
  Otherwise: the network's raw input gets ``phi' = 1``; an input that is entirely non-negative is
  taken as the output of a functional ReLU (``phi' = [x > 0]``); anything else (a linear
  bottleneck, a residual sum) gets ``phi' = 1``. Inputs reached through a concatenation or channel
  selection of activation outputs fall under the non-negative rule, which is exact for ReLU.
* **Linear.** Exact: per input, ``J = W diag(phi')``, of size ``out x in``.
* **Conv2d** (unfolded, im2col form). At an output position the convolution is the linear map
  ``W_mat`` (``out x in*kh*kw``) applied to the receptive-field patch, so the position's Jacobian
  is ``W_mat diag(phi'(patch))`` (zero padding contributes zero columns). With groups (depthwise
  included) the map is block diagonal, one block ``out/g x in/g*kh*kw`` per group, and the singular
  values of a block-diagonal matrix are those of its blocks, so each group's block is taken
  separately. At most ``max_positions`` output positions per input are sampled (seeded), which
  keeps the cost bounded.
* **Singular values** are the square roots of the eigenvalues of the smaller Gram matrix (``J J^T``
  or ``J^T J``, computed batched in float32, eigenvalues in float64); the singular values that the
  mask makes exactly zero (fewer active columns than rows) are set to zero exactly. This is ~7x
  faster than a batched float32 SVD of wide patch Jacobians (and ~2.5x faster than a float64 Gram);
  a small non-zero singular value carries an absolute error of about ``sqrt(eps32) * sigma_max``,
  which is negligible for a mean.

The pooled mean and std are over all singular values of all sampled Jacobians of all layers (each
value counts once); ``per_layer`` gives the same per layer.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LDIResult", "LayerLDI", "ldi"]

_ELEMENTWISE_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
)

# Bytes of float32 Jacobians handled at once (bounds the memory of the batched Gram products).
_CHUNK_BYTES = 64 << 20


class LayerLDI(NamedTuple):
    name: str
    mean: float
    std: float


@dataclasses.dataclass(frozen=True)
class LDIResult:
    """Mean and std of the pooled singular values, per-layer figures, and the pooled count."""

    mean: float
    std: float
    per_layer: list[LayerLDI]
    n_singular_values: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "ldi_mean": self.mean,
            "ldi_std": self.std,
            "n_singular_values": self.n_singular_values,
            "per_layer": [{"name": n, "mean": m, "std": s} for n, m, s in self.per_layer],
        }


class _Moments:
    """Running count, sum and sum of squares in float64."""

    def __init__(self) -> None:
        self.n = 0
        self.s = 0.0
        self.ss = 0.0

    def add(self, values: torch.Tensor) -> None:
        v = values.detach().double()
        self.n += int(v.numel())
        self.s += float(v.sum())
        self.ss += float((v * v).sum())

    def merge(self, other: _Moments) -> None:
        self.n += other.n
        self.s += other.s
        self.ss += other.ss

    def mean_std(self) -> tuple[float, float]:
        if self.n == 0:
            return float("nan"), float("nan")
        mean = self.s / self.n
        var = max(self.ss / self.n - mean * mean, 0.0)
        return mean, math.sqrt(var)


def _singular_values(w: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Singular values of ``w @ diag(m)`` for each row ``m`` of ``masks``, shape ``(B, min(o, n))``.

    ``w`` is ``(o, n)``, ``masks`` is ``(B, n)``. Uses the smaller Gram matrix, chunked over ``B``.
    """
    o, n = w.shape
    k = min(o, n)
    out = []
    per = max(1, _CHUNK_BYTES // (4 * max(o, 1) * max(n, 1)))
    w = w.detach().float()
    wtw = w.t() @ w if o > n else None
    for start in range(0, masks.shape[0], per):
        m = masks[start : start + per].float()
        if wtw is None:
            wm = w.unsqueeze(0) * m.unsqueeze(1)  # (b, o, n)
            gram = wm @ wm.transpose(1, 2)  # (b, o, o)
        else:
            gram = m.unsqueeze(2) * wtw.unsqueeze(0) * m.unsqueeze(1)  # diag(m) W^T W diag(m)
        sv = torch.linalg.eigvalsh(gram.double()).clamp_min(0).sqrt()  # ascending
        # Columns zeroed by the mask give exact zero singular values, which float32 rounding in
        # the Gram product would turn into ~sqrt(eps) * sigma_max: set them to zero exactly.
        n_zero = k - torch.clamp((m != 0).sum(dim=1), max=k)  # (b,)
        sv = torch.where(torch.arange(k).unsqueeze(0) < n_zero.unsqueeze(1), 0.0, sv)
        out.append(sv)
    return torch.cat(out, 0)


def _derivative(module: nn.Module, z: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        zz = z.detach().clone().requires_grad_(True)
        # forward(), not module(): that would re-enter the hook; clone() lets an in-place op run
        y = module.forward(zz.clone())
        (g,) = torch.autograd.grad(y.sum(), zz)
    return g.detach()


def ldi(
    module: nn.Module,
    input_shape: Sequence[int],
    *,
    batch: int = 8,
    seed: int = 0,
    max_positions: int = 64,
    bn_mode: str = "batch",
) -> LDIResult:
    """LDI of ``module`` at its current (initial) weights on a seeded standard-normal batch.

    Returns the mean and std of the singular values of the layer Jacobians ``W_i diag(phi'(x_i))``,
    pooled over every Linear/Conv2d layer, every input of the batch and up to ``max_positions``
    sampled output positions per input of each convolution. See the module docstring.
    """
    if batch < 1:
        raise ValueError(f"batch: must be >= 1, got {batch}")
    if max_positions < 1:
        raise ValueError(f"max_positions: must be >= 1, got {max_positions}")
    if bn_mode not in ("batch", "eval"):
        raise ValueError(f"bn_mode: expected 'batch' or 'eval', got {bn_mode!r}")
    net = copy.deepcopy(module)
    net.train(bn_mode == "batch")
    for p in net.parameters():
        p.requires_grad_(False)

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *(int(d) for d in input_shape)), generator=gen)

    derivs: dict[int, torch.Tensor] = {}  # id of an activation's output tensor -> phi'(z)
    keep_alive: list[torch.Tensor] = []  # ids stay unique while the tensors live
    captured: list[tuple[str, nn.Module, torch.Tensor, Optional[torch.Tensor]]] = []

    def act_hook(mod: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if not isinstance(output, torch.Tensor) or not inputs:
            return
        z = inputs[0]
        if z is output:  # in-place: z was overwritten by phi(z); exact for ReLU-like activations
            z = output
        derivs[id(output)] = _derivative(mod, z)
        keep_alive.append(output)

    def layer_hook(name: str) -> Any:
        def hook(mod: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            inp = inputs[0]
            captured.append((name, mod, inp.detach(), derivs.get(id(inp))))

        return hook

    handles = []
    for name, sub in net.named_modules():
        if isinstance(sub, _ELEMENTWISE_ACTIVATIONS):
            handles.append(sub.register_forward_hook(act_hook))
        elif isinstance(sub, (nn.Linear, nn.Conv2d)):
            handles.append(sub.register_forward_hook(layer_hook(name or type(sub).__name__)))
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    if not captured:
        raise ValueError("the module has no Linear or Conv2d layer to measure")

    total = _Moments()
    per_layer: list[LayerLDI] = []
    seen: dict[str, int] = {}
    for name, mod, inp, deriv in captured:
        if deriv is None:
            if inp is x or inp.data_ptr() == x.data_ptr():
                deriv = torch.ones_like(inp)
            elif bool((inp >= 0).all()):
                deriv = (inp > 0).to(inp.dtype)
            else:
                deriv = torch.ones_like(inp)
        mom = _Moments()
        if isinstance(mod, nn.Linear):
            w = mod.weight
            masks = deriv.reshape(-1, w.shape[1])
            mom.add(_singular_values(w, masks))
        else:
            assert isinstance(mod, nn.Conv2d)
            mom.add(_conv_singular_values(mod, deriv, max_positions, gen))
        total.merge(mom)
        mean, std = mom.mean_std()
        k = seen.get(name, 0)
        seen[name] = k + 1
        per_layer.append(LayerLDI(name if k == 0 else f"{name}#{k}", mean, std))
    mean, std = total.mean_std()
    return LDIResult(mean=mean, std=std, per_layer=per_layer, n_singular_values=total.n)


def _conv_singular_values(
    conv: nn.Conv2d, deriv: torch.Tensor, max_positions: int, gen: torch.Generator
) -> torch.Tensor:
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        # 'same'/'valid' strings and non-zero padding modes: pad explicitly, then unfold unpadded.
        deriv = _pad_like(conv, deriv)
        padding: Any = 0
    else:
        padding = conv.padding
    patches = F.unfold(
        deriv,
        kernel_size=conv.kernel_size,
        dilation=conv.dilation,
        padding=padding,
        stride=conv.stride,
    )  # (B, C*kh*kw, L)
    b, _, n_pos = patches.shape
    k = min(max_positions, n_pos)
    if k < n_pos:
        idx = torch.stack([torch.randperm(n_pos, generator=gen)[:k] for _ in range(b)])
        patches = torch.gather(patches, 2, idx.unsqueeze(1).expand(-1, patches.shape[1], -1))
    masks = patches.transpose(1, 2).reshape(b * k, -1)  # (B*k, C*kh*kw)
    g = conv.groups
    w = conv.weight  # (out, in/g, kh, kw)
    out_g = w.shape[0] // g
    cols = w.shape[1] * w.shape[2] * w.shape[3]
    if g == 1:
        return _singular_values(w.reshape(w.shape[0], -1), masks).reshape(-1)
    w_g = w.reshape(g, out_g, cols)
    m_g = masks.reshape(b * k, g, cols)
    if out_g == 1:
        # depthwise: one row per group, whose only singular value is the row's norm
        return (w_g[:, 0, :].unsqueeze(0) * m_g).norm(dim=2).reshape(-1)
    return torch.cat([_singular_values(w_g[j], m_g[:, j, :]).reshape(-1) for j in range(g)])


def _pad_like(conv: nn.Conv2d, t: torch.Tensor) -> torch.Tensor:
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return t
        # 'same' (stride 1): total padding dilation*(k-1), split like torch (extra on the right).
        pads: list[int] = []
        for d, k in zip(reversed(conv.dilation), reversed(conv.kernel_size)):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return F.pad(t, pads)
    ph, pw = conv.padding
    return F.pad(t, [pw, pw, ph, ph])  # derivative of padded values: none (zero columns)
