"""The compiled model answers exactly what scikit-learn's predict_proba answers."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.neighbors import KNeighborsClassifier

from conflict_core.features import ALL_FEATURES
from conflict_core.registry import sha256_file
from serve_app.inference import load_model
from training.compiled import UnsupportedModel, compile_model, max_difference
from training.train import build_estimator

COLUMNS = list(ALL_FEATURES)
CONFIGS = {
    "logreg": {"model": "logreg", "C": 0.5},
    "logreg_l1": {"model": "logreg", "C": 0.5, "l1_ratio": 0.5, "class_weight": "balanced"},
    "hgb": {
        "model": "hgb",
        "learning_rate": 0.1,
        "max_leaf_nodes": 31,
        "max_iter": 60,
        "min_samples_leaf": 10,
        "l2_regularization": 0.1,
    },
}


def _frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    x = pd.DataFrame(rng.exponential(2.0, (n, len(COLUMNS))), columns=COLUMNS)
    x.iloc[::5, 1] = 0.0
    x["label"] = ((x.iloc[:, 0] + x.iloc[:, 4] + rng.exponential(1.0, n)) > 5).astype(int)
    return x


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(7)
    # Probe rows beyond the training range too: zeros, tiny and huge values hit every clip.
    probe = rng.exponential(3.0, (2000, len(COLUMNS))) * rng.choice([0.0, 0.01, 1.0, 100.0], (2000, len(COLUMNS)))
    return _frame(rng, 3000), _frame(rng, 1500), probe


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("method", ["isotonic", "sigmoid"])
def test_calibrated_pipeline_compiles_to_the_same_probabilities(
    data: tuple[pd.DataFrame, pd.DataFrame, np.ndarray], family: str, method: str
) -> None:
    fit, calibration, probe = data
    estimator = build_estimator(CONFIGS[family], COLUMNS).fit(fit[COLUMNS], fit["label"])
    calibrated = CalibratedClassifierCV(FrozenEstimator(estimator), method=method)
    calibrated.fit(calibration[COLUMNS], calibration["label"])

    compiled = compile_model(calibrated)

    assert max_difference(compiled, calibrated, probe, COLUMNS) <= 1e-9
    expected = calibrated.predict_proba(pd.DataFrame(probe[:1], columns=COLUMNS))[:, 1]
    assert compiled.predict_proba(probe[:1]) == pytest.approx(expected, abs=1e-9)  # a batch of one


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_uncalibrated_pipeline_compiles_to_the_same_probabilities(
    data: tuple[pd.DataFrame, pd.DataFrame, np.ndarray], family: str
) -> None:
    fit, _, probe = data
    estimator = build_estimator(CONFIGS[family], COLUMNS).fit(fit[COLUMNS], fit["label"])
    assert max_difference(compile_model(estimator), estimator, probe, COLUMNS) <= 1e-9


def test_boosted_trees_send_missing_values_where_training_did(
    data: tuple[pd.DataFrame, pd.DataFrame, np.ndarray],
) -> None:
    fit, _, probe = data
    with_gaps = fit.copy()
    with_gaps.iloc[::3, 2] = np.nan  # the model learns a side for missing values
    estimator = build_estimator(CONFIGS["hgb"], COLUMNS).fit(with_gaps[COLUMNS], with_gaps["label"])
    probe = probe.copy()
    probe[::2, 2] = np.nan
    assert max_difference(compile_model(estimator), estimator, probe, COLUMNS) <= 1e-9


def test_an_unsupported_estimator_is_refused_by_name(data: tuple[pd.DataFrame, pd.DataFrame, np.ndarray]) -> None:
    fit, _, _ = data
    model = KNeighborsClassifier().fit(fit[COLUMNS], fit["label"])
    with pytest.raises(UnsupportedModel, match="KNeighborsClassifier"):
        compile_model(model)


def test_wrong_matrix_width_is_refused(data: tuple[pd.DataFrame, pd.DataFrame, np.ndarray]) -> None:
    fit, _, probe = data
    compiled = compile_model(build_estimator(CONFIGS["logreg"], COLUMNS).fit(fit[COLUMNS], fit["label"]))
    with pytest.raises(ValueError, match=f"expected an \\(n, {len(COLUMNS)}\\) feature matrix"):
        compiled.predict_proba(probe[:, :3])


def test_loaded_model_serves_the_compiled_form_and_unsupported_ones_through_sklearn(
    tmp_path: Path, data: tuple[pd.DataFrame, pd.DataFrame, np.ndarray]
) -> None:
    fit, calibration, probe = data
    estimator = build_estimator(CONFIGS["hgb"], COLUMNS).fit(fit[COLUMNS], fit["label"])
    calibrated = CalibratedClassifierCV(FrozenEstimator(estimator), method="isotonic")
    calibrated.fit(calibration[COLUMNS], calibration["label"])
    knn = KNeighborsClassifier().fit(fit[COLUMNS], fit["label"])
    for name, model in (("compiled", calibrated), ("sklearn", knn)):
        path = tmp_path / f"{name}.joblib"
        joblib.dump({"estimator": model, "feature_columns": COLUMNS, "version": name}, path)
        loaded = load_model(name, str(path), sha256_file(path))
        assert (loaded.compiled is not None) == (name == "compiled")
        expected = model.predict_proba(pd.DataFrame(probe, columns=COLUMNS))[:, 1]
        np.testing.assert_allclose(loaded.predict_proba(probe), expected, rtol=0, atol=1e-9)


def test_a_model_that_fails_its_probe_is_loaded_and_fails_where_scikit_learn_fails(
    tmp_path: Path, data: tuple[pd.DataFrame, pd.DataFrame, np.ndarray]
) -> None:
    fit, _, probe = data
    narrow = build_estimator(CONFIGS["logreg"], COLUMNS[:3]).fit(fit[COLUMNS[:3]], fit["label"])
    nan = build_estimator(CONFIGS["logreg"], COLUMNS).fit(fit[COLUMNS], fit["label"])
    nan[-1].coef_[:] = np.nan
    for name, model in (("narrow", narrow), ("nan", nan)):
        path = tmp_path / f"{name}.joblib"
        joblib.dump({"estimator": model, "feature_columns": COLUMNS, "version": name}, path)
        loaded = load_model(name, str(path), sha256_file(path))  # loads: the failure belongs to inference
        assert loaded.compiled is None
    with pytest.raises(ValueError):
        load_model("narrow", str(tmp_path / "narrow.joblib"), sha256_file(tmp_path / "narrow.joblib")).predict_proba(
            probe
        )
