from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from conflict_core.decision import DecisionThresholds
from conflict_core.features import ALL_FEATURES
from conflict_core.registry import sha256_file
from serve_app.heuristics import FallbackReason
from serve_app.inference import ModelHolder


def _write(path: Path, **extra: Any) -> str:
    rng = np.random.default_rng(0)
    x = rng.random((100, len(ALL_FEATURES)))
    model = LogisticRegression().fit(x, (x[:, 0] > 0.5).astype(int))
    joblib.dump({"estimator": model, "feature_columns": list(ALL_FEATURES), **extra}, path)
    return sha256_file(path)


def test_a_model_serves_its_own_decision_thresholds(tmp_path: Path) -> None:
    path = tmp_path / "m.joblib"
    sha = _write(path, decision_thresholds={"fetch_first": 0.1, "warn_user": 0.4, "source": "costs"})
    holder = ModelHolder()
    holder.configure("v1", str(path), sha)
    version, probabilities, thresholds = holder.predict_with_thresholds(np.zeros((3, len(ALL_FEATURES))))
    assert version == "v1" and len(probabilities) == 3
    assert thresholds == DecisionThresholds(0.1, 0.4, "costs")
    assert holder.status()["decision_thresholds"] == {"fetch_first": 0.1, "warn_user": 0.4, "source": "costs"}


def test_a_model_without_thresholds_leaves_the_bands_to_the_ingress(tmp_path: Path) -> None:
    path = tmp_path / "m.joblib"
    holder = ModelHolder()
    holder.configure("v1", str(path), _write(path))
    assert holder.predict_with_thresholds(np.zeros((1, len(ALL_FEATURES))))[2] is None


def test_disordered_thresholds_make_the_artifact_unloadable(tmp_path: Path) -> None:
    path = tmp_path / "m.joblib"
    sha = _write(path, decision_thresholds={"fetch_first": 0.6, "warn_user": 0.4})
    holder = ModelHolder()
    holder.configure("v1", str(path), sha)
    assert holder.model is None
    assert holder.unavailable is not None and holder.unavailable.reason is FallbackReason.ARTIFACT_LOAD_FAILED
    with pytest.raises(Exception, match="fetch_first <= warn_user"):
        holder.predict_with_thresholds(np.zeros((1, len(ALL_FEATURES))))


def _trained_artifact(path: Path, family: str) -> str:
    """A model of ``family`` fitted (by the training library) on data where concurrency and stale,
    overlapping edits drive conflicts; its artifact carries the training medians as reference."""
    import pandas as pd

    from training.train import build_estimator, calibrate

    rng = np.random.default_rng(3)
    n = 4000
    frame = pd.DataFrame(
        {
            "concurrent_editors": rng.poisson(0.3, n).astype(float),
            "hours_since_last_sync": rng.exponential(5, n),
            "user_conflict_rate": rng.beta(1, 20, n),
            "entity_edit_frequency": rng.exponential(2, n),
            "field_overlap_score": rng.random(n) * (rng.random(n) < 0.3),
            "edits_since_own_last_sync": rng.poisson(1, n).astype(float),
            "overlap_since_own_last_sync": rng.random(n) * (rng.random(n) < 0.2),
        }
    )
    logit = -4 + 1.5 * frame["concurrent_editors"] + 3 * frame["overlap_since_own_last_sync"]
    frame["conflict"] = rng.random(n) < 1 / (1 + np.exp(-logit))
    config = {"model": "logreg", "C": 1.0} if family == "logreg" else {
        "model": "hgb", "learning_rate": 0.1, "max_leaf_nodes": 15, "max_iter": 100,
        "min_samples_leaf": 20, "l2_regularization": 0.0,
    }  # fmt: skip
    columns = list(ALL_FEATURES)
    estimator = build_estimator(config, columns).fit(frame[columns][:3000], frame["conflict"][:3000])
    model = calibrate(estimator, frame[3000:], columns, method="sigmoid")
    joblib.dump(
        {
            "estimator": model,
            "feature_columns": columns,
            "feature_reference": {c: float(frame[c].median()) for c in columns},
            "feature_params": {"concurrent_window_minutes": 5.0, "history_window_days": 30.0},
        },
        path,
    )
    return sha256_file(path)


@pytest.mark.parametrize("family", ["logreg", "hgb"])
def test_reasons_name_what_raises_the_risk_in_words(tmp_path: Path, family: str) -> None:
    from conflict_core.explain import reasons

    path = tmp_path / f"{family}.joblib"
    holder = ModelHolder()
    holder.configure("v1", str(path), _trained_artifact(path, family))
    assert holder.model is not None and holder.model.reference is not None
    typical = dict(zip(ALL_FEATURES, holder.model.reference.tolist(), strict=True))  # training medians
    risky = {**typical, "concurrent_editors": 2.0, "overlap_since_own_last_sync": 1.0}
    matrix = np.array([[row[name] for name in ALL_FEATURES] for row in (risky, typical)])

    scored = holder.score(matrix)

    assert scored.probabilities[0] > scored.probabilities[1]
    assert set(scored.factors[0][:2]) == {"concurrent_editors", "overlap_since_own_last_sync"}
    assert scored.factors[1] == []  # a typical sync has nothing that raises its risk
    words = reasons(
        scored.factors[0], risky, entity_type="task", changed_fields=["status"], params=scored.feature_params
    )
    assert "2 other people synced this task in the last 5 minutes" in words
    assert "someone else changed `status` on this task since your last sync of it" in words
    # The probabilities are those a plain prediction gives.
    np.testing.assert_allclose(scored.probabilities, holder.predict(matrix)[1])


def test_a_model_without_a_reference_gives_no_reasons(tmp_path: Path) -> None:
    path = tmp_path / "m.joblib"
    holder = ModelHolder()
    holder.configure("v1", str(path), _write(path))
    assert holder.score(np.zeros((2, len(ALL_FEATURES)))).factors == [[], []]
