"""Accuracy predictors: trained accuracy from a spec (and its zero-cost proxies), fitted from a few
trained networks, with the cost models' conventions (fit/predict/score, JSON, a registry)::

    from nnflash.calibration.accuracy import make_accuracy_model, load_accuracy_model
    model = make_accuracy_model("flash").fit(specs, accuracies)   # fractions in 0..1
    model.predict(new_specs); model.score(test_specs, trained)
    model.save("acc.json", dataset="fashion-mnist", protocol_hash="...")

``multi`` also takes ``proxies=`` (one mapping per spec, :mod:`nnflash.models.proxies`).
"""

from nnflash.calibration.accuracy.base import (
    ACCURACY_MODELS,
    AccuracyModel,
    AccuracyModelError,
    accuracy_model_from_dict,
    check_accuracy,
    load_accuracy_model,
    make_accuracy_model,
    register_accuracy_model,
    spec_features,
)
from nnflash.calibration.accuracy.metrics import (
    accuracy_metrics,
    cross_val_predict_accuracy,
    cross_validate_accuracy,
    format_accuracy_metrics,
    plot_predicted_vs_trained,
    rank_correlations,
)

# Importing the predictors registers them; this order is the order of ACCURACY_MODELS.
from nnflash.calibration.accuracy.predictors import (  # noqa: E402
    FlashAccuracyModel,
    MultiAccuracyModel,
    NnMassAccuracyModel,
)
from nnflash.calibration.accuracy.select import select_for_training

__all__ = [
    "ACCURACY_MODELS",
    "AccuracyModel",
    "AccuracyModelError",
    "FlashAccuracyModel",
    "MultiAccuracyModel",
    "NnMassAccuracyModel",
    "accuracy_metrics",
    "accuracy_model_from_dict",
    "check_accuracy",
    "cross_val_predict_accuracy",
    "cross_validate_accuracy",
    "format_accuracy_metrics",
    "load_accuracy_model",
    "make_accuracy_model",
    "plot_predicted_vs_trained",
    "rank_correlations",
    "register_accuracy_model",
    "select_for_training",
    "spec_features",
]
