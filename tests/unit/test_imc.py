"""The IMC accelerator model: NeuroSim V1.3's mapping of VGG-8, validation against its published
figures (the issue's tolerances), calibration, vectorization and parameter checks."""

from __future__ import annotations

import numpy as np
import pytest

from nnflash.calibration import CostModelError, load_model
from nnflash.calibration.imc import CALIBRATED, PARAMS, check_param, estimate, estimate_grid, knob_grid
from nnflash.calibration.imc_arrays import LayerArrays, _plain_rows, plain_network_layers, random_plain_networks
from nnflash.calibration.imc_model import NEUROSIM_V13_VGG8 as V13
from nnflash.calibration.imc_model import ImcModel, v13_reference
from nnflash.models.spec import parse_spec, preset

VGG8 = preset("vgg8_cifar")


@pytest.fixture(scope="module")
def vgg8() -> dict:
    return ImcModel.shipped().estimate([VGG8], per_layer=True)


def test_vgg8_mapping_is_neurosims(vgg8: dict) -> None:
    # 6 convolutions then 2 linear layers; conv1 (3 input channels) and the linear layers are
    # conventional, conv2..conv6 use the novel mapping (9 PEs of 512x512 per tile)
    assert vgg8["layer_novel"][0].tolist() == [False, True, True, True, True, True, False, False]
    assert vgg8["layer_tiles"][0].tolist() == [1, 1, 2, 2, 4, 4, 32, 1]
    assert vgg8["tiles"][0] == V13["tiles"] == 47
    assert vgg8["subarrays"][0] == 4048  # 66,322,432 cells / (128 * 128)
    assert (vgg8["pe_size_novel"][0], vgg8["tile_size_conventional"][0], vgg8["pe_size_conventional"][0]) == (
        512,
        1024,
        512,
    )
    assert vgg8["layer_speedup"][0].tolist() == [16, 4, 4, 2, 2, 1, 1, 8]
    assert vgg8["layer_vectors"][0].tolist() == [900, 900, 196, 196, 36, 36, 1, 1]
    # V1.3's CIM-array area is exactly its cells x 48 F^2 at 22 nm
    assert vgg8["area_array_mm2"][0] == pytest.approx(66_322_432 * 48 * 0.022**2 * 1e-6)
    # V1.3's ADC latency: sum of vectors / speed-up x 8 bits x 8 columns x 2.05 ns
    assert vgg8["latency_adc_ms"][0] == pytest.approx(V13["latency_adc_ms"], rel=0.01)


def _rel(ours: float, ref: float) -> float:
    return abs(ours - ref) / ref


def test_vgg8_within_the_issues_tolerances_of_neurosim_v13(vgg8: dict) -> None:
    area = vgg8["area_mm2"][0]
    energy_uj = vgg8["energy_mj"][0] * 1e3
    assert _rel(area, V13["area_mm2"]) <= 0.15
    assert _rel(energy_uj, V13["energy_uj"]) <= 0.15
    assert _rel(vgg8["latency_ms"][0], V13["latency_ms"]) <= 0.25
    for part in ("array", "adc", "accumulation"):
        ours = vgg8[f"area_{part}_mm2"][0] / area
        ref = V13[f"area_{part}_mm2"] / V13["area_mm2"]
        assert abs(ours - ref) <= 0.10, part
    for part in ("adc", "accumulation"):
        ours = vgg8[f"energy_{part}_mj"][0] * 1e3 / energy_uj
        ref = V13[f"energy_{part}_uj"] / V13["energy_uj"]
        assert abs(ours - ref) <= 0.10, part
    # V1.3 prints no array energy of its own (its three parts sum to its total): ours must be small
    assert vgg8["energy_array_mj"][0] * 1e3 / energy_uj <= 0.10


def test_shipped_constants_are_the_fit_to_v13() -> None:
    fitted = ImcModel().fit([VGG8], [V13["latency_ms"]], reference=[v13_reference()])
    assert set(fitted.constants_) == set(CALIBRATED)
    assert len(CALIBRATED) <= 6
    for name, value in fitted.constants_.items():
        assert value == pytest.approx(PARAMS[name].default, rel=2e-3), name
    # the fit does not depend on where the constants start
    other = ImcModel({"input_bit_density": 0.9, "buffer_bits_per_ns": 100.0, "leakage_uw_per_mm2": 1.0})
    refit = other.fit([VGG8], [V13["latency_ms"]], reference=[v13_reference()])
    assert refit.constants_ == pytest.approx(fitted.constants_, rel=1e-9)


def test_fit_without_figures_fits_the_buffer_to_the_total_latency() -> None:
    specs = [VGG8, parse_spec({"family": "vgg", "layers": [{"type": "conv", "out": 64}, {"type": "pool"}]})]
    base = ImcModel.shipped().predict(specs)
    model = ImcModel().fit(specs, base * 2)
    assert model.constants_["buffer_bits_per_ns"] < PARAMS["buffer_bits_per_ns"].default
    assert model.score(specs, base * 2)["mape"] < 30
    with pytest.raises(CostModelError, match="below what the crossbars"):
        ImcModel().fit(specs, base * 1e-6)
    with pytest.raises(CostModelError, match="unknown figure"):
        ImcModel().fit([VGG8], [1.0], reference=[{"adc_energy": 1.0}])


def test_saved_model_keeps_its_parameters(tmp_path) -> None:
    model = ImcModel.shipped({"adc_bits": 4, "mode": "pipeline"})
    path = model.save(tmp_path / "imc.json")
    loaded = load_model(path)
    assert loaded.get_params() == model.get_params()
    assert loaded.estimate([VGG8])["area_mm2"] == pytest.approx(model.estimate([VGG8])["area_mm2"])


def test_batch_equals_one_by_one_and_grid_shapes() -> None:
    net = random_plain_networks(40, seed=3)
    rng = np.random.default_rng(1)
    hw = {
        "subarray_rows": rng.choice([64, 128, 256], net.n),
        "adc_bits": rng.integers(3, 7, net.n),
        "cell_bits": rng.integers(1, 3, net.n),
    }
    hw["subarray_cols"] = hw["subarray_rows"]
    for mode in ("layer", "pipeline"):
        batch = estimate(net, {**hw, "mode": mode})
        for i in (0, 7, 39):
            one = estimate(net.take(np.array([i])), {**{k: v[i] for k, v in hw.items()}, "mode": mode})
            for key in ("area_mm2", "energy_mj", "latency_ms", "tiles"):
                assert batch[key][i] == pytest.approx(one[key][0], rel=1e-12), (mode, key)
    grid = knob_grid()
    assert len(grid["adc_bits"]) == 24
    res = estimate_grid(net.take(np.arange(5)), grid)
    assert res["area_mm2"].shape == (5, 24) and np.all(res["area_mm2"] > 0)


def test_random_plain_networks_are_the_vgg_specs_they_describe() -> None:
    rng = np.random.default_rng(5)
    for _ in range(5):
        layers = plain_network_layers(rng)
        spec = parse_spec({"family": "vgg", "layers": layers})
        direct = LayerArrays.from_rows([_plain_rows(layers)])
        via_spec = LayerArrays.from_specs([spec])
        for name in ("cin", "cout", "kernel", "ifm", "nvec", "in_elems", "out_elems", "macs"):
            assert np.array_equal(getattr(direct, name), getattr(via_spec, name)), name


def test_knobs_move_the_figures_the_right_way() -> None:
    net = LayerArrays.from_specs([VGG8])
    res = estimate(net.take(np.zeros(4, dtype=np.int64)), {"adc_bits": np.array([3, 4, 5, 6])})
    assert np.all(np.diff(res["area_adc_mm2"]) > 0) and np.all(np.diff(res["energy_adc_mj"]) > 0)
    one_bit = estimate(net, {"cell_bits": 1})
    assert one_bit["subarrays"][0] > 4048  # twice the columns per weight
    pipe = estimate(net, {"mode": "pipeline"})
    layer = estimate(net)
    assert pipe["tiles"][0] > layer["tiles"][0] and pipe["period_ms"][0] < layer["period_ms"][0]
    # every real layer has at least one crossbar, duplication never lowers utilization below use
    per = estimate(net, per_layer=True)
    assert np.all(per["layer_crossbars"][0] >= 1) and np.all(per["layer_utilization"][0] <= 1)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("adc_bits", 0, r"adc_bits must be an integer in \[1, 10\], got 0"),
        ("adc_bits", 4.5, r"adc_bits must be an integer"),
        ("subarray_rows", 100, r"subarray_rows must be .*a power of two, got 100"),
        ("tech_nm", float("nan"), r"tech_nm must be a number"),
        ("mode", "fast", r"mode must be one of layer, pipeline, got 'fast'"),
        ("adc_bitz", 5, r"unknown parameter 'adc_bitz'"),
    ],
)
def test_bad_parameters_are_one_line_errors(key: str, value: object, message: str) -> None:
    with pytest.raises(CostModelError, match=message):
        check_param(key, value)
    with pytest.raises(CostModelError, match=message):
        ImcModel.shipped({key: value})


def test_cell_bits_above_weight_bits_is_refused() -> None:
    with pytest.raises(CostModelError, match="cell_bits must not exceed weight_bits"):
        estimate(LayerArrays.from_specs([VGG8]), {"cell_bits": 8, "weight_bits": 4})


@pytest.mark.parametrize("conv", ["regular", "depthwise"])
def test_dense_arrays_from_search_configurations_equal_the_specs(conv: str) -> None:
    from nnflash.calibration.imc_arrays import dense_layer_arrays
    from nnflash.models.space import get_space

    specs = get_space("flash").sample(12, seed=4)
    d, w, t = (np.array([[getattr(c, f) for c in s.cells] for s in specs]) for f in ("depth", "width", "tc"))
    spec_objs = [parse_spec({**s.to_dict(), "conv": conv, "skips": None}) for s in specs]
    direct = dense_layer_arrays(d, w, t, conv=conv, input_shape=specs[0].input_shape, num_classes=specs[0].num_classes)
    via = LayerArrays.from_specs(spec_objs)
    for i in range(len(specs)):
        for name in ("cin", "cout", "kernel", "ifm", "nvec", "in_elems", "out_elems", "macs"):
            a, b = getattr(direct, name)[i], getattr(via, name)[i]
            assert np.array_equal(a[direct.valid[i]], b[via.valid[i]]), (i, name)
    for mode in ("layer", "pipeline"):
        x, y = estimate(direct, {"mode": mode}), estimate(via, {"mode": mode})
        for key in ("area_mm2", "energy_mj", "latency_ms", "tiles"):
            assert x[key] == pytest.approx(y[key], rel=1e-12), (mode, key)


def test_chunks_and_threads_give_the_same_figures(monkeypatch) -> None:
    from nnflash.calibration import imc

    net = random_plain_networks(50, seed=9)
    adc = np.resize(np.array([3, 4, 5, 6]), net.n)
    whole = estimate(net, {"adc_bits": adc}, per_layer=True)
    monkeypatch.setattr(imc, "_CHUNK", 7)
    chunked = estimate(net, {"adc_bits": adc}, per_layer=True)
    assert set(chunked) == set(whole)
    for key in whole:
        assert np.array_equal(chunked[key], whole[key]), key


def test_meets_limits_on_a_grid() -> None:
    from nnflash.calibration.imc import meets_limits

    net = random_plain_networks(6, seed=2)
    grid = knob_grid()
    res = estimate_grid(net, grid)
    ok = meets_limits(res, grid, max_area_mm2=60.0)
    assert ok.shape == (6, 24)
    assert np.array_equal(ok, (res["area_mm2"] <= 60.0) & (grid["adc_bits"] >= 5)[None, :])
    assert meets_limits(res, grid, min_adc_bits=None).all()
    with pytest.raises(CostModelError, match="must be positive"):
        meets_limits(res, grid, max_latency_ms=0.0)
