from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from sqlalchemy.orm import Session, sessionmaker

from conflict_core.errors import ImportFormatError
from conflict_core.events.export import export_events
from conflict_core.events.store_reads import load_events
from conflict_core.events.store_writes import import_events, insert_event_frame
from conflict_core.schema import EVENT_SCHEMA
from tests.conflict_core.events.event_files import (
    DAY1,
    _counts,
    _engine,
    _event,
    _events,
    _expected_frame,
    _normalized,
    _write_csv,
    _write_parquet,
)

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


def test_insert_event_frame_from_pandas(session_factory: sessionmaker[Session]) -> None:
    frame = pd.DataFrame(_events(4))
    frame["synced_at"] = pd.to_datetime(frame["synced_at"], utc=True)
    frame["resolved_at"] = pd.to_datetime(frame["resolved_at"], utc=True)
    with session_factory.begin() as session:
        assert insert_event_frame(session, frame) == (4, 0)
    with session_factory.begin() as session:
        assert insert_event_frame(session, frame) == (0, 4)
    assert _counts(session_factory) == (4, 1)


# --------------------------------------------------------------------------- exports as they come

LONG_ID = "s3://exports/tenant-7/" + "branch/" * 70  # 512 characters


def test_empty_strings_in_optional_columns_mean_absent(session_factory: sessionmaker[Session], tmp_path: Path) -> None:
    events = _events(6)
    for event in events:  # the way exports write "no resolution" and "no version"
        if event["resolved_at"] is None:
            event["resolution_type"], event["resolved_at"] = "", ""
        event["server_version"] = "  "
    frame = pd.DataFrame(events)
    frame["resolved_at"] = [value if value == "" else value.isoformat() for value in frame["resolved_at"]]
    frame["resolution_type"] = frame["resolution_type"].astype("category")  # a dictionary column
    source = tmp_path / "export.parquet"
    frame.to_parquet(source)

    assert import_events(session_factory, source).inserted == 6
    stored = load_events(_engine(session_factory)).sort_values("event_id")
    assert stored["resolution_type"].fillna("absent").tolist() == [
        "server_wins" if event["resolved_at"] else "absent" for event in _events(6)
    ]
    assert stored["server_version"].isna().all()


def test_whitespace_csv_cells_in_optional_columns_mean_absent(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    events = [_event(1, resolution_type=" ", resolved_at=" ", base_version=" ")]
    assert import_events(session_factory, _write_csv(tmp_path / "events.csv", events)).inserted == 1
    assert load_events(_engine(session_factory))["base_version"].isna().all()


def test_an_empty_required_cell_is_still_an_error(session_factory: sessionmaker[Session], tmp_path: Path) -> None:
    source = _write_csv(tmp_path / "events.csv", [_event(0), _event(1, user_id="")])
    with pytest.raises(ImportFormatError) as caught:
        import_events(session_factory, source)
    assert (caught.value.row, caught.value.column) == (2, "user_id")
    assert _counts(session_factory) == (0, 0)


def test_identifiers_up_to_512_characters_and_entity_types_up_to_128(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    assert len(LONG_ID) == 512
    event = _event(0, event_id=LONG_ID, user_id=LONG_ID, device_id=LONG_ID, entity_id=LONG_ID, entity_type="t" * 128)
    assert import_events(session_factory, _write_parquet(tmp_path / "long.parquet", [event])).inserted == 1
    stored = load_events(_engine(session_factory)).iloc[0]
    assert (stored["event_id"], stored["entity_id"], stored["entity_type"]) == (LONG_ID, LONG_ID, "t" * 128)


@pytest.mark.parametrize(
    ("column", "value", "limit"), [("entity_id", LONG_ID + "x", 512), ("entity_type", "t" * 129, 128)]
)
def test_identifiers_beyond_the_store_are_refused_by_row(
    session_factory: sessionmaker[Session], tmp_path: Path, column: str, value: str, limit: int
) -> None:
    source = _write_csv(tmp_path / "events.csv", [_event(0), _event(1, **{column: value})])
    with pytest.raises(ImportFormatError) as caught:
        import_events(session_factory, source)
    assert (caught.value.row, caught.value.column) == (2, column)
    assert f"longer than {limit} characters" in caught.value.problem
    assert _counts(session_factory) == (0, 0)


def test_reimport_attaches_resolutions_only_to_new_syncs(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    unresolved = _event(0, resolution_type=None, resolved_at=None)
    import_events(session_factory, _write_parquet(tmp_path / "first.parquet", [unresolved]))
    # The same event id arrives again, now with a resolution, next to a new resolved conflict.
    resolved_again = _event(0)
    result = import_events(session_factory, _write_parquet(tmp_path / "second.parquet", [resolved_again, _event(6)]))

    assert (result.inserted, result.skipped_existing) == (1, 1)
    stored = load_events(_engine(session_factory)).set_index("event_id")
    assert pd.isna(stored.loc["evt-000", "resolution_type"])
    assert stored.loc["evt-006", "resolution_type"] == "server_wins"
    assert _counts(session_factory) == (2, 1)


def test_field_names_needing_json_escapes_round_trip(session_factory: sessionmaker[Session], tmp_path: Path) -> None:
    names = ['say "hi"', "back\\slash", "tab\there", "naïve ✓", "line\nbreak"]
    events = [_event(0, changed_fields=names), _event(1, changed_fields=[]), _event(2, changed_fields=names[:1])]
    import_events(session_factory, _write_parquet(tmp_path / "events.parquet", events))
    stored = load_events(_engine(session_factory)).sort_values("event_id")
    assert stored["changed_fields"].tolist() == [names, [], names[:1]]
