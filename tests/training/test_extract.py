from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from conflict_core.errors import TrainingDataError
from conflict_core.events.store_reads import load_events
from conflict_core.features import ALL_FEATURES, FeatureParams, features_for_request
from conflict_core.store import make_engine
from training.extract import (
    ExtractionWindow,
    load_training_set,
    partition_files,
    write_training_set,
)


def test_offline_features_equal_the_online_single_request_computation(
    simulated_store: tuple[str, Path], training_frame: tuple[pd.DataFrame, ExtractionWindow, list[Path]]
) -> None:
    """Offline: the extraction over Parquet. Online: the store's recent history, one request."""
    url, _ = simulated_store
    frame, _, _ = training_frame
    params = FeatureParams()
    engine = make_engine(url)
    # Include conflicts and busy moments, not only quiet rows.
    sample = pd.concat([frame[frame.conflict].sample(15, random_state=1), frame.sample(25, random_state=2)])
    try:
        for row in sample.itertuples():
            at = row.synced_at.to_pydatetime()
            history = load_events(
                engine,
                since=at - params.lookback.to_pytimedelta(),
                until=at,
                user_ids=[row.user_id],
                entity_keys=[(row.entity_type, row.entity_id)],
            )
            fields = load_events(engine, since=at, until=at + dt.timedelta(microseconds=1), user_ids=[row.user_id])
            changed = fields[fields.event_id == row.event_id].changed_fields.iloc[0]
            online = features_for_request(
                history,
                user_id=row.user_id,
                entity_type=row.entity_type,
                entity_id=row.entity_id,
                changed_fields=list(changed),
                at=row.synced_at,
                params=params,
            )
            for name in ALL_FEATURES:
                assert online[name] == pytest.approx(getattr(row, name)), (row.event_id, name)
    finally:
        engine.dispose()


def test_training_frame_has_labels_features_and_time_order(
    training_frame: tuple[pd.DataFrame, ExtractionWindow, list[Path]],
) -> None:
    frame, window, _ = training_frame
    assert list(frame.columns[-len(ALL_FEATURES) :]) == list(ALL_FEATURES)
    assert frame.synced_at.is_monotonic_increasing
    assert frame.event_id.is_unique
    assert frame.synced_at.min() >= window.start and frame.synced_at.max() < window.end
    assert 0.02 < frame.conflict.mean() < 0.12
    assert frame[list(ALL_FEATURES)].notna().all().all()


def test_conflicts_are_more_likely_where_the_features_say_so(
    training_frame: tuple[pd.DataFrame, ExtractionWindow, list[Path]],
) -> None:
    frame, _, _ = training_frame
    overlapping = frame.overlap_since_own_last_sync > 0
    assert frame[overlapping].conflict.mean() > 3 * frame[~overlapping].conflict.mean()


def test_training_set_round_trips_with_a_manifest(
    tmp_path: Path, training_frame: tuple[pd.DataFrame, ExtractionWindow, list[Path]]
) -> None:
    frame, window, files = training_frame
    path, manifest = write_training_set(frame, tmp_path, window=window, params=FeatureParams(), files=files)
    loaded, meta = load_training_set(tmp_path)  # the features root resolves to the latest snapshot
    assert meta["snapshot"] == path.name == manifest.snapshot
    assert meta["rows"] == len(frame) and meta["positives"] == int(frame.conflict.sum())
    assert meta["feature_columns"] == list(ALL_FEATURES)
    pd.testing.assert_frame_equal(loaded, frame, check_dtype=False)


def test_missing_partitions_are_a_clear_error(tmp_path: Path) -> None:
    window = ExtractionWindow.days_back(7, end=dt.datetime(2026, 1, 10, tzinfo=dt.UTC))
    with pytest.raises(TrainingDataError, match="no exported events"):
        partition_files(tmp_path, window)
    with pytest.raises(TrainingDataError, match="holds no training set"):
        load_training_set(tmp_path)
