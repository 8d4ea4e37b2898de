from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow.dataset as ds
from sqlalchemy.orm import Session, sessionmaker

from conflict_core.events.export import export_events
from conflict_core.events.store_writes import import_events
from conflict_core.schema import EVENT_SCHEMA
from tests.conflict_core.events.event_files import (
    DAY2,
    DAY3,
    _engine,
    _event,
    _events,
    _write_parquet,
)

# --------------------------------------------------------------------------- export and load


def test_export_partitions_by_utc_day_and_filters(session_factory: sessionmaker[Session], tmp_path: Path) -> None:
    import_events(session_factory, _write_parquet(tmp_path / "events.parquet", _events(12)))
    engine = _engine(session_factory)
    out = tmp_path / "export"

    # Events run 09:00 + 4h*n from DAY1, i.e. 4 on DAY1, 6 on DAY2, 2 on DAY3.
    everything = export_events(engine, out)
    assert everything.partitions == ["date=2026-01-05", "date=2026-01-06", "date=2026-01-07"]
    assert sorted(p.name for p in out.iterdir()) == everything.partitions
    assert all(len(list((out / p).glob("part-*.parquet"))) == 1 for p in everything.partitions)
    day2 = ds.dataset(out / "date=2026-01-06").to_table()
    assert day2.num_rows == 6 and day2.schema.names == EVENT_SCHEMA.names

    # A bound inside a day widens to the whole day, since partitions are replaced whole.
    ranged = export_events(engine, tmp_path / "ranged", since=DAY2 + dt.timedelta(hours=12), until=DAY3)
    assert (ranged.partitions, ranged.rows) == (["date=2026-01-06"], 6)

    dataset = ds.dataset(out, partitioning="hive")
    assert dataset.to_table().num_rows == 12
    assert not list(tmp_path.glob(".export*")) and not list(tmp_path.glob(".*export-*"))


def test_reexport_replaces_only_the_exported_days(session_factory: sessionmaker[Session], tmp_path: Path) -> None:
    import_events(session_factory, _write_parquet(tmp_path / "events.parquet", _events(12)))
    engine = _engine(session_factory)
    out = tmp_path / "export"
    export_events(engine, out)
    day1_file = next((out / "date=2026-01-05").glob("*.parquet"))
    day1_before = day1_file.read_bytes()

    late = _event(
        99,
        synced_at=DAY2 + dt.timedelta(hours=23),
        conflict=False,
        resolution_type=None,
        resolved_at=None,
    )
    import_events(session_factory, _write_parquet(tmp_path / "late.parquet", [late]))
    again = export_events(engine, out, since=DAY2, until=DAY3)

    assert again.partitions == ["date=2026-01-06"] and again.rows == 7
    assert ds.dataset(out / "date=2026-01-06").to_table().num_rows == 7
    assert day1_file.read_bytes() == day1_before
    assert ds.dataset(out, partitioning="hive").to_table().num_rows == 13
