"""Speed of the vectorized IMC model: distinct network-and-hardware configurations per second.

Every configuration is a different random plain (VGG-style) CIFAR network (2-10 convolutions of
16-512 channels, pools, 0-1 hidden linear layers; see ``calibration.imc_arrays.random_plain_networks``)
on random hardware knobs (subarray 64/128/256, ADC 3-6 bits, 1-2 bits per cell). Prints medians of
wall-clock and CPU time over repeats (the CPU time is the fairer figure on a shared, loaded
machine), for both modes, and, for scale, how long building the arrays from spec objects takes.
NeuroSim V1.3 takes 132 s for one network.

Run: .venv/bin/python benchmarks/imc_speed.py [--n 100000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from nnflash.calibration.imc import estimate
from nnflash.calibration.imc_arrays import LayerArrays, plain_network_layers, random_plain_networks
from nnflash.models.spec import parse_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="configurations per call (default 100000)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    n = args.n
    net = random_plain_networks(n, seed=1)
    rng = np.random.default_rng(2)
    sub = rng.choice([64, 128, 256], n)
    hw = {
        "subarray_rows": sub,
        "subarray_cols": sub,
        "adc_bits": rng.integers(3, 7, n),
        "cell_bits": rng.integers(1, 3, n),
    }
    layers = int(net.valid.sum(axis=1).mean() * 10) / 10
    print(f"{n:,} distinct random plain networks (mean {layers} weight layers, padded to {net.valid.shape[1]})")
    print("on random hardware knobs (subarray 64/128/256, ADC 3-6 bits, cell 1-2 bits)\n")
    for mode in ("layer", "pipeline"):
        wall, cpu = [], []
        for _ in range(args.repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            res = estimate(net, {**hw, "mode": mode})
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
        w, c = statistics.median(wall), statistics.median(cpu)
        print(
            f"{mode:8s}: {n / w:12,.0f} configurations/s wall ({w:.2f} s), {n / c:12,.0f} per CPU-second "
            f"(median of {args.repeats}); median area {np.median(res['area_mm2']):.1f} mm^2, "
            f"latency {np.median(res['latency_ms']):.3f} ms"
        )
    distinct = len(
        {tuple(row) for row in np.column_stack([net.cin, net.cout, hw["subarray_rows"][:, None]])[:2000].tolist()}
    )
    print(f"\n(first 2,000 rows: {distinct:,} distinct network-and-hardware rows)")
    specs = [parse_spec({"family": "vgg", "layers": plain_network_layers(rng)}) for _ in range(500)]
    t0 = time.perf_counter()
    LayerArrays.from_specs(specs)
    dt = time.perf_counter() - t0
    print(f"building arrays from spec objects: {500 / dt:,.0f} specs/s (layer tables, once per network)")


if __name__ == "__main__":
    main()
