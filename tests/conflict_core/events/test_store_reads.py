from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from conflict_core.events.store_reads import load_events, tail_events
from conflict_core.events.store_writes import import_events
from conflict_core.schema import EVENT_SCHEMA
from tests.conflict_core.events.event_files import (
    DAY1,
    DAY2,
    DAY3,
    _engine,
    _event,
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


def test_tail_events_returns_exactly_what_was_stored(session_factory: sessionmaker[Session], tmp_path: Path) -> None:
    """Driver values decoded in bulk give the stored events back unchanged, on either store:
    field names that need JSON escaping, empty field lists, whole and fractional seconds,
    resolutions present and absent, versions absent."""
    odd_fields = [['quote"d', "back\\slash"], ["naïve", "日付"], [], ["a,b", "[x]"]]
    events = [
        _event(n, changed_fields=odd_fields[n % 4], base_version=None if n == 5 else n)
        | ({"synced_at": DAY1 + dt.timedelta(hours=n, microseconds=123_456)} if n % 2 else {})
        for n in range(8)
    ]
    import_events(session_factory, _write_parquet(tmp_path / "events.parquet", events))

    table = tail_events(_engine(session_factory), after_id=0)
    assert table.schema.names == ["row_id", *EVENT_SCHEMA.names]
    assert table.drop(["row_id"]).cast(EVENT_SCHEMA).to_pylist() == events
    assert table.column("row_id").to_pylist() == sorted(table.column("row_id").to_pylist())

    some = tail_events(_engine(session_factory), after_id=0, columns=["entity_id", "changed_fields", "resolved_at"])
    assert some.schema.names == ["row_id", "entity_id", "changed_fields", "resolved_at"]
    assert some.drop(["row_id"]).to_pylist() == [
        {k: e[k] for k in ("entity_id", "changed_fields", "resolved_at")} for e in events
    ]
