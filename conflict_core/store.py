"""The sync event store: SQLAlchemy 2.0 models, engine and session helpers.

Tables:

* ``sync_log`` — one row per entity change a device pushed.
* ``conflict_resolution`` — the resolution of a sync that conflicted; its ``resolved_at``
  is the moment the conflict became known to the rest of the system.
* ``prediction_log`` — every prediction served, with its outcome once tracked.
* ``model_registry`` — trained model versions; the database allows at most one active.
* ``rollout_decision`` — every rollout step (shadow, canary, promotion, abort, rollback) and
  every decision on live outcomes, with its numbers.
* ``monitoring_run``, ``alert_state``, ``job_lock`` — lifecycle bookkeeping.

All timestamps are stored and returned as timezone-aware UTC.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker
from sqlalchemy.types import TypeDecorator

from conflict_core.schema import ENTITY_TYPE_MAX_LENGTH, IDENTIFIER_MAX_LENGTH, RESOLUTION_TYPE_MAX_LENGTH


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    SQLite keeps no offset, PostgreSQL keeps ``timestamptz``; either way a naive value is
    refused on the way in and UTC is attached on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given where UTC is required")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON, list[str]: JSON}


class SyncLog(Base):
    __tablename__ = "sync_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(IDENTIFIER_MAX_LENGTH), unique=True)
    user_id: Mapped[str] = mapped_column(String(IDENTIFIER_MAX_LENGTH))
    device_id: Mapped[str] = mapped_column(String(IDENTIFIER_MAX_LENGTH))
    entity_type: Mapped[str] = mapped_column(String(ENTITY_TYPE_MAX_LENGTH))
    entity_id: Mapped[str] = mapped_column(String(IDENTIFIER_MAX_LENGTH))
    changed_fields: Mapped[list[str]] = mapped_column(JSON)
    base_version: Mapped[int | None] = mapped_column(Integer)
    server_version: Mapped[int | None] = mapped_column(Integer)
    synced_at: Mapped[dt.datetime]
    conflict: Mapped[bool] = mapped_column(Boolean, default=False)

    resolution: Mapped[ConflictResolution | None] = relationship(back_populates="sync", uselist=False)

    __table_args__ = (
        Index("ix_sync_log_user_time", "user_id", "synced_at"),
        Index("ix_sync_log_entity_time", "entity_type", "entity_id", "synced_at"),
        Index("ix_sync_log_synced_at", "synced_at"),
    )


class ConflictResolution(Base):
    __tablename__ = "conflict_resolution"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sync_id: Mapped[int] = mapped_column(ForeignKey("sync_log.id", ondelete="CASCADE"), unique=True)
    resolution_type: Mapped[str] = mapped_column(String(RESOLUTION_TYPE_MAX_LENGTH))
    resolved_at: Mapped[dt.datetime]

    sync: Mapped[SyncLog] = relationship(back_populates="resolution")

    __table_args__ = (Index("ix_conflict_resolution_resolved_at", "resolved_at"),)


class PredictionLog(Base):
    __tablename__ = "prediction_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prediction_id: Mapped[str] = mapped_column(String(64), unique=True)
    model_type: Mapped[str] = mapped_column(String(64), default="conflict_predictor")
    model_version: Mapped[str] = mapped_column(String(64))
    sync_id: Mapped[str | None] = mapped_column(String(IDENTIFIER_MAX_LENGTH), index=True)
    user_id: Mapped[str] = mapped_column(String(IDENTIFIER_MAX_LENGTH))
    device_id: Mapped[str] = mapped_column(String(IDENTIFIER_MAX_LENGTH))
    entity_type: Mapped[str] = mapped_column(String(ENTITY_TYPE_MAX_LENGTH))
    entity_id: Mapped[str] = mapped_column(String(IDENTIFIER_MAX_LENGTH))
    predicted_conflict: Mapped[bool] = mapped_column(Boolean)
    probability: Mapped[float] = mapped_column(Float)
    risk_level: Mapped[str] = mapped_column(String(16))
    recommendation: Mapped[str] = mapped_column(String(32))
    features: Mapped[dict[str, Any]] = mapped_column(JSON)
    fallback_reason: Mapped[str | None] = mapped_column(String(64))
    # Which variant answered ("champion" or "challenger"; NULL when the heuristics did) and, in
    # shadow mode, the challenger's probability for the same row (never returned to the client).
    variant: Mapped[str | None] = mapped_column(String(16))
    challenger_version: Mapped[str | None] = mapped_column(String(64))
    challenger_probability: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(index=True)
    actual_conflict_occurred: Mapped[bool | None] = mapped_column(Boolean)
    prediction_correct: Mapped[bool | None] = mapped_column(Boolean)
    outcome_status: Mapped[str | None] = mapped_column(String(16))
    linked_event_id: Mapped[str | None] = mapped_column(String(IDENTIFIER_MAX_LENGTH))
    outcome_at: Mapped[dt.datetime | None]

    __table_args__ = (  # newest-first keyset pages of the console (migration api_tokens_console)
        Index("ix_prediction_log_keyset", "created_at", "id"),
        Index("ix_prediction_log_version_keyset", "model_version", "created_at", "id"),
        Index("ix_prediction_log_fallback_keyset", "fallback_reason", "created_at", "id"),
    )


class ModelVersion(Base):
    __tablename__ = "model_registry"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(String(32), unique=True)
    algorithm: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    feature_columns: Mapped[list[str]] = mapped_column(JSON)
    train_samples: Mapped[int] = mapped_column(Integer)
    holdout_samples: Mapped[int] = mapped_column(Integer)
    training_window_start: Mapped[dt.datetime]
    training_window_end: Mapped[dt.datetime]
    artifact_path: Mapped[str] = mapped_column(Text)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    report_path: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    is_active: Mapped[bool] = mapped_column(Boolean, default=False)
    gate_decision: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    activated_at: Mapped[dt.datetime | None]
    activated_by: Mapped[str | None] = mapped_column(String(128))
    # Rollout (see conflict_core.rollout): candidate → shadow → canary → active, or aborted.
    rollout_stage: Mapped[str] = mapped_column(String(16), default="candidate")
    is_challenger: Mapped[bool] = mapped_column(Boolean, default=False)
    canary_percent: Mapped[float | None] = mapped_column(Float)
    rollout_by: Mapped[str | None] = mapped_column(String(128))
    shadow_started_at: Mapped[dt.datetime | None]
    canary_started_at: Mapped[dt.datetime | None]
    aborted_at: Mapped[dt.datetime | None]
    abort_reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        # The database, not the application, guarantees a single active model ...
        Index(
            "uq_model_registry_one_active",
            "is_active",
            unique=True,
            sqlite_where=text("is_active"),
            postgresql_where=text("is_active"),
        ),
        # ... and at most one challenger (in shadow or canary) beside it.
        Index(
            "uq_model_registry_one_challenger",
            "is_challenger",
            unique=True,
            sqlite_where=text("is_challenger"),
            postgresql_where=text("is_challenger"),
        ),
    )


class RolloutDecision(Base):
    """One rollout step or decision: what was decided about which version, why, with its numbers."""

    __tablename__ = "rollout_decision"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    decided_at: Mapped[dt.datetime] = mapped_column(index=True)
    version: Mapped[str] = mapped_column(String(32), index=True)
    champion_version: Mapped[str | None] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(16))  # shadow, canary, promote, stay, abort, rollback, keep
    stage_before: Mapped[str | None] = mapped_column(String(16))
    stage_after: Mapped[str | None] = mapped_column(String(16))
    automatic: Mapped[bool] = mapped_column(Boolean, default=False)
    decided_by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    numbers: Mapped[dict[str, Any]] = mapped_column(JSON)


class MonitoringRun(Base):
    """One run of outcome tracking, with the rolling metrics it computed."""

    __tablename__ = "monitoring_run"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ran_at: Mapped[dt.datetime] = mapped_column(index=True)
    model_version: Mapped[str | None] = mapped_column(String(64))
    updated_count: Mapped[int] = mapped_column(Integer)
    labelled_count: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    alerts: Mapped[list[str]] = mapped_column(JSON)


class AlertState(Base):
    """Whether an alert condition is currently firing, so that it fires once per episode."""

    __tablename__ = "alert_state"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    firing: Mapped[bool] = mapped_column(Boolean, default=False)
    since: Mapped[dt.datetime | None]
    last_value: Mapped[float | None] = mapped_column(Float)
    message: Mapped[str | None] = mapped_column(Text)


class JobLock(Base):
    """A named lock with a holder and an expiry, so a crashed holder never blocks forever."""

    __tablename__ = "job_lock"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    acquired_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime]


class JobRun(Base):
    """Summary of one lifecycle job run (retrain, retention)."""

    __tablename__ = "job_run"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job: Mapped[str] = mapped_column(String(64), index=True)
    started_at: Mapped[dt.datetime]
    finished_at: Mapped[dt.datetime | None]
    status: Mapped[str] = mapped_column(String(16))
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf as ``None`` and numpy scalars as Python ones (JSON has no NaN, and
    PostgreSQL's JSON columns refuse it), through mappings and lists."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def make_engine(database_url: str, **kwargs: Any) -> Engine:
    """An engine for ``database_url``; SQLite gets WAL and foreign keys switched on."""
    if database_url.startswith("sqlite"):
        _ensure_sqlite_parent(database_url)
        engine = create_engine(database_url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(database_url, pool_pre_ping=True, **kwargs)


def _ensure_sqlite_parent(database_url: str) -> None:
    from pathlib import Path

    from sqlalchemy.engine import make_url

    database = make_url(database_url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
