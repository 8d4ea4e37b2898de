"""Sync-event ingest without HTTP: what is stored, what is skipped as already there, the record
and column a mistake names, and the answer when the store is down."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from conflict_core.events.store_reads import load_events
from conflict_core.store import make_engine, make_session_factory
from serve_app.ingest import ingest_sync_events
from serve_app.schemas import RequestError

START = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)


def _event(i: int, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": f"ev-{i}",
        "user_id": "u1",
        "device_id": "d1",
        "entity_type": "task",
        "entity_id": "t1",
        "changed_fields": ["status"],
        "synced_at": (START + dt.timedelta(minutes=i)).isoformat(),
        "conflict": False,
        **fields,
    }


def _ingest(events: list[dict[str, Any]], sessions: sessionmaker[Session]) -> tuple[int, dict[str, Any]]:
    response = asyncio.run(ingest_sync_events(events, sessions, max_events=10))
    return response.status_code, json.loads(bytes(response.body))


def test_events_are_stored_once(database_url: str, session_factory: sessionmaker[Session]) -> None:
    first = _ingest([_event(0), _event(1)], session_factory)
    assert first == (200, {"received": 2, "inserted": 2, "skipped_existing": 0})
    again = _ingest([_event(1), _event(2)], session_factory)
    assert again == (200, {"received": 2, "inserted": 1, "skipped_existing": 1})
    assert sorted(load_events(make_engine(database_url))["event_id"]) == ["ev-0", "ev-1", "ev-2"]


def test_a_mistake_names_the_record_and_column_and_stores_nothing(
    database_url: str, session_factory: sessionmaker[Session]
) -> None:
    resolved_without_conflict = _event(1, resolved_at=START.isoformat())
    with pytest.raises(RequestError) as raised:
        _ingest([_event(0), resolved_without_conflict], session_factory)
    assert (raised.value.status, raised.value.field) == (422, "events[1].resolved_at")
    assert "conflict is not true" in raised.value.problem
    assert load_events(make_engine(database_url)).empty  # all or nothing


def test_a_store_that_is_down_is_a_503_saying_so() -> None:
    down = make_session_factory(make_engine("postgresql+psycopg://postgres@127.0.0.1:9/none"))
    status, body = _ingest([_event(0)], down)
    assert (status, body["error"]) == (503, "store_unavailable")
