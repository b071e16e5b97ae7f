"""Calibration: features of specs, cost models fitted from measurements, what to measure.

Every cost model takes *specs* as ``X`` (see :mod:`nnflash.calibration.base`)::

    from nnflash.calibration import RooflineLatencyModel, load_model
    model = RooflineLatencyModel().fit(specs, latency_ms)
    model.predict(new_specs); model.score(test_specs, measured); model.report()
    model.save("cost.json", device="pi3", runtime="onnxruntime", threads=1)
    load_model("cost.json").predict(new_specs)
"""

from nnflash.calibration.base import (
    COST_MODELS,
    CostModel,
    check_compatible,
    load_model,
    make_model,
    model_from_dict,
    register_cost_model,
)
from nnflash.calibration.crossval import cross_val_predict, cross_validate, report_metrics
from nnflash.calibration.errors import CostModelError
from nnflash.calibration.features import feature_matrix, feature_names, features

# Importing a cost model's module registers it (base.register_cost_model); this order is the
# order of COST_MODELS (the default, roofline, first).
# isort: off
from nnflash.calibration.roofline import RooflineLatencyModel
from nnflash.calibration.linear import LinearLatencyModel, MacsOnlyModel
from nnflash.calibration.energy import EnergyModel
from nnflash.calibration.imc_model import ImcModel

# isort: on

__all__ = [
    "COST_MODELS",
    "CostModel",
    "CostModelError",
    "EnergyModel",
    "ImcModel",
    "LinearLatencyModel",
    "MacsOnlyModel",
    "RooflineLatencyModel",
    "check_compatible",
    "cross_val_predict",
    "cross_validate",
    "feature_matrix",
    "feature_names",
    "features",
    "load_model",
    "make_model",
    "model_from_dict",
    "register_cost_model",
    "report_metrics",
]
