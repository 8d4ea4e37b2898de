from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from conflict_core.store import ConflictResolution, ModelVersion, SyncLog

T0 = dt.datetime(2026, 1, 5, 9, 30, tzinfo=dt.UTC)


def _sync(event_id: str, at: dt.datetime = T0) -> SyncLog:
    return SyncLog(
        event_id=event_id,
        user_id="u1",
        device_id="d1",
        entity_type="task",
        entity_id="e1",
        changed_fields=["status"],
        synced_at=at,
        conflict=False,
    )


def _model(version: str, *, active: bool) -> ModelVersion:
    return ModelVersion(
        version=version,
        algorithm="logreg",
        params={},
        metrics={},
        feature_columns=["a"],
        train_samples=1,
        holdout_samples=1,
        training_window_start=T0,
        training_window_end=T0,
        artifact_path="x",
        artifact_sha256="0" * 64,
        is_active=active,
        status="active" if active else "candidate",
    )


def test_timestamps_round_trip_as_aware_utc(session_factory: sessionmaker[Session]) -> None:
    local = T0.astimezone(dt.timezone(dt.timedelta(hours=5)))
    with session_factory.begin() as session:
        session.add(_sync("e-1", local))
    with session_factory() as session:
        stored = session.scalars(select(SyncLog)).one()
    assert stored.synced_at == T0
    assert stored.synced_at.utcoffset() == dt.timedelta(0)


def test_naive_timestamp_is_refused(session_factory: sessionmaker[Session]) -> None:
    with pytest.raises(Exception, match="naive datetime"), session_factory.begin() as session:
        session.add(_sync("e-1", T0.replace(tzinfo=None)))


def test_event_id_is_unique(session_factory: sessionmaker[Session]) -> None:
    with session_factory.begin() as session:
        session.add(_sync("e-1"))
    with pytest.raises(IntegrityError), session_factory.begin() as session:
        session.add(_sync("e-1"))


def test_database_allows_one_active_model(session_factory: sessionmaker[Session]) -> None:
    with session_factory.begin() as session:
        session.add_all([_model("v1", active=True), _model("v2", active=False), _model("v3", active=False)])
    with pytest.raises(IntegrityError), session_factory.begin() as session:
        session.scalars(select(ModelVersion).where(ModelVersion.version == "v2")).one().is_active = True


def test_resolution_belongs_to_a_sync(session_factory: sessionmaker[Session]) -> None:
    with session_factory.begin() as session:
        sync = _sync("e-1")
        session.add(sync)
        session.flush()
        session.add(ConflictResolution(sync_id=sync.id, resolution_type="manual_merge", resolved_at=T0))
    with pytest.raises(IntegrityError), session_factory.begin() as session:
        session.add(ConflictResolution(sync_id=999_999, resolution_type="manual_merge", resolved_at=T0))
