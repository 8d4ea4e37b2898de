from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from conflict_core.settings import Settings
from conflict_core.store import ConflictResolution, MonitoringRun, PredictionLog, SyncLog
from training import outcomes
from training.monitoring import AlertEvent

NOW = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
IN_WINDOW = NOW - dt.timedelta(hours=26)
MIN = dt.timedelta(minutes=1)


def prediction(
    pid: str,
    *,
    at: dt.datetime = IN_WINDOW,
    sync_id: str | None = None,
    predicted: bool = False,
    user: str = "u1",
    device: str = "d1",
    entity: str = "e1",
    probability: float | None = None,
    fallback: str | None = None,
    **extra: Any,
) -> PredictionLog:
    return PredictionLog(
        prediction_id=pid,
        model_version="v1",
        sync_id=sync_id,
        user_id=user,
        device_id=device,
        entity_type="task",
        entity_id=entity,
        predicted_conflict=predicted,
        probability=probability if probability is not None else (0.9 if predicted else 0.05),
        risk_level="high" if predicted else "low",
        recommendation="sync_now",
        features={},
        fallback_reason=fallback,
        created_at=at,
        **extra,
    )


def sync(
    event_id: str, at: dt.datetime, *, conflict: bool = False, user: str = "u1", device: str = "d1", entity: str = "e1"
) -> SyncLog:
    return SyncLog(
        event_id=event_id,
        user_id=user,
        device_id=device,
        entity_type="task",
        entity_id=entity,
        changed_fields=["status"],
        synced_at=at,
        conflict=conflict,
    )


def stored(factory: sessionmaker[Session]) -> dict[str, PredictionLog]:
    with factory() as session:
        return {p.prediction_id: p for p in session.scalars(select(PredictionLog))}


def link(factory: sessionmaker[Session], now: dt.datetime = NOW) -> outcomes.LinkCounts:
    with factory.begin() as session:
        return outcomes.link_outcomes(session, now=now)


def test_links_by_the_client_sync_id(session_factory: sessionmaker[Session]) -> None:
    with session_factory.begin() as session:
        # The sync id wins even though another sync of the same entity came earlier.
        session.add_all(
            [
                sync("other", IN_WINDOW + MIN),
                sync("ev-1", IN_WINDOW + 30 * MIN, conflict=True),
                prediction("p1", sync_id="ev-1", predicted=True),
            ]
        )
    counts = link(session_factory)
    p = stored(session_factory)["p1"]
    assert (counts.by_sync_id, counts.by_nearest, counts.no_sync) == (1, 0, 0)
    assert (p.outcome_status, p.linked_event_id, p.actual_conflict_occurred, p.prediction_correct) == (
        "sync_id",
        "ev-1",
        True,
        True,
    )
    assert p.outcome_at == NOW


def test_falls_back_to_the_nearest_sync_after_the_prediction(session_factory: sessionmaker[Session]) -> None:
    with session_factory.begin() as session:
        session.add_all(
            [
                sync("before", IN_WINDOW - MIN, conflict=True),
                sync("next", IN_WINDOW + 10 * MIN, conflict=False),
                sync("later", IN_WINDOW + 120 * MIN, conflict=True),
                sync("other-device", IN_WINDOW + 2 * MIN, conflict=True, device="d9"),
                sync("other-entity", IN_WINDOW + 2 * MIN, conflict=True, entity="e9"),
                prediction("no-id", predicted=True),
                prediction("unknown-id", sync_id="never-arrived", predicted=False),
            ]
        )
    counts = link(session_factory)
    rows = stored(session_factory)
    assert counts.by_nearest == 2
    for pid, correct in (("no-id", False), ("unknown-id", True)):
        p = rows[pid]
        assert (p.outcome_status, p.linked_event_id, p.actual_conflict_occurred, p.prediction_correct) == (
            "nearest",
            "next",
            False,
            correct,
        )


def test_conflict_known_only_from_a_resolution_counts(session_factory: sessionmaker[Session]) -> None:
    with session_factory.begin() as session:
        s = sync("ev-r", IN_WINDOW + MIN, conflict=False)
        session.add_all([s, prediction("p", sync_id="ev-r")])
        session.flush()
        session.add(ConflictResolution(sync_id=s.id, resolution_type="manual_merge", resolved_at=IN_WINDOW + 60 * MIN))
    link(session_factory)
    p = stored(session_factory)["p"]
    assert (p.actual_conflict_occurred, p.prediction_correct) == (True, False)


def test_a_prediction_without_a_sync_is_marked_no_sync_not_no_conflict(session_factory: sessionmaker[Session]) -> None:
    horizon = dt.timedelta(hours=24)
    with session_factory.begin() as session:
        session.add_all(
            [
                prediction("nothing", entity="lonely"),
                prediction("too-late", entity="slow"),
                sync("after-horizon", IN_WINDOW + horizon + MIN, entity="slow"),
            ]
        )
    counts = link(session_factory)
    assert counts.no_sync == 2 and counts.labelled == 0
    for p in stored(session_factory).values():
        assert (p.outcome_status, p.actual_conflict_occurred, p.prediction_correct, p.linked_event_id) == (
            "no_sync",
            None,
            None,
            None,
        )


def test_only_predictions_inside_the_age_window_are_touched(session_factory: sessionmaker[Session]) -> None:
    with session_factory.begin() as session:
        session.add_all(
            [
                prediction("young", at=NOW - dt.timedelta(hours=23, minutes=59)),
                prediction("edge-min", at=NOW - dt.timedelta(hours=24)),
                prediction("edge-max", at=NOW - dt.timedelta(hours=30)),
                prediction("old", at=NOW - dt.timedelta(hours=31)),
                prediction(
                    "done",
                    sync_id="x",
                    outcome_status="sync_id",
                    actual_conflict_occurred=True,
                    prediction_correct=False,
                    linked_event_id="x",
                ),
            ]
        )
    counts = link(session_factory)
    rows = stored(session_factory)
    assert counts.candidates == 1
    assert rows["edge-min"].outcome_status == "no_sync"
    assert rows["young"].outcome_status is None and rows["old"].outcome_status is None
    assert rows["edge-max"].outcome_status is None  # belonged to the previous run's slice
    assert (rows["done"].actual_conflict_occurred, rows["done"].outcome_at) == (True, None)


def test_age_window_is_configurable(session_factory: sessionmaker[Session]) -> None:
    with session_factory.begin() as session:
        session.add(prediction("p", at=NOW - dt.timedelta(hours=3)))
        session.add(sync("s", NOW - dt.timedelta(hours=2)))
    with session_factory.begin() as session:
        counts = outcomes.link_outcomes(session, now=NOW, min_age=dt.timedelta(hours=2), max_age=dt.timedelta(hours=4))
    assert counts.by_nearest == 1


def test_second_run_changes_nothing(session_factory: sessionmaker[Session]) -> None:
    with session_factory.begin() as session:
        session.add_all(
            [
                sync("ev-1", IN_WINDOW + MIN, conflict=True),
                prediction("a", sync_id="ev-1", predicted=True),
                prediction("b", entity="lonely"),
            ]
        )
    link(session_factory)
    first = {
        k: (p.outcome_status, p.actual_conflict_occurred, p.prediction_correct, p.outcome_at)
        for k, p in stored(session_factory).items()
    }
    again = link(session_factory, now=NOW + dt.timedelta(minutes=5))
    second = {
        k: (p.outcome_status, p.actual_conflict_occurred, p.prediction_correct, p.outcome_at)
        for k, p in stored(session_factory).items()
    }
    assert again.updated == 0 and again.candidates == 0
    assert first == second


def test_bulk_linking_of_thousands(session_factory: sessionmaker[Session]) -> None:
    n = 3000
    with session_factory.begin() as session:
        session.add_all(
            sync(f"s{i}", IN_WINDOW + MIN, conflict=i % 10 == 0, entity=f"e{i}", user=f"u{i % 300}") for i in range(n)
        )
        session.add_all(
            prediction(f"p{i}", sync_id=f"s{i}" if i % 2 else None, entity=f"e{i}", user=f"u{i % 300}")
            for i in range(n)
        )
    counts = link(session_factory)
    assert (counts.by_sync_id, counts.by_nearest, counts.conflicts) == (n // 2, n // 2, n // 10)


def test_track_outcomes_stores_a_monitoring_run(tmp_path, session_factory: sessionmaker[Session]) -> None:
    engine_url = str(session_factory.kw["bind"].url.render_as_string(hide_password=False))
    settings = Settings(database_url=engine_url, data_dir=tmp_path, alert_min_labelled=10)
    with session_factory.begin() as session:
        # 12 labelled predictions, all wrong: accuracy 0 over at least alert_min_labelled.
        for i in range(12):
            session.add(sync(f"s{i}", IN_WINDOW + MIN, conflict=True, entity=f"e{i}"))
            session.add(prediction(f"p{i}", sync_id=f"s{i}", entity=f"e{i}"))
        session.add(prediction("ghost", entity="none"))
    events: list[AlertEvent] = []

    def collect(event: AlertEvent) -> bool:
        events.append(event)
        return True

    summary = outcomes.track_outcomes(settings, session_factory, now=NOW, notify=collect)
    assert (summary.updated, summary.labelled, summary.no_sync) == (13, 12, 1)
    assert summary.metrics["accuracy"] == 0.0 and summary.metrics["labelled"] == 12
    assert "accuracy_low" in summary.alerts_fired
    with session_factory() as session:
        run = session.scalars(select(MonitoringRun)).one()
    assert (run.updated_count, run.labelled_count, run.ran_at) == (13, 12, NOW)
    assert run.metrics["linking"]["no_sync"] == 1 and "accuracy_low" in run.alerts

    repeat = outcomes.track_outcomes(settings, session_factory, now=NOW + dt.timedelta(minutes=1), notify=collect)
    assert repeat.updated == 0 and repeat.alerts_fired == [] and "accuracy_low" in repeat.alerts_firing
    assert [e.name for e in events if e.state == "firing"].count("accuracy_low") == 1


@pytest.mark.parametrize("bad", [(24, 24), (30, 24)])
def test_refuses_an_empty_age_window(session_factory: sessionmaker[Session], bad: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="min_age"), session_factory.begin() as session:
        outcomes.link_outcomes(session, now=NOW, min_age=dt.timedelta(hours=bad[0]), max_age=dt.timedelta(hours=bad[1]))
