"""Champion and challenger in one replica: sticky canary routing, shadow scoring, safe failure."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from conflict_core.features import FeatureParams
from conflict_core.registry import sha256_file
from serve_app.feature_lookup import FEATURE_NAMES
from serve_app.inference import ChallengerInput, Variants, canary_bucket, canary_rows, split_answer


def artifact(directory: Path, version: str, sign: float, feature_params: FeatureParams | None = None) -> dict[str, Any]:
    """A model whose probability rises (``sign`` > 0) or falls with the first feature."""
    rng = np.random.default_rng(1)
    x = rng.random((300, len(FEATURE_NAMES)))
    y = (sign * (x[:, 0] - 0.5) > 0).astype(int)
    path = directory / f"{version}.joblib"
    model = LogisticRegression().fit(pd.DataFrame(x, columns=list(FEATURE_NAMES)), y)
    extra = {} if feature_params is None else {"feature_params": asdict(feature_params)}
    joblib.dump({"estimator": model, "feature_columns": list(FEATURE_NAMES), **extra}, path)
    return {"model_version": version, "artifact_path": str(path), "artifact_sha256": sha256_file(path)}


@pytest.fixture
def models(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {"v1": artifact(tmp_path, "v1", 1.0), "v2": artifact(tmp_path, "v2", -1.0)}


MATRIX = np.linspace(0, 1, 40 * len(FEATURE_NAMES)).reshape(40, len(FEATURE_NAMES))
USERS = [f"user-{i}" for i in range(40)]


def test_a_users_bucket_is_the_same_in_every_process() -> None:
    """Python's hash() is salted per process; the canary bucket must not be."""
    code = "from serve_app.inference import canary_bucket; print([canary_bucket(f'u{i}') for i in range(50)])"
    runs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": seed}
        ).stdout
        for seed in ("1", "2")
    }
    assert runs == {str([canary_bucket(f"u{i}") for i in range(50)]) + "\n"}


@pytest.mark.parametrize("percent", [1.0, 10.0, 37.5])
def test_the_canary_share_of_users_is_close_to_the_percent(percent: float) -> None:
    users = [f"user-{i}" for i in range(40_000)]
    share = canary_rows(users, percent).mean() * 100
    assert abs(share - percent) < 0.6, share


def test_raising_the_percent_keeps_every_canary_user_in_the_canary() -> None:
    users = [f"user-{i}" for i in range(5_000)]
    small, large = canary_rows(users, 5), canary_rows(users, 20)
    assert small.any() and np.all(large[small])


# What the champion's answer carries; a challenger adds its version and its rows or shadow scores.
CHAMPION_KEYS = {"model_version", "probabilities", "thresholds", "factors", "feature_params"}


def test_without_a_challenger_only_the_champion_scores(models: dict[str, dict[str, Any]]) -> None:
    variants = Variants()
    variants.configure(models["v1"])
    answer = variants.predict(MATRIX, USERS)
    assert set(answer) == CHAMPION_KEYS and answer["model_version"] == "v1"


def test_shadow_returns_the_champions_answer_and_carries_the_challengers(models: dict[str, dict[str, Any]]) -> None:
    champion_only = Variants()
    champion_only.configure(models["v1"])
    expected = champion_only.predict(MATRIX)["probabilities"]
    variants = Variants()
    variants.configure({**models["v1"], "challenger": {**models["v2"], "mode": "shadow"}})
    answer = variants.predict(MATRIX, USERS)
    np.testing.assert_allclose(answer["probabilities"], expected)
    assert answer["challenger_version"] == "v2" and "challenger_rows" not in answer
    # The challenger ranks the other way round: its scores are really its own.
    assert np.corrcoef(answer["shadow_probabilities"], expected)[0, 1] < -0.9


def test_canary_answers_exactly_the_canary_users_rows_with_the_challenger(models: dict[str, dict[str, Any]]) -> None:
    variants = Variants()
    variants.configure({**models["v1"], "challenger": {**models["v2"], "mode": "canary", "percent": 30}})
    champion = Variants()
    champion.configure(models["v1"])
    shadow = Variants()
    shadow.configure({**models["v1"], "challenger": {**models["v2"], "mode": "shadow"}})
    answer = variants.predict(MATRIX, USERS)
    rows = canary_rows(USERS, 30)
    assert rows.any() and not rows.all()
    np.testing.assert_array_equal(answer["challenger_rows"], rows)
    full_champion = champion.predict(MATRIX)["probabilities"]
    full_challenger = shadow.predict(MATRIX)["shadow_probabilities"]
    np.testing.assert_allclose(answer["probabilities"][rows], full_challenger[rows])
    np.testing.assert_allclose(answer["probabilities"][~rows], full_champion[~rows])
    # Sticky: the same users get the same variant on every call.
    np.testing.assert_array_equal(variants.predict(MATRIX, USERS)["challenger_rows"], rows)


def test_a_challenger_that_fails_verification_leaves_the_champion_serving(
    models: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    bad = {**models["v2"], "artifact_sha256": "0" * 64, "mode": "shadow"}
    variants = Variants()
    variants.configure({**models["v1"], "challenger": bad})
    assert variants.challenger is None and "sha256" in (variants.challenger_problem or "")
    assert set(variants.predict(MATRIX, USERS)) == CHAMPION_KEYS


def test_a_challenger_that_raises_at_predict_time_never_fails_the_request(models: dict[str, dict[str, Any]]) -> None:
    variants = Variants()
    variants.configure({**models["v1"], "challenger": {**models["v2"], "mode": "canary", "percent": 50}})
    assert variants.challenger is not None

    def broken(matrix: np.ndarray) -> np.ndarray:
        raise RuntimeError("boom")

    object.__setattr__(variants.challenger.model, "predict_proba", broken)
    answer = variants.predict(MATRIX, USERS)
    assert answer["model_version"] == "v1" and "challenger_rows" not in answer


def test_promotion_reuses_the_loaded_challenger_and_drops_it_as_challenger(models: dict[str, dict[str, Any]]) -> None:
    variants = Variants()
    variants.configure({**models["v1"], "challenger": {**models["v2"], "mode": "canary", "percent": 10}})
    loaded = variants.challenger.model  # type: ignore[union-attr]
    variants.configure({**models["v2"], "challenger": None})
    assert variants.champion.model is loaded and variants.challenger is None


def test_split_answer_slices_every_row_array() -> None:
    answer = {
        "model_version": "v1",
        "challenger_version": "v2",
        "probabilities": np.arange(5.0),
        "challenger_rows": np.array([True, False, True, False, True]),
    }
    parts = split_answer(answer, [0, 2, 5])
    assert [p["probabilities"].tolist() for p in parts] == [[0.0, 1.0], [2.0, 3.0, 4.0]]
    assert [p["challenger_rows"].tolist() for p in parts] == [[True, False], [True, False, True]]
    assert all(p["challenger_version"] == "v2" for p in parts)


SLOW = FeatureParams(concurrent_window_minutes=24 * 60.0, history_window_days=90.0)


@pytest.mark.parametrize("mode", ["shadow", "canary"])
def test_a_challenger_with_other_feature_parameters_is_scored_only_on_its_own_features(
    models: dict[str, dict[str, Any]], tmp_path: Path, mode: str
) -> None:
    slow = artifact(tmp_path, "v_slow", -1.0, SLOW)
    variants = Variants()
    variants.configure({**models["v1"], "challenger": {**slow, "mode": mode, "percent": 50}})
    alone = Variants()
    alone.configure(slow)
    champion = Variants()
    champion.configure(models["v1"])

    # Without its features the champion answers every row, and the answer names what is missing.
    answer = variants.predict(MATRIX, USERS)
    assert "challenger_version" not in answer and answer["challenger_feature_params"] == asdict(SLOW)
    np.testing.assert_allclose(answer["probabilities"], champion.predict(MATRIX)["probabilities"])
    # Features computed with other parameters than its own are not taken either.
    stale = variants.predict(MATRIX, USERS, ChallengerInput(MATRIX[::-1], FeatureParams()))
    assert "challenger_version" not in stale

    own = MATRIX[::-1].copy()  # its features differ from the champion's
    answer = variants.predict(MATRIX, USERS, ChallengerInput(own, SLOW))
    expected = alone.predict(own)["probabilities"]
    assert answer["challenger_version"] == "v_slow"
    if mode == "shadow":
        np.testing.assert_allclose(answer["shadow_probabilities"], expected)
        np.testing.assert_allclose(answer["probabilities"], champion.predict(MATRIX)["probabilities"])
    else:
        rows = answer["challenger_rows"]
        assert rows.any() and not rows.all()
        np.testing.assert_allclose(answer["probabilities"][rows], expected[rows])
        np.testing.assert_allclose(answer["probabilities"][~rows], champion.predict(MATRIX)["probabilities"][~rows])
