"""The IMC model against DNN+NeuroSim V1.3's published VGG-8 run: the comparison table.

V1.3's user manual prints the full output of its default run (VGG-8 on CIFAR-10, 8-bit, RRAM 1T1R
at 22 nm, 128x128 subarrays, 2 bits per cell, 5-bit ADC per 8 columns, layer-by-layer). This prints
our estimate with the shipped (calibrated) constants beside it, the relative error of every figure
and the share of area and energy in ADC, accumulation and array, with the issue's tolerances
(area and dynamic energy +-15%, latency +-25%, shares +-10 points). Rows marked "cal" are figures
a calibrated constant was fitted to (so they match by construction); the others are predictions.

Run: .venv/bin/python benchmarks/imc_neurosim.py
"""

from __future__ import annotations

from nnflash.calibration.imc import CALIBRATED, PARAMS
from nnflash.calibration.imc_model import NEUROSIM_V13_VGG8 as V13
from nnflash.calibration.imc_model import ImcModel
from nnflash.models.spec import preset


def main() -> None:
    r = {k: v[0] for k, v in ImcModel.shipped().estimate([preset("vgg8_cifar")], per_layer=True).items()}
    area, e_uj = r["area_mm2"], r["energy_mj"] * 1e3
    rows = [
        # (label, ours, V1.3, tolerance as a fraction or None, calibrated?)
        ("chip area (mm^2)", area, V13["area_mm2"], 0.15, False),
        ("  CIM array", r["area_array_mm2"], V13["area_array_mm2"], None, False),
        ("  ADC", r["area_adc_mm2"], V13["area_adc_mm2"], None, False),
        ("  accumulation", r["area_accumulation_mm2"], V13["area_accumulation_mm2"], None, False),
        (
            "  other incl. interconnect",
            r["area_other_mm2"],
            V13["area_other_periphery_mm2"] + V13["area_interconnect_mm2"],
            None,
            True,
        ),
        ("    interconnect", r["area_interconnect_mm2"], V13["area_interconnect_mm2"], None, False),
        ("tiles", r["tiles"], V13["tiles"], None, False),
        ("clock (ns)", PARAMS["clock_ns"].default, V13["clock_ns"], None, False),
        ("latency per image (ms)", r["latency_ms"], V13["latency_ms"], 0.25, False),
        ("  buffers", r["latency_buffer_ms"], V13["latency_buffer_ms"], None, True),
        ("  interconnect", r["latency_interconnect_ms"], V13["latency_interconnect_ms"], None, False),
        ("  ADC (crossbar read cycles)", r["latency_adc_ms"], V13["latency_adc_ms"], None, False),
        ("dynamic energy per image (uJ)", e_uj, V13["energy_uj"], 0.15, False),
        ("  ADC", r["energy_adc_mj"] * 1e3, V13["energy_adc_uj"], None, True),
        ("  accumulation", r["energy_accumulation_mj"] * 1e3, V13["energy_accumulation_uj"], None, False),
        (
            "  other incl. array",
            (r["energy_other_mj"] + r["energy_array_mj"]) * 1e3,
            V13["energy_other_uj"],
            None,
            True,
        ),
        ("    interconnect", r["energy_interconnect_mj"] * 1e3, V13["energy_interconnect_uj"], None, True),
        ("    buffer", r["energy_buffer_mj"] * 1e3, V13["energy_buffer_uj"], None, False),
        ("leakage power (uW)", r["leakage_mw"] * 1e3, V13["leakage_uw"], None, True),
        ("leakage energy (uJ)", r["energy_leakage_mj"] * 1e3, V13["leakage_uj"], None, False),
        ("TOPS/W (V1.3 divides by 1.22)", r["tops_per_w"] / 1.22, V13["tops_per_w"], None, False),
        ("images/s", r["fps"], V13["fps"], None, False),
    ]
    print("VGG-8 on CIFAR-10, DNN+NeuroSim V1.3 defaults: nnflash IMC model vs V1.3's published run\n")
    print(f"{'figure':34s} {'nnflash':>10s} {'V1.3':>10s} {'error':>8s}  check")
    for label, ours, ref, tol, cal in rows:
        err = (ours - ref) / ref
        check = "cal" if cal else ""
        if tol is not None:
            check = f"{'ok' if abs(err) <= tol else 'FAIL'} (+-{tol:.0%})"
        print(f"{label:34s} {ours:10.4g} {ref:10.4g} {err:+8.1%}  {check}")
    print("\nshares of the total (points; tolerance +-10)")
    print(f"{'':34s} {'nnflash':>10s} {'V1.3':>10s} {'diff':>8s}")
    shares = [
        ("area: ADC", r["area_adc_mm2"] / area, V13["area_adc_mm2"] / V13["area_mm2"]),
        ("area: accumulation", r["area_accumulation_mm2"] / area, V13["area_accumulation_mm2"] / V13["area_mm2"]),
        ("area: array", r["area_array_mm2"] / area, V13["area_array_mm2"] / V13["area_mm2"]),
        ("energy: ADC", r["energy_adc_mj"] * 1e3 / e_uj, V13["energy_adc_uj"] / V13["energy_uj"]),
        (
            "energy: accumulation",
            r["energy_accumulation_mj"] * 1e3 / e_uj,
            V13["energy_accumulation_uj"] / V13["energy_uj"],
        ),
        ("energy: array (V1.3: none printed)", r["energy_array_mj"] * 1e3 / e_uj, 0.0),
    ]
    for label, ours, ref in shares:
        d = 100 * (ours - ref)
        print(f"{label:34s} {100 * ours:9.1f}% {100 * ref:9.1f}% {d:+8.1f}  {'ok' if abs(d) <= 10 else 'FAIL'}")
    print("\nper layer")
    print(f"{'layer':>5s} {'mapping':>12s} {'tiles':>6s} {'speed-up':>9s} {'util':>6s} {'crossbars':>10s} {'ms':>8s}")
    for i in range(len(r["layer_tiles"])):
        mapping = "novel" if r["layer_novel"][i] else "conventional"
        print(
            f"{i + 1:5d} {mapping:>12s} {r['layer_tiles'][i]:6.0f} {r['layer_speedup'][i]:9.0f} "
            f"{r['layer_utilization'][i]:6.2f} {r['layer_crossbars'][i]:10.0f} {r['layer_latency_ms'][i]:8.4f}"
        )
    print("\ncalibrated constants (shipped defaults)")
    for name, what in CALIBRATED.items():
        print(f"  {name} = {PARAMS[name].default:g} {PARAMS[name].unit}  <- {what}")


if __name__ == "__main__":
    main()
