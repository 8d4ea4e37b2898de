"""What each console page reads from the store: plain functions of a session, no HTTP.

The prediction log is paged newest first by the key ``(created_at, id)`` (keyset pagination:
each page starts strictly after the last row of the previous one, so page N costs what page 1
does, served by the ``ix_prediction_log_*keyset`` indexes), never by OFFSET.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from conflict_core import registry, rollout
from conflict_core.audit import ModelAudit
from conflict_core.store import AlertState, JobRun, ModelVersion, MonitoringRun, PredictionLog, RolloutDecision

MODEL_SORTS = ("created_at", "version", "roc_auc", "pr_auc", "brier", "train_samples")
OUTCOMES = ("pending", "correct", "incorrect")
NO_FALLBACK = "none"

PREDICTION_COLUMNS = (
    PredictionLog.id,
    PredictionLog.prediction_id,
    PredictionLog.created_at,
    PredictionLog.model_version,
    PredictionLog.user_id,
    PredictionLog.entity_type,
    PredictionLog.entity_id,
    PredictionLog.probability,
    PredictionLog.risk_level,
    PredictionLog.recommendation,
    PredictionLog.fallback_reason,
    PredictionLog.sync_id,
    PredictionLog.actual_conflict_occurred,
    PredictionLog.prediction_correct,
)


def holdout(row: ModelVersion) -> dict[str, Any]:
    value = (row.metrics or {}).get("holdout") or {}
    return dict(value)


def auc_class(value: Any) -> str:
    """The seed admin's colour of a ROC-AUC: green above 0.75, orange above 0.60, red below."""
    if not isinstance(value, int | float):
        return "muted"
    return "good" if value > 0.75 else "fair" if value > 0.60 else "poor"


def probability_class(value: float) -> str:
    """The seed admin's colour of a probability: red above 50 %, orange above 20 %, green below."""
    return "poor" if value > 0.5 else "fair" if value > 0.2 else "good"


@dataclass(frozen=True)
class ModelFilters:
    status: str | None = None
    algorithm: str | None = None
    created_from: dt.date | None = None
    created_to: dt.date | None = None
    sort: str = "created_at"
    descending: bool = True


def models(session: Session, filters: ModelFilters) -> list[ModelVersion]:
    query = select(ModelVersion)
    if filters.status:  # the rollout stage: candidate, shadow, canary, active, aborted or retired
        query = query.where(ModelVersion.rollout_stage == filters.status)
    if filters.algorithm:
        query = query.where(ModelVersion.algorithm == filters.algorithm)
    if filters.created_from:
        query = query.where(ModelVersion.created_at >= _day_start(filters.created_from))
    if filters.created_to:
        query = query.where(ModelVersion.created_at < _day_start(filters.created_to) + dt.timedelta(days=1))
    rows = list(session.scalars(query.order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())))

    def key(row: ModelVersion) -> tuple[bool, Any]:
        value = getattr(row, filters.sort) if filters.sort in ("created_at", "version", "train_samples") else None
        if value is None:
            value = holdout(row).get(filters.sort)
        return (value is None) != filters.descending, value if value is not None else 0

    return sorted(rows, key=key, reverse=filters.descending)


def algorithms(session: Session) -> list[str]:
    return list(session.scalars(select(ModelVersion.algorithm).distinct().order_by(ModelVersion.algorithm)))


def version_names(session: Session) -> list[str]:
    return list(session.scalars(select(ModelVersion.version).order_by(ModelVersion.created_at.desc())))


def audit_trail(session: Session, limit: int = 50) -> list[ModelAudit]:
    return list(session.scalars(select(ModelAudit).order_by(ModelAudit.at.desc(), ModelAudit.id.desc()).limit(limit)))


@dataclass(frozen=True)
class RolloutView:
    """The rollout now: the champion, the challenger beside it (if any), its mode, share and start."""

    champion: ModelVersion | None
    challenger: ModelVersion | None

    @property
    def mode(self) -> str | None:
        return self.challenger.rollout_stage if self.challenger else None

    @property
    def percent(self) -> float | None:
        return self.challenger.canary_percent if self.challenger and self.mode == rollout.CANARY else None

    @property
    def since(self) -> dt.datetime | None:
        """When the challenger entered its current mode."""
        if self.challenger is None:
            return None
        if self.mode == rollout.CANARY:
            return self.challenger.canary_started_at
        return self.challenger.shadow_started_at


def rollout_view(session: Session) -> RolloutView:
    return RolloutView(registry.active(session), rollout.challenger(session))


def rollout_decisions(session: Session, version: str | None = None, limit: int = 20) -> list[RolloutDecision]:
    return rollout.decisions(session, version=version, limit=limit)


def flat_numbers(numbers: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """A decision's numbers as ``(dotted key, text)`` pairs, floats to four significant digits."""
    pairs: list[tuple[str, str]] = []
    for key, value in numbers.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            pairs += flat_numbers(value, f"{name}.")
        elif isinstance(value, float):
            pairs.append((name, f"{value:.4g}"))
        elif isinstance(value, list):
            pairs.append((name, ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)))
        else:
            pairs.append((name, "—" if value is None else str(value)))
    return pairs


@dataclass(frozen=True)
class PredictionFilters:
    model_version: str | None = None
    entity_type: str | None = None
    risk_level: str | None = None
    fallback_reason: str | None = None  # NO_FALLBACK: answered by a model
    outcome: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def where(self) -> list[Any]:
        conditions: list[Any] = []
        if self.model_version:
            conditions.append(PredictionLog.model_version == self.model_version)
        if self.entity_type:
            conditions.append(PredictionLog.entity_type == self.entity_type)
        if self.risk_level:
            conditions.append(PredictionLog.risk_level == self.risk_level)
        if self.fallback_reason == NO_FALLBACK:
            conditions.append(PredictionLog.fallback_reason.is_(None))
        elif self.fallback_reason:
            conditions.append(PredictionLog.fallback_reason == self.fallback_reason)
        if self.outcome == "pending":
            conditions.append(PredictionLog.prediction_correct.is_(None))
        elif self.outcome in ("correct", "incorrect"):
            conditions.append(PredictionLog.prediction_correct.is_(self.outcome == "correct"))
        if self.since:
            conditions.append(PredictionLog.created_at >= self.since)
        if self.until:
            conditions.append(PredictionLog.created_at < self.until)
        return conditions


@dataclass(frozen=True)
class Cursor:
    """The key of the last row shown: the next page starts strictly after it (older)."""

    created_at: dt.datetime
    id: int

    def encode(self) -> str:
        return f"{self.created_at.astimezone(dt.UTC).isoformat()}|{self.id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Raises ``ValueError`` naming the expected form."""
        moment, sep, ident = text.rpartition("|")
        try:
            created_at = dt.datetime.fromisoformat(moment)
            if not sep or created_at.tzinfo is None:
                raise ValueError
            return cls(created_at, int(ident))
        except ValueError:
            raise ValueError(f"cursor {text!r} is not '<ISO 8601 UTC time>|<id>'") from None


@dataclass
class PredictionPage:
    rows: list[Any]
    next_cursor: Cursor | None
    filters: PredictionFilters = field(default_factory=PredictionFilters)


def _keyset(filters: PredictionFilters, after: Cursor | None) -> Select[Any]:
    query = select(*PREDICTION_COLUMNS).where(*filters.where())
    if after is not None:
        # created_at <= t narrows the index range; the OR only breaks ties at t itself.
        query = query.where(
            PredictionLog.created_at <= after.created_at,
            or_(PredictionLog.created_at < after.created_at, PredictionLog.id < after.id),
        )
    # A version (or fallback reason) may have served only long ago: scanning the log's newest
    # rows for it costs a full scan, which PostgreSQL's planner picks when it assumes the rows
    # are spread evenly. Bounding the scan by that value's newest row (one lookup in its
    # (column, created_at, id) index) starts the walk where the matches are.
    for column, value in (
        (PredictionLog.model_version, filters.model_version),
        (PredictionLog.fallback_reason, filters.fallback_reason if filters.fallback_reason != NO_FALLBACK else None),
    ):
        if value:
            newest = select(func.max(PredictionLog.created_at)).where(column == value).scalar_subquery()
            query = query.where(PredictionLog.created_at <= newest)
    return query.order_by(PredictionLog.created_at.desc(), PredictionLog.id.desc())


def predictions(
    session: Session, filters: PredictionFilters, after: Cursor | None = None, limit: int = 50
) -> PredictionPage:
    rows = list(session.execute(_keyset(filters, after).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = Cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
    return PredictionPage(rows, cursor, filters)


def prediction_rows(session: Session, filters: PredictionFilters, chunk: int = 5000) -> Iterator[Any]:
    """Every row of the filtered view, newest first, fetched in keyset chunks (for the CSV)."""
    after: Cursor | None = None
    while True:
        rows = list(session.execute(_keyset(filters, after).limit(chunk)))
        yield from rows
        if len(rows) < chunk:
            return
        after = Cursor(rows[-1].created_at, rows[-1].id)


def outcome_of(row: Any) -> str:
    if row.prediction_correct is None:
        return "pending"
    return "correct" if row.prediction_correct else "incorrect"


def monitoring_runs(session: Session, limit: int = 200) -> list[MonitoringRun]:
    rows = list(session.scalars(select(MonitoringRun).order_by(MonitoringRun.ran_at.desc()).limit(limit)))
    return rows[::-1]


def alerts(session: Session) -> list[AlertState]:
    return list(session.scalars(select(AlertState).order_by(AlertState.firing.desc(), AlertState.name)))


def job_runs(session: Session, limit: int = 50) -> list[JobRun]:
    return list(session.scalars(select(JobRun).order_by(JobRun.started_at.desc(), JobRun.id.desc()).limit(limit)))


def _day_start(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
