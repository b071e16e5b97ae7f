"""Images/s of the training engine's loop against a minimal bare torch loop, side by side.

Both train the same module (a median-sized network of the ``flash-fmnist`` space, or ``--spec``) on
the same in-memory tensors (Fashion-MNIST's training images when installed, else random ones of the
same shape), with the same batch size, optimizer, thread count and random-permutation indexing; no
DataLoader in either. The bare loop is the most favourable baseline: its images are normalized to
float once, before timing, and its learning rate is constant. The engine's figure is its own
``images_per_s`` (training loop only, evaluation excluded); the bare loop is timed the same way.
Rounds alternate engine and bare loop; medians over rounds and their ratio are printed.

    .venv/bin/python benchmarks/training_speed.py [--rounds 5] [--images 6144] [--batch 128]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from nnflash.models.builder import build_module
from nnflash.models.datasets import Dataset, DatasetError, load_dataset
from nnflash.models.metrics import compute_metrics
from nnflash.models.space import get_space
from nnflash.models.spec import load_spec_file
from nnflash.models.training import train_spec
from nnflash.models.training_protocol import TrainingProtocol


def median_spec(seed: int = 0):
    specs = get_space("flash-fmnist").sample(41, seed=seed)
    return sorted(specs, key=lambda s: compute_metrics(s)["macs"])[len(specs) // 2]


def bare_loop(spec, x: torch.Tensor, y: torch.Tensor, batch: int, lr: float, seed: int) -> float:
    """Images/s of the minimal loop: index a random permutation, forward, loss, backward, step."""
    torch.manual_seed(seed)
    model = build_module(spec, init_seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model.train()
    n = len(x)
    steps = n // batch
    perm = torch.randperm(n)
    t0 = time.perf_counter()
    for s in range(steps):
        idx = perm[s * batch : (s + 1) * batch]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    float(loss.detach())  # wait for the last step
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--images", type=int, default=6144, help="training images per round (one epoch)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--spec", default=None, help="a spec JSON file (default: a median flash-fmnist network)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    spec = load_spec_file(args.spec) if args.spec else median_spec()
    try:
        ds = load_dataset("fashion-mnist")
        source = "Fashion-MNIST"
    except DatasetError:
        rng = np.random.default_rng(0)
        n = args.images + 1200
        x = rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
        yy = rng.integers(0, 10, n)
        ds = Dataset.from_arrays("random", x[:-200], yy[:-200], x[-200:], yy[-200:], num_classes=10, val_size=1000)
        source = "random images (Fashion-MNIST not installed)"
    proto = TrainingProtocol(
        name="bench",
        train_size=args.images,
        val_size=100,
        epochs=1,
        batch_size=args.batch,
        lr=0.05,
        schedule="constant",
    )
    # the engine evaluates the whole test split after training: keep it small (not timed anyway)
    ds = dataclasses.replace(ds, test_x=ds.test_x[:200], test_y=ds.test_y[:200])
    dev = torch.device(args.device)
    norm = ds.normalization()
    bx = norm.apply(torch.from_numpy(ds.train_x[: args.images]).to(dev)).contiguous()
    by = torch.from_numpy(ds.train_y[: args.images]).long().to(dev)
    m = compute_metrics(spec)
    print(
        f"spec {spec.spec_id}: {m['macs'] / 1e6:.1f}M MACs, {m['params']:,} params; data: {source}; "
        f"{args.images} images x {args.rounds} rounds, batch {args.batch}, {torch.get_num_threads()} threads, "
        f"device {dev}, torch {torch.__version__}"
    )
    if dev.type != "cpu":
        raise SystemExit("the bare loop runs on the CPU here; compare on a GPU with the engine alone")
    train_spec(spec, ds, proto, seed=0, torch_device=args.device)  # warm-up (allocator, kernels)
    bare_loop(spec, bx, by, args.batch, 0.05, 0)
    engine, bare = [], []
    for r in range(args.rounds):
        res = train_spec(spec, ds, proto, seed=r, torch_device=args.device)
        engine.append(res.images_per_s)
        bare.append(bare_loop(spec, bx, by, args.batch, 0.05, r))
        print(f"round {r + 1}: engine {engine[-1]:8.1f} img/s   bare {bare[-1]:8.1f} img/s")
    e, b = statistics.median(engine), statistics.median(bare)
    print(f"median: engine {e:.1f} img/s, bare torch loop {b:.1f} img/s, ratio engine/bare {e / b:.3f}")


if __name__ == "__main__":
    main()
