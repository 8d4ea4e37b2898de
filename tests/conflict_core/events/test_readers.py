from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy.orm import Session, sessionmaker

from conflict_core.errors import ImportFormatError
from conflict_core.events.readers import read_event_table
from conflict_core.events.store_writes import import_events
from conflict_core.schema import EVENT_SCHEMA
from tests.conflict_core.events.event_files import (
    _counts,
    _events,
)


def test_missing_required_column_names_file_and_column(session_factory: sessionmaker[Session], tmp_path: Path) -> None:
    table = pa.Table.from_pylist(_events(3), schema=EVENT_SCHEMA).drop_columns(["device_id"])
    source = tmp_path / "events.parquet"
    pq.write_table(table, source)

    with pytest.raises(ImportFormatError, match="device_id") as caught:
        import_events(session_factory, source)

    assert (caught.value.path, caught.value.row, caught.value.column) == (
        str(source),
        None,
        "device_id",
    )
    assert _counts(session_factory) == (0, 0)


def test_unknown_extension_is_refused(session_factory: sessionmaker[Session], tmp_path: Path) -> None:
    source = tmp_path / "events.json"
    source.write_text("[]")
    with pytest.raises(ImportFormatError, match=r"events\.json.*extension '\.json'"):
        import_events(session_factory, source)
    assert _counts(session_factory) == (0, 0)


def test_naive_parquet_timestamps_are_refused(tmp_path: Path) -> None:
    table = pa.Table.from_pylist(_events(2), schema=EVENT_SCHEMA)
    naive = table.set_column(6, "synced_at", table.column("synced_at").cast(pa.timestamp("us")))
    pq.write_table(naive, tmp_path / "naive.parquet")
    with pytest.raises(ImportFormatError, match="no time zone") as caught:
        read_event_table(tmp_path / "naive.parquet")
    assert (caught.value.row, caught.value.column) == (1, "synced_at")
