"""Median export seconds per format for a few specs: ONNX (legacy vs dynamo exporter), TFLite.

Each timing is one full, verified export (build excluded: the module is built once per spec), with
the cache bypassed (``force=True``). The ONNX dynamo exporter needs ``onnxscript``; it is skipped
with a note when that is not installed. Timings on a shared machine are noisy: medians of
``--repeats`` runs, measured side by side in one process.

    python benchmarks/export_speed.py [--repeats 3] [--no-tflite] [--int8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnflash.models.builder import build_module  # noqa: E402
from nnflash.models.export import ExportError, export_spec  # noqa: E402
from nnflash.models.spec import parse_spec  # noqa: E402

SPECS = {
    "dense-small-regular": {
        "family": "dense",
        "cells": [{"depth": 4, "width": 16, "tc": 12}, {"depth": 4, "width": 32, "tc": 24}],
        "conv": "regular",
        "input_shape": [3, 32, 32],
        "num_classes": 10,
        "seed": 1,
    },
    "dense-small-depthwise": {
        "family": "dense",
        "cells": [{"depth": 4, "width": 16, "tc": 12}, {"depth": 4, "width": 32, "tc": 24}],
        "conv": "depthwise",
        "input_shape": [3, 32, 32],
        "num_classes": 10,
        "seed": 1,
    },
    "dense-paper-13x3": {
        "family": "dense",
        "cells": [
            {"depth": 13, "width": 32, "tc": 40},
            {"depth": 13, "width": 64, "tc": 80},
            {"depth": 13, "width": 128, "tc": 125},
        ],
        "conv": "regular",
        "input_shape": [3, 32, 32],
        "num_classes": 10,
        "seed": 2,
    },
    "resnet18-cifar": {
        "family": "resnet",
        "layers": [2, 2, 2, 2],
        "input_shape": [3, 32, 32],
        "num_classes": 10,
    },
    "mobilenetv2-0.5": {
        "family": "mobilenetv2",
        "width_mult": 0.5,
        "input_shape": [3, 32, 32],
        "num_classes": 10,
    },
}


def _have_onnxscript() -> bool:
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-tflite", action="store_true")
    ap.add_argument("--int8", action="store_true", help="also time int8 TFLite")
    ap.add_argument("--only", nargs="*", default=None, help="spec names to run")
    args = ap.parse_args()

    variants: list[tuple[str, str, dict]] = [("onnx-legacy", "onnx", {"exporter": "legacy"})]
    if _have_onnxscript():
        variants.append(("onnx-dynamo", "onnx", {"exporter": "dynamo"}))
    else:
        print("note: onnxscript not installed, the dynamo ONNX exporter is not timed")
    if not args.no_tflite:
        variants.append(("tflite-fp32", "tflite", {}))
        if args.int8:
            variants.append(("tflite-int8", "tflite", {"quantize": "int8"}))

    header = f"{'spec':24s} {'params':>9s}" + "".join(f" {v[0]:>14s}" for v in variants)
    print(f"median export seconds over {args.repeats} runs (max rel err in brackets)")
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for name, obj in SPECS.items():
            if args.only and name not in args.only:
                continue
            spec = parse_spec(obj)
            module = build_module(spec)
            params = sum(p.numel() for p in module.parameters())
            cells = []
            for label, fmt, kw in variants:
                times, err = [], float("nan")
                try:
                    for _ in range(args.repeats):
                        t0 = time.perf_counter()
                        art = export_spec(spec, fmt, Path(tmp) / label, module=module, force=True, **kw)
                        times.append(time.perf_counter() - t0)
                        err = art.max_rel_err
                    cells.append(f"{statistics.median(times):7.2f} [{err:.0e}]")
                except ExportError as exc:
                    cells.append(f"{'refused':>14s}")
                    print(f"  {name} {label}: {exc}", file=sys.stderr)
            print(f"{name:24s} {params:9d}" + "".join(f" {c:>14s}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
