"""Outcome tracking: give each logged prediction the real outcome of the sync it was about.

Which predictions: those made more than ``min_age`` and at most ``max_age`` ago (24 h and
30 h by default) whose outcome is still unknown (``outcome_status IS NULL``). With the run
every 6 hours, consecutive runs see back-to-back, non-overlapping slices.

Linking, for each such prediction:

1. by the client's sync id: ``prediction_log.sync_id = sync_log.event_id``;
2. otherwise by ``(user, device, entity_type, entity_id)``: the nearest sync at or after
   the prediction, no later than ``horizon`` after it (default ``min_age``, the span every
   candidate has been observed for, so that all of them get the same chance to sync).

The outcome is "the sync conflicted": ``sync_log.conflict`` or a ``conflict_resolution``
row. ``prediction_correct`` is ``predicted_conflict == actual``. A prediction without a sync
gets ``outcome_status = "no_sync"`` and keeps ``actual_conflict_occurred`` NULL: it is not a
"no conflict". The other statuses say how the sync was found: ``"sync_id"`` or ``"nearest"``.

The work is three set-based ``SELECT`` s and one batched ``UPDATE`` (executemany by primary
key, guarded by ``outcome_status IS NULL``), so a second run, or a run racing another,
changes nothing already decided.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import pandas as pd
from sqlalchemy import Table, and_, bindparam, exists, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from conflict_core import locks
from conflict_core.settings import Settings
from conflict_core.store import ConflictResolution, MonitoringRun, PredictionLog, SyncLog, json_safe, utcnow
from training import monitoring, rollout_decisions

log = logging.getLogger(__name__)

STATUS_SYNC_ID = "sync_id"
STATUS_NEAREST = "nearest"
STATUS_NO_SYNC = "no_sync"
LOCK_NAME = "track_outcomes"
_PREDICTIONS = cast(Table, PredictionLog.__table__)


@dataclass(frozen=True)
class LinkCounts:
    window_start: dt.datetime
    window_end: dt.datetime
    candidates: int
    by_sync_id: int
    by_nearest: int
    no_sync: int
    conflicts: int

    @property
    def updated(self) -> int:
        return self.by_sync_id + self.by_nearest + self.no_sync

    @property
    def labelled(self) -> int:
        return self.by_sync_id + self.by_nearest


def _conflicted(linked: pd.DataFrame) -> pd.Series:
    """A sync conflicted when the server flagged it or a resolution was recorded for it."""
    return linked["conflict"].fillna(False).astype(bool) | linked["resolution_id"].notna()


def link_outcomes(
    session: Session,
    *,
    now: dt.datetime,
    min_age: dt.timedelta = dt.timedelta(hours=24),
    max_age: dt.timedelta = dt.timedelta(hours=30),
    horizon: dt.timedelta | None = None,
) -> LinkCounts:
    """Link the predictions made in ``(now - max_age, now - min_age]`` to their syncs (see module doc)."""
    if not min_age < max_age:
        raise ValueError(f"min_age must be below max_age, got {min_age} >= {max_age}")
    horizon = min_age if horizon is None else horizon
    start, end = now - max_age, now - min_age
    p = PredictionLog
    candidate = and_(p.outcome_status.is_(None), p.created_at > start, p.created_at <= end)

    candidates = pd.DataFrame(
        session.execute(select(p.id, p.predicted_conflict).where(candidate)).all(), columns=["id", "predicted"]
    )
    if candidates.empty:
        return LinkCounts(start, end, 0, 0, 0, 0, 0)

    by_id = pd.DataFrame(
        session.execute(
            select(p.id, SyncLog.event_id, SyncLog.conflict, ConflictResolution.id)
            .join(SyncLog, SyncLog.event_id == p.sync_id)
            .outerjoin(ConflictResolution, ConflictResolution.sync_id == SyncLog.id)
            .where(candidate)
        ).all(),
        columns=["id", "event_id", "conflict", "resolution_id"],
    )
    by_id["status"] = STATUS_SYNC_ID

    own_sync = aliased(SyncLog)
    pairs = pd.DataFrame(
        session.execute(
            select(
                p.id,
                p.created_at,
                SyncLog.id,
                SyncLog.event_id,
                SyncLog.synced_at,
                SyncLog.conflict,
                ConflictResolution.id,
            )
            .join(
                SyncLog,
                and_(
                    SyncLog.user_id == p.user_id,
                    SyncLog.device_id == p.device_id,
                    SyncLog.entity_type == p.entity_type,
                    SyncLog.entity_id == p.entity_id,
                    SyncLog.synced_at >= p.created_at,
                    SyncLog.synced_at <= end + horizon,
                ),
            )
            .outerjoin(ConflictResolution, ConflictResolution.sync_id == SyncLog.id)
            .where(candidate, ~exists().where(own_sync.event_id == p.sync_id))
        ).all(),
        columns=["id", "created_at", "sync_pk", "event_id", "synced_at", "conflict", "resolution_id"],
    )
    if not pairs.empty:
        pairs = pairs[pairs["synced_at"] <= pairs["created_at"] + horizon]
        pairs = pairs.sort_values(["id", "synced_at", "sync_pk"], kind="stable").drop_duplicates("id", keep="first")
    nearest = pairs[["id", "event_id", "conflict", "resolution_id"]].assign(status=STATUS_NEAREST)

    linked = pd.concat([by_id, nearest], ignore_index=True)
    linked["actual"] = _conflicted(linked)
    outcomes = candidates.merge(
        linked[["id", "event_id", "actual", "status"]], on="id", how="left", validate="one_to_one"
    )
    outcomes["status"] = outcomes["status"].fillna(STATUS_NO_SYNC)

    rows = [
        {
            "b_id": int(row.id),
            "b_actual": None if row.status == STATUS_NO_SYNC else bool(row.actual),
            "b_correct": None if row.status == STATUS_NO_SYNC else bool(row.predicted) == bool(row.actual),
            "b_status": row.status,
            "b_event": None if row.status == STATUS_NO_SYNC else row.event_id,
            "b_at": now,
        }
        for row in outcomes.itertuples(index=False)
    ]
    session.execute(
        update(_PREDICTIONS)
        .where(_PREDICTIONS.c.id == bindparam("b_id"), _PREDICTIONS.c.outcome_status.is_(None))
        .values(
            actual_conflict_occurred=bindparam("b_actual"),
            prediction_correct=bindparam("b_correct"),
            outcome_status=bindparam("b_status"),
            linked_event_id=bindparam("b_event"),
            outcome_at=bindparam("b_at"),
        ),
        rows,
    )
    status = outcomes["status"].value_counts()
    return LinkCounts(
        window_start=start,
        window_end=end,
        candidates=len(outcomes),
        by_sync_id=int(status.get(STATUS_SYNC_ID, 0)),
        by_nearest=int(status.get(STATUS_NEAREST, 0)),
        no_sync=int(status.get(STATUS_NO_SYNC, 0)),
        conflicts=int(outcomes["actual"].fillna(False).astype(bool).sum()),
    )


@dataclass
class TrackingSummary:
    ran_at: str
    window_start: str
    window_end: str
    candidates: int
    updated: int
    labelled: int
    by_sync_id: int
    by_nearest: int
    no_sync: int
    conflicts: int
    monitoring_run_id: int
    metrics: dict[str, Any] = field(default_factory=dict)
    alerts_firing: list[str] = field(default_factory=list)
    alerts_fired: list[str] = field(default_factory=list)
    alerts_resolved: list[str] = field(default_factory=list)
    rollout: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def track_outcomes(
    settings: Settings,
    session_factory: sessionmaker[Session],
    *,
    now: dt.datetime | None = None,
    min_age: dt.timedelta | None = None,
    max_age: dt.timedelta | None = None,
    window: dt.timedelta = dt.timedelta(days=7),
    thresholds: monitoring.Thresholds | None = None,
    notify: monitoring.Notifier | None = None,
    lock_ttl: dt.timedelta = dt.timedelta(hours=1),
) -> TrackingSummary:
    """One tracking run: link outcomes, compute the rolling metrics and alerts, store a ``monitoring_run``.

    ``now`` may be simulated (tests, demos); the job lock always runs on the wall clock.
    """
    now = now or utcnow()
    min_age = min_age if min_age is not None else dt.timedelta(hours=settings.outcome_min_age_hours)
    max_age = max_age if max_age is not None else dt.timedelta(hours=settings.outcome_max_age_hours)
    with locks.job_lock(session_factory, LOCK_NAME, ttl=lock_ttl):
        # Linking commits on its own: the monitoring pass reads for a while (metrics, drift
        # against the artifact's reference) and must not hold the store's write lock meanwhile
        # (on SQLite that would stall the serving app's prediction log). Its only writes, the
        # alert states and the run row, come last. Linking touches only unlinked predictions,
        # so a failure between the two loses nothing and the next run repeats nothing.
        with session_factory.begin() as session:
            counts = link_outcomes(session, now=now, min_age=min_age, max_age=max_age)
        with session_factory.begin() as session:
            metrics, alerts = monitoring.monitor(
                settings, session, now=now, window=window, thresholds=thresholds, notify=notify
            )
            run = MonitoringRun(
                ran_at=now,
                model_version=metrics.get("model_version"),
                updated_count=counts.updated,
                labelled_count=counts.labelled,
                metrics=json_safe(
                    {**metrics, "linking": {k: v for k, v in asdict(counts).items() if isinstance(v, int)}}
                ),
                alerts=list(alerts.firing),
            )
            session.add(run)
            session.flush()
            run_id = run.id
        # Promotion, abort and rollback are judged on the outcomes just linked (same lock).
        decisions = rollout_decisions.decide(settings, session_factory, now=now, notify=notify)
    log.info(
        "outcomes: %d candidates, %d labelled (%d by sync id, %d nearest), %d without a sync; alerts firing: %s",
        counts.candidates,
        counts.labelled,
        counts.by_sync_id,
        counts.by_nearest,
        counts.no_sync,
        ", ".join(alerts.firing) or "none",
    )
    return TrackingSummary(
        ran_at=now.isoformat(),
        window_start=counts.window_start.isoformat(),
        window_end=counts.window_end.isoformat(),
        candidates=counts.candidates,
        updated=counts.updated,
        labelled=counts.labelled,
        by_sync_id=counts.by_sync_id,
        by_nearest=counts.by_nearest,
        no_sync=counts.no_sync,
        conflicts=counts.conflicts,
        monitoring_run_id=run_id,
        metrics=json_safe(metrics),
        alerts_firing=list(alerts.firing),
        alerts_fired=[e.name for e in alerts.fired],
        alerts_resolved=[e.name for e in alerts.resolved],
        rollout=json_safe(decisions.to_dict()),
    )


def latest_monitoring_runs(session: Session, limit: int = 1) -> list[MonitoringRun]:
    return list(
        session.scalars(
            select(MonitoringRun).order_by(MonitoringRun.ran_at.desc(), MonitoringRun.id.desc()).limit(limit)
        )
    )
