"""Vectorized dense metrics vs building each torch module; generator speed.

Prints medians over repeats. Figures, not pass/fail: the machine is shared and noisy.
Run: .venv/bin/python benchmarks/metrics_speed.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from nnflash.models.metrics import dense_metrics
from nnflash.models.space import generate, get_space


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    space = get_space("flash")
    rng = np.random.default_rng(0)
    n = 1_000_000
    d, w, t = space.sample_arrays(n, rng)

    def vectorized() -> None:
        dense_metrics(d, w, t, conv=space.conv, input_shape=space.input_shape, num_classes=space.num_classes)

    vec_s = median_time(vectorized, 5)
    vec_rate = n / vec_s
    print(
        f"vectorized metrics: {n:,} configurations in {vec_s:.3f} s (median of 5) -> {vec_rate:,.0f} configurations/s"
    )

    # The paper's code computes metrics by building each network; do the same for a few configs.
    import torch

    from nnflash.models.builder import build_module

    specs = [space.to_spec(d[i], w[i], t[i]) for i in range(20)]

    def by_torch() -> None:
        for s in specs:
            m = build_module(s)
            sum(p.numel() for p in m.parameters())

    torch.set_num_threads(1)
    torch_s = median_time(by_torch, 3) / len(specs)
    torch_rate = 1 / torch_s
    print(f"building torch modules: {torch_s * 1e3:.1f} ms per configuration -> {torch_rate:,.1f} configurations/s")
    print(f"ratio vectorized / torch: {vec_rate / torch_rate:,.0f}x")

    gen_s = median_time(lambda: generate(space, 100, target_mass=400, seed=7), 5)
    print(f"generator: 100 distinct candidates for NN-Mass 400 +-2% in {gen_s:.3f} s (median of 5)")


if __name__ == "__main__":
    main()
