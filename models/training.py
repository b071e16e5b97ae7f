"""The training engine: train the torch module of a spec on an in-memory dataset under a protocol.

``train_spec(spec, dataset, protocol, seed)`` builds the module (weights drawn from ``seed``), trains
it on the first ``protocol.train_size`` images of the dataset's training split, then measures top-1
accuracy on the first ``protocol.val_size`` validation images and on the whole test split. It
returns a ``TrainingResult``; a loss that becomes NaN or infinite ends the run with status
``diverged`` and a reason (a result, not an exception). Errors of the caller -- a spec whose input
shape or number of classes does not fit the dataset, a protocol asking for more images than the
split holds, a checkpoint of another run -- raise ``TrainingError``.

How it is fast without a DataLoader: the uint8 images sit in one tensor on the training device;
each epoch draws one random permutation, each step gathers its batch by indexing that tensor and
normalizes it on the device (``Normalization``: the training split's per-channel mean and std). No
per-sample Python runs anywhere. Augmentation (random shift, flip) is vectorized over the batch.
On CUDA the module and batches are channels-last.

Determinism: the module's weights come from ``seed``; the permutation, augmentation and any dropout
of epoch ``e`` come from generators seeded by ``(seed, e)``. So a run resumed from the checkpoint of
epoch ``e`` (written atomically after each epoch when ``checkpoint_path`` is given) continues
exactly as the uninterrupted run would have, on the same device and thread count.

Counting: ``images_per_s`` is training images (steps x batch) per second of the training loop
only (evaluation excluded); ``wall_s`` is the whole run including evaluation, summed over resumed
parts.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnflash.models.builder import build_module
from nnflash.models.datasets import Dataset, Normalization
from nnflash.models.errors import NnflashError
from nnflash.models.spec import AnySpec
from nnflash.models.training_protocol import TrainingProtocol
from nnflash_agent.fileio import atomic_path

CHECKPOINT_FORMAT = "nnflash-training-checkpoint"
CHECKPOINT_VERSION = 1


class TrainingError(NnflashError, ValueError):
    """A training cannot start: spec and dataset disagree, bad sizes, a foreign or corrupt checkpoint."""


@dataclass(frozen=True)
class EpochInfo:
    """Passed to ``on_epoch`` after each epoch (and after its checkpoint is written)."""

    epoch: int  # 1-based: the number of epochs completed
    epochs: int
    train_loss: float
    images: int  # training images seen so far, over all epochs
    elapsed_s: float  # training-loop seconds so far
    images_per_s: float


@dataclass
class TrainingResult:
    """What one training reached. ``to_dict()`` is the JSON-able record; the weights stay apart."""

    spec_id: str
    dataset: str
    dataset_fingerprint: str
    protocol_hash: str
    protocol: dict[str, Any]
    seed: int
    status: str  # "ok" or "diverged"
    reason: Optional[str]
    val_accuracy: Optional[float]  # fractions in 0..1; None when diverged
    test_accuracy: Optional[float]
    val_loss: Optional[float]
    test_loss: Optional[float]
    train_loss: list[float]  # mean training loss of each completed epoch
    epochs_done: int
    train_images: int
    val_images: int
    test_images: int
    wall_s: float
    train_s: float
    images_per_s: float
    torch_device: str
    device_name: str
    threads: int
    versions: dict[str, str]
    resumed_from_epoch: int = 0
    state_dict: Optional[dict[str, torch.Tensor]] = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "state_dict"}

    def save_state_dict(self, path: str | Path) -> None:
        """Write the final weights (``torch.save`` of the state dict, CPU tensors) atomically."""
        if self.state_dict is None:
            raise TrainingError(f"spec {self.spec_id}: no weights to save (status {self.status})")
        with atomic_path(path) as tmp:
            torch.save(self.state_dict, tmp)


# ------------------------------------------------------------------------------------ helpers


def resolve_device(torch_device: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if torch_device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(torch_device)
    except (RuntimeError, ValueError):
        raise TrainingError(f"torch device: unknown device {torch_device!r} (auto, cpu, cuda, cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise TrainingError(f"torch device: {torch_device!r} is not supported (auto, cpu, cuda, cuda:N)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"torch device: {torch_device!r} requested but this torch sees no CUDA device")
    return dev


def library_versions() -> dict[str, str]:
    from nnflash import __version__

    return {
        "nnflash": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def cpu_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else the machine type."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("model name", "Model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def check_compatible(spec: AnySpec, dataset: Dataset) -> None:
    """Raise ``TrainingError`` unless ``spec`` takes ``dataset``'s images and predicts its classes.

    A spec with a flat input (an MLP) fits when its input size is the number of values per image.
    """
    shape = tuple(spec.input_shape)
    ds = tuple(dataset.input_shape)
    flat_ok = len(shape) == 1 and shape[0] == math.prod(ds)
    if shape != ds and not flat_ok:
        raise TrainingError(
            f"spec {spec.spec_id}: input shape {'x'.join(map(str, shape))} does not fit dataset "
            f"{dataset.name} ({'x'.join(map(str, ds))})"
        )
    if spec.num_classes != dataset.num_classes:
        raise TrainingError(
            f"spec {spec.spec_id}: {spec.num_classes} classes, dataset {dataset.name} has {dataset.num_classes}"
        )


def lr_at(protocol: TrainingProtocol, step: int, total_steps: int) -> float:
    """Learning rate of 0-based ``step``: linear warm-up, then the protocol's schedule."""
    warm = int(round(protocol.warmup_fraction * total_steps))
    if step < warm:
        return protocol.lr * (step + 1) / warm
    if protocol.schedule == "constant":
        return protocol.lr
    progress = (step - warm) / max(1, total_steps - warm)
    if protocol.schedule == "linear":
        return protocol.lr * (1.0 - progress)
    return protocol.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, protocol: TrainingProtocol) -> torch.optim.Optimizer:
    """Weight decay on weights (ndim > 1), none on biases and batch-norm parameters."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": protocol.weight_decay},
        {"params": other, "weight_decay": 0.0},
    ]
    if protocol.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=protocol.lr, momentum=protocol.momentum, nesterov=protocol.nesterov)
    return torch.optim.AdamW(groups, lr=protocol.lr, betas=(protocol.momentum, 0.999))


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 12_345) % (2**63)


def augment(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Vectorized augmentation of a uint8 batch ``(N, C, H, W)``; randomness from ``generator`` (CPU).

    ``crop``: each image shifted by up to ``max(1, H // 8)`` pixels each way, zero-filled (a random
    crop of the zero-padded image); ``flip``: half of the images mirrored left-right.
    """
    n, _, h, w = x.shape
    if "crop" in kind:
        pad = max(1, h // 8)
        padded = F.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=x.device)[None, :])[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if "flip" in kind:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)[:, None, None, None]
        x = torch.where(mask, x.flip(3), x)
    return x


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: Normalization,
    *,
    flatten: bool,
    batch_size: int = 512,
    bf16: bool = False,
    channels_last: bool = False,
) -> tuple[float, float]:
    """Top-1 accuracy (a fraction) and mean cross-entropy of ``model`` on uint8 images ``x``."""
    model.eval()
    correct = 0
    loss_sum = 0.0
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb = _prepare(x[i : i + batch_size], norm, flatten, channels_last)
            yb = y[i : i + batch_size]
            with torch.autocast(device_type=xb.device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(xb)
            out = out.float()
            loss_sum += float(F.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
    n = max(1, len(x))
    return correct / n, loss_sum / n


def _prepare(xb: torch.Tensor, norm: Normalization, flatten: bool, channels_last: bool) -> torch.Tensor:
    out = norm.apply(xb)
    if flatten:
        return out.flatten(1)
    if channels_last:
        return out.contiguous(memory_format=torch.channels_last)
    return out


def _checkpoint_key(spec: AnySpec, dataset: Dataset, protocol: TrainingProtocol, seed: int) -> dict[str, Any]:
    return {
        "spec_id": spec.spec_id,
        "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint,
        "split_seed": dataset.split_seed,
        "protocol_hash": protocol.protocol_hash,
        "seed": seed,
    }


def _load_checkpoint(path: Path, key: dict[str, Any], device: torch.device) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises a variety of errors on a damaged file
        raise TrainingError(f"{path}: not a readable training checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path}: not an nnflash training checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise TrainingError(
            f"{path}: checkpoint version {ckpt.get('version')}, this nnflash reads version {CHECKPOINT_VERSION}"
        )
    theirs = ckpt.get("key", {})
    for k, v in key.items():
        if theirs.get(k) != v:
            raise TrainingError(f"{path}: checkpoint of another training ({k} {theirs.get(k)!r}, this run {v!r})")
    return ckpt


# ------------------------------------------------------------------------------------ the engine


def train_spec(
    spec: AnySpec,
    dataset: Dataset,
    protocol: TrainingProtocol,
    seed: int,
    torch_device: str = "cpu",
    on_epoch: Optional[Callable[[EpochInfo], None]] = None,
    checkpoint_path: str | Path | None = None,
) -> TrainingResult:
    """Train ``spec`` on ``dataset`` under ``protocol`` with ``seed``; see the module docstring.

    ``on_epoch`` is called after every epoch (after the checkpoint is written); an exception it
    raises stops the training and propagates, the checkpoint remaining for a later resume. With
    ``checkpoint_path``, an existing checkpoint of the same (spec, dataset, protocol, seed) is
    resumed; one of another training is a ``TrainingError``.
    """
    t_start = time.perf_counter()
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TrainingError(f"seed: must be a non-negative integer, got {seed!r}")
    check_compatible(spec, dataset)
    dev = resolve_device(torch_device)
    n_train = protocol.train_size or len(dataset.train_y)
    n_val = protocol.val_size or len(dataset.val_y)
    if n_train > len(dataset.train_y):
        raise TrainingError(
            f"protocol {protocol.name}: train_size {n_train} but dataset {dataset.name}'s training split "
            f"has {len(dataset.train_y)} images"
        )
    if n_val > len(dataset.val_y):
        raise TrainingError(
            f"protocol {protocol.name}: val_size {n_val} but dataset {dataset.name}'s validation split "
            f"has {len(dataset.val_y)} images"
        )
    bs = protocol.batch_size
    if n_train < bs:
        raise TrainingError(f"protocol {protocol.name}: batch_size {bs} exceeds the {n_train} training images")

    cuda = dev.type == "cuda"
    bf16 = protocol.precision == "bf16"
    flatten = len(spec.input_shape) == 1
    channels_last = cuda and not flatten
    norm = dataset.normalization()

    def to_dev(a: np.ndarray, labels: bool = False) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        return (t.long() if labels else t).to(dev)

    train_x, train_y = to_dev(dataset.train_x[:n_train]), to_dev(dataset.train_y[:n_train], labels=True)

    model = build_module(spec, init_seed=seed).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = make_optimizer(model, protocol)

    steps_per_epoch = n_train // bs
    total_steps = steps_per_epoch * protocol.epochs
    losses: list[float] = []
    start_epoch = 0
    prior_train_s = prior_wall_s = 0.0
    ckpt_path = Path(checkpoint_path) if checkpoint_path is not None else None
    key = _checkpoint_key(spec, dataset, protocol, seed)
    if ckpt_path is not None and ckpt_path.exists():
        ckpt = _load_checkpoint(ckpt_path, key, dev)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        losses = [float(v) for v in ckpt["train_loss"]]
        start_epoch = int(ckpt["epoch"])
        prior_train_s, prior_wall_s = float(ckpt["train_s"]), float(ckpt["wall_s"])

    check_every = 50 if cuda else 1  # a finiteness check syncs with the device
    status, reason = "ok", None
    train_s = prior_train_s
    steps_done = start_epoch * steps_per_epoch
    rng_devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if cuda else []
    with torch.random.fork_rng(devices=rng_devices):  # the caller's global RNG state is left alone
        for epoch in range(start_epoch, protocol.epochs):
            t_epoch = time.perf_counter()
            eseed = _epoch_seed(seed, epoch)
            torch.manual_seed(eseed)  # dropout and other global-RNG draws of this epoch
            gen = torch.Generator().manual_seed(eseed)
            perm = torch.randperm(n_train, generator=gen).to(dev)
            model.train()
            loss_sum = torch.zeros((), device=dev)
            for s in range(steps_per_epoch):
                idx = perm[s * bs : (s + 1) * bs]
                xb = train_x[idx]
                if protocol.augmentation != "none":
                    xb = augment(xb, protocol.augmentation, gen)
                xb = _prepare(xb, norm, flatten, channels_last)
                yb = train_y[idx]
                lr = lr_at(protocol, epoch * steps_per_epoch + s, total_steps)
                for group in opt.param_groups:
                    group["lr"] = lr
                with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bf16):
                    out = model(xb)
                loss = F.cross_entropy(out.float(), yb, label_smoothing=protocol.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach()
                steps_done += 1
                if (s + 1) % check_every == 0 or s + 1 == steps_per_epoch:
                    if not math.isfinite(float(loss_sum)):
                        status = "diverged"
                        reason = (
                            f"training loss became {float(loss.detach())} in epoch {epoch + 1} "
                            f"by step {s + 1} of {steps_per_epoch} (lr {lr:.4g})"
                        )
                        break
            train_s += time.perf_counter() - t_epoch
            if status != "ok":
                break
            losses.append(float(loss_sum) / steps_per_epoch)
            images = steps_done * bs
            if ckpt_path is not None:
                ckpt = {
                    "format": CHECKPOINT_FORMAT,
                    "version": CHECKPOINT_VERSION,
                    "key": key,
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "train_loss": losses,
                    "train_s": train_s,
                    "wall_s": prior_wall_s + time.perf_counter() - t_start,
                }
                with atomic_path(ckpt_path) as tmp:
                    torch.save(ckpt, tmp)
            if on_epoch is not None:
                on_epoch(
                    EpochInfo(epoch + 1, protocol.epochs, losses[-1], images, train_s, images / max(train_s, 1e-9))
                )

    val: tuple[Optional[float], Optional[float]] = (None, None)
    test = val
    state = None
    if status == "ok":
        kw = {"flatten": flatten, "bf16": bf16, "channels_last": channels_last}
        val = evaluate(model, to_dev(dataset.val_x[:n_val]), to_dev(dataset.val_y[:n_val], labels=True), norm, **kw)
        test = evaluate(model, to_dev(dataset.test_x), to_dev(dataset.test_y, labels=True), norm, **kw)
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    epochs_done = len(losses)
    images_done = steps_done * bs
    return TrainingResult(
        spec_id=spec.spec_id,
        dataset=dataset.name,
        dataset_fingerprint=dataset.fingerprint,
        protocol_hash=protocol.protocol_hash,
        protocol=protocol.to_dict(),
        seed=seed,
        status=status,
        reason=reason,
        val_accuracy=val[0],
        test_accuracy=test[0],
        val_loss=val[1],
        test_loss=test[1],
        train_loss=losses,
        epochs_done=epochs_done,
        train_images=n_train,
        val_images=n_val,
        test_images=len(dataset.test_y),
        wall_s=prior_wall_s + time.perf_counter() - t_start,
        train_s=train_s,
        images_per_s=images_done / train_s if train_s > 0 else 0.0,
        torch_device=str(dev),
        device_name=torch.cuda.get_device_name(dev) if cuda else cpu_name(),
        threads=torch.get_num_threads(),
        versions=library_versions(),
        resumed_from_epoch=start_epoch,
        state_dict=state,
    )
