from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from conflict_core.events.store_reads import load_events
from conflict_core.events.store_writes import import_events
from conflict_core.schema import EVENT_SCHEMA
from tests.conflict_core.events.event_files import (
    DAY2,
    DAY3,
    _engine,
    _events,
    _write_parquet,
)


def test_load_events_filters_by_user_entity_and_time(session_factory: sessionmaker[Session], tmp_path: Path) -> None:
    import_events(session_factory, _write_parquet(tmp_path / "events.parquet", _events(12)))
    engine = _engine(session_factory)

    by_user = load_events(engine, user_ids=["u1"])
    assert set(by_user["user_id"]) == {"u1"} and len(by_user) == 6
    assert by_user["synced_at"].is_monotonic_increasing
    assert str(by_user["synced_at"].dt.tz) == "UTC"

    by_entity = load_events(engine, entity_keys=[("task", "e0")], since=DAY2)
    assert by_entity["event_id"].tolist() == ["evt-006", "evt-009"]

    both = load_events(engine, user_ids=["u1"], entity_keys=[("task", "e0")])
    expected = sorted(f"evt-{n:03d}" for n in range(12) if n % 2 == 1 or n % 3 == 0)
    assert sorted(both["event_id"]) == expected  # the union, each event once

    window = load_events(engine, since=DAY2, until=DAY3)
    assert len(window) == 6
    assert load_events(engine, user_ids=["nobody"]).columns.tolist() == EVENT_SCHEMA.names
    assert load_events(engine, user_ids=["nobody"]).empty
