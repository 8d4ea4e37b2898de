"""The event window without Ray: tailing the store in ingest order (ids committed out of
order included), compaction past the lookback, and an empty store."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
from sqlalchemy import insert

from conflict_core import db
from conflict_core.features import FeatureParams
from conflict_core.store import SyncLog, make_engine, session_scope
from serve_app.event_window import EventWindow
from serve_app.feature_lookup import OnlineFeatureLookup
from tests.serve_app.sync_history import NOW, events, store_with


def test_ids_committed_out_of_order_are_picked_up(sqlite_url: str) -> None:
    factory = store_with(sqlite_url, events(10))
    window = EventWindow(make_engine(sqlite_url), FeatureParams().lookback.to_pytimedelta())
    assert window.refresh() == 10

    def row(row_id: int) -> dict[str, Any]:
        return {
            "id": row_id,
            "event_id": f"manual-{row_id}",
            "user_id": "u1",
            "device_id": "d",
            "entity_type": "task",
            "entity_id": "e1",
            "changed_fields": [f"field-{row_id}"],
            "synced_at": NOW,
            "conflict": False,
        }

    with session_scope(factory) as session:
        session.execute(insert(SyncLog), [row(13)])
    assert window.refresh() == 1
    with session_scope(factory) as session:  # a transaction that took an id earlier, committed later
        session.execute(insert(SyncLog), [row(11)])
    assert window.refresh() == 1
    assert window.refresh() == 0
    fields = window.history(["u1"], []).column("changed_fields").to_pylist()
    assert fields[-2:] == [["field-13"], ["field-11"]]  # in ingest order


def test_compaction_drops_events_older_than_the_lookback(sqlite_url: str) -> None:
    store_with(sqlite_url, events(400, span_days=20))
    window = EventWindow(make_engine(sqlite_url), dt.timedelta(days=30), compact_min_rows=0)
    # Refreshed as of the history's own NOW: the cutoff is then exactly NOW - lookback, however
    # long ago the module (and NOW) was imported.
    window.refresh(NOW)
    assert window.rows == 400
    users = [f"u{i}" for i in range(6)]
    before = window.history(users, [])
    window.lookback = dt.timedelta(days=10)  # as if twenty days had passed
    window.refresh(NOW)
    assert 0 < window.rows < 400
    kept = window.history(users, [])
    cutoff = pd.Timestamp(NOW - dt.timedelta(days=10))
    assert kept.num_rows == (before.column("synced_at").to_pandas() >= cutoff).sum()
    assert window.refresh(NOW) == 0  # the dropped rows are not loaded again


def test_refreshing_an_empty_window_reports_no_error(tmp_path: Any) -> None:
    """An app started on an empty store keeps refreshing without an error (was a TypeError
    from the compaction check's sum over zero rows, logged at every refresh)."""
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    db.upgrade(url)
    window = EventWindow(make_engine(url), dt.timedelta(days=30), compact_min_rows=0)
    assert window.refresh() == 0
    assert window.refresh() == 0
    lookup = OnlineFeatureLookup(url, refresh_interval_s=0)
    try:
        item = {"user_id": "u1", "entity_type": "task", "entity_id": "t1", "changed_fields": ["title"]}
        lookup.compute([item])
        assert lookup.status()["last_error"] is None
    finally:
        lookup.close()
