from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from conflict_core.errors import ImportFormatError
from conflict_core.events_io import (
    export_events,
    import_events,
    insert_event_frame,
    load_events,
    read_event_table,
    validate_records,
)
from conflict_core.schema import EVENT_SCHEMA
from conflict_core.store import ConflictResolution, SyncLog

DAY1 = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
DAY2 = DAY1 + dt.timedelta(days=1)
DAY3 = DAY2 + dt.timedelta(days=1)


def _event(n: int, **overrides: Any) -> dict[str, Any]:
    """Event n: users u0/u1, entities task/e0..e2, one hour apart from DAY1 09:00 UTC."""
    event: dict[str, Any] = {
        "event_id": f"evt-{n:03d}",
        "user_id": f"u{n % 2}",
        "device_id": f"d{n % 3}",
        "entity_type": "task",
        "entity_id": f"e{n % 3}",
        "changed_fields": ["title", "status"] if n % 2 else ["status"],
        "synced_at": DAY1 + dt.timedelta(hours=9 + 4 * n),
        "conflict": n % 3 == 0,
        "resolution_type": None,
        "resolved_at": None,
        "base_version": n,
        "server_version": n + (n % 3 == 0),
    }
    if event["conflict"] and n % 2 == 0:
        event["resolution_type"] = "server_wins"
        event["resolved_at"] = event["synced_at"] + dt.timedelta(minutes=5)
    event.update(overrides)
    return event


def _events(count: int = 8) -> list[dict[str, Any]]:
    return [_event(n) for n in range(count)]


def _write_parquet(path: Path, events: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(events, schema=EVENT_SCHEMA), path)
    return path


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return json.dumps(value)
    if isinstance(value, dt.datetime):
        return value.isoformat().replace("+00:00", "Z")
    return str(value)


def _write_csv(path: Path, events: list[dict[str, Any]]) -> Path:
    header = list(events[0])
    lines = [",".join(header)]
    for event in events:
        cells = [_csv_cell(event[name]) for name in header]
        lines.append(",".join('"' + cell.replace('"', '""') + '"' for cell in cells))
    path.write_text("\n".join(lines) + "\n")
    return path


def _engine(factory: sessionmaker[Session]) -> Engine:
    bind = factory.kw["bind"]
    assert isinstance(bind, Engine)
    return bind


def _counts(factory: sessionmaker[Session]) -> tuple[int, int]:
    with factory() as session:
        syncs = session.scalar(select(func.count()).select_from(SyncLog))
        resolutions = session.scalar(select(func.count()).select_from(ConflictResolution))
    return int(syncs or 0), int(resolutions or 0)


def _expected_frame(events: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(events, columns=EVENT_SCHEMA.names)
    for column in ("synced_at", "resolved_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True).dt.as_unit("us")
    frame["resolution_type"] = frame["resolution_type"].astype(object)
    return frame.sort_values("event_id", ignore_index=True)


def _normalized(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame[EVENT_SCHEMA.names].sort_values("event_id", ignore_index=True)
    frame["changed_fields"] = frame["changed_fields"].map(list)
    frame["base_version"] = frame["base_version"].astype("int64")
    frame["server_version"] = frame["server_version"].astype("int64")
    for column in (
        "event_id",
        "user_id",
        "device_id",
        "entity_type",
        "entity_id",
        "resolution_type",
    ):
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return frame


# --------------------------------------------------------------------------- import


def test_parquet_round_trip_through_store_and_export(session_factory: sessionmaker[Session], tmp_path: Path) -> None:
    events = _events()
    source = _write_parquet(tmp_path / "events.parquet", events)

    result = import_events(session_factory, source, chunk_rows=3)
    assert (result.rows_read, result.inserted, result.skipped_existing) == (8, 8, 0)
    assert _counts(session_factory) == (8, 2)

    exported = export_events(_engine(session_factory), tmp_path / "out")
    assert exported.rows == 8
    table = ds.dataset(tmp_path / "out", partitioning="hive").to_table()
    assert table.schema.field("synced_at").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("changed_fields").type == pa.list_(pa.string())
    pd.testing.assert_frame_equal(_normalized(table.to_pandas()), _normalized(_expected_frame(events)))


def test_csv_import_parses_json_arrays_offsets_and_numeric_booleans(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    source = tmp_path / "events.csv"
    source.write_text(
        "event_id,user_id,device_id,entity_type,entity_id,changed_fields,synced_at,conflict,"
        "resolution_type,resolved_at,base_version,server_version\n"
        'a,u1,d1,task,e1,"[""title"", ""due_date""]",2026-01-05T11:30:00+02:00,1,'
        "client_wins,2026-01-05T10:00:00Z,3,4\n"
        "b,u1,d1,task,e1,[],2026-01-05T09:31:00.250Z,FALSE,,,,\n"
    )
    assert import_events(session_factory, source).inserted == 2

    frame = load_events(_engine(session_factory))
    assert frame["changed_fields"].tolist() == [["title", "due_date"], []]
    assert frame["synced_at"].tolist() == [
        pd.Timestamp("2026-01-05T09:30:00Z"),
        pd.Timestamp("2026-01-05T09:31:00.250Z"),
    ]
    assert frame["conflict"].tolist() == [True, False]
    assert frame["resolution_type"].iloc[0] == "client_wins"
    assert frame["resolution_type"].isna().tolist() == [False, True]
    assert frame["base_version"].isna().tolist() == [False, True]


def test_import_is_idempotent(session_factory: sessionmaker[Session], tmp_path: Path) -> None:
    source = _write_parquet(tmp_path / "events.parquet", _events())
    import_events(session_factory, source)
    before = load_events(_engine(session_factory))

    again = import_events(session_factory, source, chunk_rows=3)

    assert (again.rows_read, again.inserted, again.skipped_existing) == (8, 0, 8)
    assert _counts(session_factory) == (8, 2)
    pd.testing.assert_frame_equal(load_events(_engine(session_factory)), before)


def test_existing_events_are_skipped_not_changed(session_factory: sessionmaker[Session], tmp_path: Path) -> None:
    import_events(session_factory, _write_parquet(tmp_path / "first.parquet", _events(3)))
    changed = [_event(0, user_id="someone-else"), _event(3)]
    result = import_events(session_factory, _write_parquet(tmp_path / "second.parquet", changed))

    assert (result.inserted, result.skipped_existing) == (1, 1)
    frame = load_events(_engine(session_factory))
    assert frame.loc[frame["event_id"] == "evt-000", "user_id"].item() == "u0"


def test_missing_resolution_type_defaults_to_unspecified(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    event = _event(0, resolution_type=None, resolved_at=DAY1 + dt.timedelta(hours=10))
    import_events(session_factory, _write_parquet(tmp_path / "events.parquet", [event]))
    assert load_events(_engine(session_factory))["resolution_type"].tolist() == ["unspecified"]


def test_extra_columns_are_ignored(session_factory: sessionmaker[Session], tmp_path: Path) -> None:
    events = [{**event, "app_version": "3.1.4", "note": "x"} for event in _events(3)]
    source = _write_csv(tmp_path / "events.csv", events)
    assert import_events(session_factory, source).inserted == 3
    assert list(load_events(_engine(session_factory)).columns) == EVENT_SCHEMA.names


def _bad_cell(column: str, value: Any) -> Any:
    def mutate(events: list[dict[str, Any]]) -> None:
        events[6][column] = value

    return mutate


def _duplicate_id(events: list[dict[str, Any]]) -> None:
    events[6]["event_id"] = events[1]["event_id"]


def _resolved_too_early(events: list[dict[str, Any]]) -> None:
    events[6]["resolved_at"] = "2026-01-01T00:00:00Z"


# Row 7 (event 6, a resolved conflict) sits in the fourth chunk of two rows, after three
# chunks validated cleanly.
ERROR_CASES = {
    "bad timestamp": (_bad_cell("synced_at", "2026-13-45T25:00:00Z"), "synced_at", "ISO 8601"),
    "naive timestamp": (_bad_cell("synced_at", "2026-01-05T10:00:00"), "synced_at", "UTC offset"),
    "bad changed_fields": (
        _bad_cell("changed_fields", "title,status"),
        "changed_fields",
        "JSON array",
    ),
    "non-string field": (_bad_cell("changed_fields", "[1]"), "changed_fields", "JSON array"),
    "bad bool": (_bad_cell("conflict", "maybe"), "conflict", "not a boolean"),
    "timestamp before 1970": (_bad_cell("synced_at", "1969-12-31T23:59:59Z"), "synced_at", "is outside 1970-01-01"),
    "timestamp past year 1 in UTC": (
        _bad_cell("synced_at", "0001-01-01T00:30:00+01:00"),
        "synced_at",
        "is outside 1970-01-01",
    ),
    "NUL in text": (_bad_cell("user_id", "u\x00"), "user_id", "NUL character"),
    "empty event id": (_bad_cell("event_id", ""), "event_id", "missing or empty"),
    "bad version": (_bad_cell("base_version", "3.5"), "base_version", "not an integer"),
    "duplicate event id": (_duplicate_id, "event_id", "more than once"),
    "resolved before synced": (_resolved_too_early, "resolved_at", "before synced_at"),
    "resolution without conflict": (
        _bad_cell("conflict", False),
        "resolved_at",
        "conflict is not true",
    ),
    "resolution type without time": (_bad_cell("resolved_at", None), "resolved_at", "is missing"),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_invalid_cell_names_file_row_and_column_and_imports_nothing(
    session_factory: sessionmaker[Session], tmp_path: Path, case: str
) -> None:
    import_events(session_factory, _write_parquet(tmp_path / "existing.parquet", _events(2)))
    before = _counts(session_factory)
    mutate, column, problem = ERROR_CASES[case]
    events = [{**event, "event_id": f"new-{n}"} for n, event in enumerate(_events(10))]
    mutate(events)
    source = _write_csv(tmp_path / "bad.csv", events)

    with pytest.raises(ImportFormatError) as caught:
        import_events(session_factory, source, chunk_rows=2)

    error = caught.value
    assert (error.path, error.row, error.column) == (str(source), 7, column)
    assert str(source) in str(error) and "row 7" in str(error) and repr(column) in str(error)
    assert problem in error.problem
    assert _counts(session_factory) == before


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


# --------------------------------------------------------------------------- JSON records


def test_validate_records_matches_file_validation() -> None:
    records = [{**_event(n), "synced_at": _event(n)["synced_at"].isoformat(), "resolved_at": None} for n in range(3)]
    records[0]["resolution_type"] = None
    table = validate_records(records, source="POST /v1/sync-events")
    assert table.schema == EVENT_SCHEMA
    assert table.column("changed_fields").to_pylist()[1] == ["title", "status"]

    records[2]["conflict"] = "perhaps"
    with pytest.raises(ImportFormatError) as caught:
        validate_records(records, source="POST /v1/sync-events")
    assert (caught.value.path, caught.value.row, caught.value.column) == (
        "POST /v1/sync-events",
        3,
        "conflict",
    )


def test_validate_records_refuses_non_string_ids() -> None:
    with pytest.raises(ImportFormatError) as caught:
        validate_records([_event(0, user_id=42)], source="body")
    assert (caught.value.row, caught.value.column) == (1, "user_id")


@pytest.mark.parametrize(("column", "value"), [("entity_id", "t\ud800"), ("changed_fields", ["title", "\udfff"])])
def test_validate_records_refuses_text_that_is_not_unicode(column: str, value: Any) -> None:
    """A lone surrogate (valid in JSON as an escape) is named as a client error, not a crash."""
    records = [_event(0), {**_event(1), column: value}]
    with pytest.raises(ImportFormatError) as caught:
        validate_records([{**r, "synced_at": r["synced_at"].isoformat()} for r in records], source="body")
    assert (caught.value.row, caught.value.column) == (2, column)
    assert "Unicode" in caught.value.problem


def test_insert_event_frame_from_pandas(session_factory: sessionmaker[Session]) -> None:
    frame = pd.DataFrame(_events(4))
    frame["synced_at"] = pd.to_datetime(frame["synced_at"], utc=True)
    frame["resolved_at"] = pd.to_datetime(frame["resolved_at"], utc=True)
    with session_factory.begin() as session:
        assert insert_event_frame(session, frame) == (4, 0)
    with session_factory.begin() as session:
        assert insert_event_frame(session, frame) == (0, 4)
    assert _counts(session_factory) == (4, 1)


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
