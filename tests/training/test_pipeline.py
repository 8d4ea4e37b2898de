"""The training run's gate compares the active model and the candidate each on its own features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conflict_core import db, registry
from conflict_core.decision import cost_thresholds
from conflict_core.features import FeatureParams
from conflict_core.settings import Settings
from conflict_core.store import make_engine, make_session_factory
from training.evaluate import classification_metrics
from training.extract import LABEL, ExtractionWindow, extract_local, latest_event_time, partition_files
from training.extract import write_training_set as store
from training.pipeline import train_and_register
from training.train import time_split

DAYS = 45
SLOW_TEMPO = FeatureParams(concurrent_window_minutes=120.0, history_window_days=14.0, hours_since_cap=336.0)


def _training_set(events_dir: Path, out: Path, params: FeatureParams) -> pd.DataFrame:
    window = ExtractionWindow.days_back(DAYS, end=latest_event_time(events_dir), params=params)
    files = partition_files(events_dir, window)
    frame = extract_local(files, window, params)
    store(frame, out, window=window, params=params, files=files)
    return frame


def _metrics_on(artifact: dict, rows: pd.DataFrame, threshold: float) -> dict[str, float]:
    proba = artifact["estimator"].predict_proba(rows[artifact["feature_columns"]])[:, 1]
    return classification_metrics(rows[LABEL].to_numpy(), proba, threshold)


def test_the_active_model_is_scored_on_its_own_feature_parameters(
    simulated_store: tuple[str, Path], tmp_path: Path
) -> None:
    _, events_dir = simulated_store
    default_frame = _training_set(events_dir, tmp_path / "default", FeatureParams())
    slow_frame = _training_set(events_dir, tmp_path / "slow", SLOW_TEMPO)
    serve_config = tmp_path / "serve_config.yaml"
    serve_config.write_text(yaml.safe_dump({"applications": []}))
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'store.db'}",
        data_dir=tmp_path,
        serve_config_path=serve_config,
        dashboard_url="http://127.0.0.1:9",
    )
    db.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    try:
        first = train_and_register(settings, factory, training_set=tmp_path / "default", sweep="local", num_samples=1)
        assert first.activated
        second = train_and_register(settings, factory, training_set=tmp_path / "slow", sweep="local", num_samples=1)
    finally:
        engine.dispose()

    active = registry.load_artifact(Path(first.artifact_path), first.artifact_sha256)
    candidate = registry.load_artifact(Path(second.artifact_path), second.artifact_sha256)
    assert active["feature_params"] != candidate["feature_params"]  # the two models use different windows
    threshold = cost_thresholds(settings.decision_costs()).fetch_first
    holdout_ids = time_split(slow_frame).holdout["event_id"]
    own = default_frame.set_index("event_id").loc[holdout_ids].reset_index()
    other = slow_frame.set_index("event_id").loc[holdout_ids].reset_index()
    expected = _metrics_on(active, own, threshold)
    on_the_candidates_features = _metrics_on(active, other, threshold)
    assert second.active_before == first.version
    assert second.active_before_holdout is not None
    # Same holdout rows, the active model's own windows: not the candidate's.
    assert second.active_before_holdout["roc_auc"] == pytest.approx(expected["roc_auc"], abs=1e-12)
    assert second.active_before_holdout["pr_auc"] == pytest.approx(expected["pr_auc"], abs=1e-12)
    assert not np.isclose(second.active_before_holdout["pr_auc"], on_the_candidates_features["pr_auc"])
    assert f"{expected['roc_auc']:.4f}" in second.gate_reason
