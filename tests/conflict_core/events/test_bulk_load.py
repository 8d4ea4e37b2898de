"""Moving large batches with ``sync_log``'s secondary indexes dropped and rebuilt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import inspect
from sqlalchemy.orm import Session, sessionmaker

from conflict_core.events import bulk_load
from conflict_core.events.store_reads import load_events
from conflict_core.events.store_writes import import_events
from tests.conflict_core.events.event_files import _counts, _engine, _event, _events, _write_parquet


def _store_layout(factory: sessionmaker[Session]) -> dict[str, Any]:
    """Every index, unique constraint and key of the two event tables, as the database reports them."""
    inspector = inspect(_engine(factory))
    layout: dict[str, Any] = {}
    for table in ("sync_log", "conflict_resolution"):
        layout[table] = {
            "indexes": sorted(
                (index["name"], tuple(index["column_names"]), index["unique"]) for index in inspector.get_indexes(table)
            ),
            "unique": sorted((c["name"], tuple(c["column_names"])) for c in inspector.get_unique_constraints(table)),
            "primary": inspector.get_pk_constraint(table)["constrained_columns"],
            "foreign": [(fk["constrained_columns"], fk["referred_table"]) for fk in inspector.get_foreign_keys(table)],
        }
    return layout


def _recorded_rebuilds(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The index names each rebuild recreated, as imports run."""
    rebuilds: list[list[str]] = []
    recreate = bulk_load._recreate

    def recording(cursor: Any, indexes: Any) -> None:
        indexes = list(indexes)
        recreate(cursor, indexes)
        if indexes:
            rebuilds.append(sorted(index.name for index in indexes))

    monkeypatch.setattr(bulk_load, "_recreate", recording)
    return rebuilds


@pytest.mark.parametrize("rebuild", [True, False], ids=["rebuilt", "maintained"])
def test_both_paths_skip_stored_events_and_attach_only_new_resolutions(
    session_factory: sessionmaker[Session], tmp_path: Path, rebuild: bool
) -> None:
    unresolved = _event(0, resolution_type=None, resolved_at=None)
    import_events(session_factory, _write_parquet(tmp_path / "first.parquet", [unresolved, _event(1)]))
    layout = _store_layout(session_factory)

    # evt-000 comes again with a resolution: stored events stay as they are.
    result = import_events(
        session_factory, _write_parquet(tmp_path / "all.parquet", _events(8)), rebuild_indexes=rebuild
    )

    assert (result.rows_read, result.inserted, result.skipped_existing) == (8, 6, 2)
    stored = load_events(_engine(session_factory)).set_index("event_id")
    assert pd.isna(stored.loc["evt-000", "resolution_type"])
    assert stored.loc["evt-006", "resolution_type"] == "server_wins"
    assert _counts(session_factory) == (8, 1)
    assert _store_layout(session_factory) == layout
    # The rebuilt indexes serve the next import's duplicate check.
    assert import_events(session_factory, tmp_path / "all.parquet", rebuild_indexes=rebuild).inserted == 0


def test_a_late_error_while_rebuilding_leaves_table_and_indexes_as_they_were(
    session_factory: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import_events(session_factory, _write_parquet(tmp_path / "first.parquet", _events(3)))
    layout, before = _store_layout(session_factory), load_events(_engine(session_factory))

    def fail_after_the_first_index(cursor: Any, indexes: Any) -> None:
        first, *_ = indexes
        cursor.execute(first.create)
        raise RuntimeError("interrupted while rebuilding the indexes")

    monkeypatch.setattr(bulk_load, "_recreate", fail_after_the_first_index)
    more = [_event(n) for n in range(3, 9)]
    with pytest.raises(RuntimeError, match="rebuilding"):
        import_events(session_factory, _write_parquet(tmp_path / "more.parquet", more), rebuild_indexes=True)

    assert _store_layout(session_factory) == layout
    pd.testing.assert_frame_equal(load_events(_engine(session_factory)), before)
    monkeypatch.undo()
    assert import_events(session_factory, tmp_path / "more.parquet").inserted == 6
    assert _counts(session_factory) == (9, 2)


def test_rebuild_is_chosen_by_the_new_events_against_the_stored_ones(
    session_factory: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk_load, "INDEX_REBUILD_MIN_ROWS", 3)
    rebuilds = _recorded_rebuilds(monkeypatch)

    import_events(session_factory, _write_parquet(tmp_path / "first.parquet", _events(3)))  # into an empty table
    assert len(rebuilds) == 1 and {"ix_sync_log_user_time", "ix_sync_log_entity_time"} <= set(rebuilds[0])

    import_events(session_factory, tmp_path / "first.parquet")  # nothing new: maintained
    import_events(session_factory, _write_parquet(tmp_path / "two.parquet", [_event(3), _event(4)]))  # too few
    assert len(rebuilds) == 1

    # 3 new events next to 5 stored (at most twice as many): rebuilt; the 3 old ones do not count.
    batch = [_event(n) for n in range(2, 8)]
    assert import_events(session_factory, _write_parquet(tmp_path / "batch.parquet", batch)).inserted == 3
    assert len(rebuilds) == 2
    assert _counts(session_factory) == (8, 2)
