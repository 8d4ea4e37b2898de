from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conflict_core import registry
from conflict_core.errors import TrainingDataError
from conflict_core.features import ALL_FEATURES, FeatureParams
from conflict_core.settings import Settings
from training.extract import ExtractionWindow, write_training_set
from training.pipeline import train_and_register
from training.publishing import Published, publish_active_model
from training.train import calibrate, check_training_data, fit_candidate, time_split
from training.tune import sample_configs

Frame = tuple[pd.DataFrame, ExtractionWindow, list[Path]]


def test_time_split_never_mixes_past_and_future(training_frame: Frame) -> None:
    frame, _, _ = training_frame
    split = time_split(frame)
    assert split.fit.synced_at.max() < split.calibration.synced_at.min()
    assert split.calibration.synced_at.max() < split.holdout.synced_at.min()
    assert len(split.fit) + len(split.calibration) + len(split.holdout) == len(frame)
    assert 0.15 < len(split.holdout) / len(frame) < 0.25


def test_too_little_data_is_refused_with_the_numbers(training_frame: Frame) -> None:
    frame, _, _ = training_frame
    with pytest.raises(TrainingDataError, match="50 samples is too few to train; at least 100 are needed"):
        check_training_data(frame.head(50).assign(conflict=[True, False] * 25), min_samples=100, min_positives=1)
    quiet = frame.assign(conflict=False)
    quiet.loc[quiet.index[:3], "conflict"] = True
    with pytest.raises(TrainingDataError, match="3 conflicts"):
        check_training_data(quiet, min_samples=100, min_positives=20)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, training_frame: Frame) -> dict:
    """One local-sweep training run into a fresh SQLite registry."""
    from conflict_core import db
    from conflict_core.store import make_engine, make_session_factory

    root = tmp_path_factory.mktemp("trained")
    frame, window, files = training_frame
    write_training_set(frame, root / "features", window=window, params=FeatureParams(), files=files)
    serve_config = root / "serve_config.yaml"
    serve_config.write_text(
        yaml.safe_dump({"applications": [{"name": "a", "deployments": [{"name": "ModelInference"}]}]})
    )
    settings = Settings(
        database_url=f"sqlite:///{root / 'store.db'}",
        data_dir=root,
        serve_config_path=serve_config,
        dashboard_url="http://127.0.0.1:9",
    )  # nothing listens: no running app
    db.upgrade(settings.database_url)
    factory = make_session_factory(make_engine(settings.database_url))
    result = train_and_register(settings, factory, training_set=root / "features", sweep="local", num_samples=4)
    published = publish_active_model(
        settings, version=result.version, artifact_path=result.artifact_path, artifact_sha256=result.artifact_sha256
    )
    return {
        "result": result,
        "published": published,
        "settings": settings,
        "factory": factory,
        "frame": frame,
        "root": root,
    }


def test_first_model_clears_the_floor_activates_and_is_published(trained: dict) -> None:
    result, factory = trained["result"], trained["factory"]
    assert result.holdout["roc_auc"] >= 0.85
    assert result.holdout["pr_auc"] > result.seed_baseline_holdout["pr_auc"]
    assert result.activated and "first model" in result.gate_reason
    with factory() as session:
        row = registry.active(session)
        assert row is not None and row.version == result.version and row.activated_by == "gate"
        assert row.artifact_sha256 == registry.sha256_file(Path(row.artifact_path))
    user_config = yaml.safe_load(trained["settings"].serve_config_path.read_text())["applications"][0]["deployments"][
        0
    ]["user_config"]
    assert user_config == {
        "model_version": result.version,
        "artifact_path": result.artifact_path,
        "artifact_sha256": result.artifact_sha256,
    }
    assert trained["published"] == Published(serve_config_updated=True, serve_app_reconfigured=False)


def test_report_has_metrics_table_and_plots(trained: dict) -> None:
    report = Path(trained["result"].report_path)
    text = report.read_text()
    assert "| model | ROC-AUC | PR-AUC | Brier | ECE" in text and "seed baseline" in text
    for plot in ("roc.png", "pr.png", "reliability.png", "importances.png"):
        assert (report.parent / plot).stat().st_size > 5_000
        assert f"({plot})" in text


def test_model_is_calibrated_on_the_holdout(trained: dict) -> None:
    holdout = trained["result"].holdout
    assert holdout["ece"] < 0.03
    assert holdout["brier"] < trained["result"].seed_baseline_holdout["brier"]


def test_calibration_keeps_the_ranking_the_model_was_selected_on(training_frame: Frame) -> None:
    frame, _, _ = training_frame
    split = time_split(frame)
    config = next(config for config in sample_configs(4) if config["model"] == "hgb")
    columns = list(ALL_FEATURES)
    estimator, _ = fit_candidate(config, columns, split.fit, split.calibration)
    fitted = estimator.predict_proba(split.holdout[columns])[:, 1]
    calibrated = calibrate(estimator, split.calibration, columns).predict_proba(split.holdout[columns])[:, 1]

    # Strictly increasing: every pair of holdout rows is ordered as before, no new ties.
    order = np.argsort(fitted, kind="stable")
    assert np.all(np.diff(calibrated[order]) >= 0)
    assert len(np.unique(calibrated)) == len(np.unique(fitted))


def _artifact(trained: dict) -> dict:
    result = trained["result"]
    return registry.load_artifact(Path(result.artifact_path), result.artifact_sha256)


@pytest.mark.parametrize("feature", ["concurrent_editors", "field_overlap_score", "overlap_since_own_last_sync"])
def test_more_of_a_risk_feature_never_lowers_the_predicted_risk(trained: dict, feature: str) -> None:
    artifact = _artifact(trained)
    base = trained["frame"].sample(300, random_state=3)[artifact["feature_columns"]].reset_index(drop=True)
    low = base.assign(**{feature: 0.0})
    steps = [0, 1, 2, 5] if feature == "concurrent_editors" else [0.0, 0.25, 0.5, 1.0]
    probas = [artifact["estimator"].predict_proba(low.assign(**{feature: v}))[:, 1] for v in steps]
    for lower, higher in zip(probas, probas[1:], strict=False):
        assert np.all(higher >= lower - 1e-12)
    assert np.mean(probas[-1] - probas[0]) > 0  # and it matters


def test_prediction_does_not_depend_on_row_order(trained: dict) -> None:
    artifact = _artifact(trained)
    rows = trained["frame"].sample(200, random_state=4)[artifact["feature_columns"]]
    forward = artifact["estimator"].predict_proba(rows)[:, 1]
    backward = artifact["estimator"].predict_proba(rows.iloc[::-1])[:, 1][::-1]
    np.testing.assert_allclose(forward, backward)


def test_a_retrain_that_is_not_clearly_better_stays_a_candidate(trained: dict) -> None:
    settings, factory = trained["settings"], trained["factory"]
    again = train_and_register(
        settings, factory, training_set=trained["root"] / "features", sweep="local", num_samples=2
    )
    assert not again.activated
    assert again.active_before == trained["result"].version
    assert "needs more than +5.0%" in again.gate_reason
    with factory() as session:
        assert registry.active(session).version == trained["result"].version  # type: ignore[union-attr]
        assert registry.get(session, again.version).status == "candidate"
        assert registry.get(session, again.version).gate_decision == again.gate_reason


def test_sampled_configs_cover_both_model_families() -> None:
    assert {c["model"] for c in sample_configs(4)} == {"logreg", "hgb"}
    assert len(ALL_FEATURES) == 7


def test_the_shipped_model_never_loses_to_the_seed_baseline(trained: dict) -> None:
    result = trained["result"]
    assert result.holdout["roc_auc"] >= result.seed_baseline_holdout["roc_auc"]
    assert result.holdout["pr_auc"] >= result.seed_baseline_holdout["pr_auc"]
    text = Path(result.report_path).read_text()
    assert "## Never worse than the seed baseline" in text and "holdout positives" in text
    assert "ROC-AUC [95% CI]" in text


def test_cost_aware_thresholds_are_stored_with_the_model_and_reported(trained: dict) -> None:
    from conflict_core.decision import cost_thresholds

    result, settings, factory = trained["result"], trained["settings"], trained["factory"]
    expected = cost_thresholds(settings.decision_costs()).to_dict()
    assert _artifact(trained)["decision_thresholds"] == expected
    with factory() as session:
        decision = registry.get(session, result.version).metrics["decision"]
    assert decision["thresholds"] == expected
    costs = decision["holdout_cost_per_decision"]
    assert costs["cost_aware"] <= costs["fixed_bands"] and costs["cost_aware"] < costs["always_sync_now"]
    assert "## Recommendations (cost-aware thresholds)" in Path(result.report_path).read_text()
