"""Moving sync events between files, JSON bodies and the sync event store.

* :func:`import_events` loads a Parquet or CSV file in the import format
  (:mod:`conflict_core.schema`) all-or-nothing: the whole file is validated first, streaming
  chunk by chunk, and only then inserted in one transaction. Events whose ``event_id`` is
  already stored are skipped, so re-importing a file is harmless.
* :func:`validate_records` applies the same validation to JSON records, and
  :func:`insert_event_frame` writes already-validated events into an open session.
* :func:`export_events` writes hive-partitioned Parquet (``date=YYYY-MM-DD``, the UTC day
  of ``synced_at``) and replaces whole day partitions on re-export.
* :func:`load_events` reads events back as a pandas frame, filtered through the indexes;
  :func:`tail_events` reads the events stored since a given row, for incremental readers.

There is exactly one validator (:func:`_validate_chunk`). It accepts columns either as
text (CSV cells, JSON values rendered as text) or natively typed (Parquet), so every input
path enforces the same rules and reports problems as ``ImportFormatError`` naming the
file, the 1-based data row and the column.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from sqlalchemy import ColumnElement, Select, Table, insert, select, tuple_, union_all
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from conflict_core.errors import ImportFormatError, StoreError
from conflict_core.schema import (
    ALL_COLUMNS,
    EVENT_SCHEMA,
    PARTITION_COLUMN,
    REQUIRED_COLUMNS,
    TIMESTAMP,
)
from conflict_core.store import ConflictResolution, SyncLog

Progress = Callable[[int], None]
"""Called with the number of rows just written (an increment, as ``tqdm.update`` expects)."""

DEFAULT_CHUNK_ROWS = 50_000
DEFAULT_RESOLUTION_TYPE = "unspecified"

_SYNC_TABLE = cast(Table, SyncLog.__table__)
_RESOLUTION_TABLE = cast(Table, ConflictResolution.__table__)
_SYNC_COLUMNS: tuple[str, ...] = (
    "event_id",
    "user_id",
    "device_id",
    "entity_type",
    "entity_id",
    "changed_fields",
    "synced_at",
    "conflict",
    "base_version",
    "server_version",
)
_TEXT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "user_id",
    "device_id",
    "entity_type",
    "entity_id",
    "resolution_type",
)
# Longest text each column takes, as declared by the store (PostgreSQL enforces VARCHAR(n)).
_TEXT_LENGTHS: dict[str, int | None] = {
    name: getattr(
        (_RESOLUTION_TABLE if name == "resolution_type" else _SYNC_TABLE).c[name].type,
        "length",
        None,
    )
    for name in _TEXT_COLUMNS
}
_FIELD_LIST = pa.list_(pa.string())
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# Instants a sync or a prediction may name: a device clock reset to before 1970 or a far-future
# typo is a client mistake, and the bounds keep every window computation within datetime's range.
EARLIEST_INSTANT = _EPOCH
LATEST_INSTANT = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
# sync_log.base_version/server_version are INTEGER: 32-bit on PostgreSQL.
_INT_RANGE = (-(2**31), 2**31 - 1)
# Rows per executemany call: bounds the driver-side parameter copies, not the transaction.
_STATEMENT_ROWS = 10_000
# SQLite page cache during an import, in KiB (a negative cache_size means KiB).
_SQLITE_IMPORT_CACHE_KIB = -65_536
_TRUE_TEXT = pa.array(["true", "1"])
_FALSE_TEXT = pa.array(["false", "0"])


@dataclass(frozen=True)
class ImportResult:
    """Outcome of one file import; ``rows_read == inserted + skipped_existing``."""

    path: Path
    rows_read: int
    inserted: int
    skipped_existing: int


@dataclass(frozen=True)
class ExportResult:
    """Outcome of one export; ``partitions`` are the ``date=YYYY-MM-DD`` directories written."""

    out_dir: Path
    rows: int
    partitions: list[str]


# --------------------------------------------------------------------------- validation


class _CellError(Exception):
    """A problem at ``index`` (0-based within the chunk) of the column being parsed."""

    def __init__(self, index: int, problem: str):
        super().__init__(problem)
        self.index = index
        self.problem = problem


def _first_true(mask: pa.Array | pa.ChunkedArray) -> int | None:
    index = pc.index(pc.fill_null(mask, False), True).as_py()
    return None if index < 0 else int(index)


def _is_text(type_: pa.DataType) -> bool:
    return pa.types.is_string(type_) or pa.types.is_large_string(type_)


def _blank_as_null(values: pa.Array) -> pa.Array:
    """Text with empty cells turned into nulls (CSV has no other way to write a null)."""
    values = values.cast(pa.string())
    return pc.if_else(pc.equal(pc.utf8_length(values), 0), pa.scalar(None, pa.string()), values)


def _require_present(values: pa.Array) -> None:
    missing = _first_true(pc.is_null(values))
    if missing is not None:
        raise _CellError(missing, "is missing or empty")


def _parse_text(raw: pa.Array, *, column: str, required: bool) -> pa.Array:
    if pa.types.is_null(raw.type):
        values = pa.nulls(len(raw), pa.string())
    else:
        try:
            values = _blank_as_null(raw)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise _CellError(0, f"expected text, found values of type {raw.type}") from None
    if required:
        _require_present(values)
    nul = _first_true(pc.match_substring(values, "\x00"))
    if nul is not None:
        raise _CellError(nul, "contains a NUL character")
    max_length = _TEXT_LENGTHS[column]
    if max_length is not None:
        too_long = _first_true(pc.greater(pc.utf8_length(values), max_length))
        if too_long is not None:
            raise _CellError(too_long, f"is longer than {max_length} characters")
    return values


def _parse_changed_fields(raw: pa.Array, *, column: str, required: bool) -> pa.Array:
    if _is_text(raw.type):
        values = _field_lists_from_json(raw)
    elif pa.types.is_list(raw.type) or pa.types.is_large_list(raw.type):
        if not _is_text(raw.type.value_type):
            raise _CellError(0, f"expected a list of strings, found {raw.type}")
        values = raw.cast(_FIELD_LIST)
        null_item = _first_true(pc.is_null(pc.list_flatten(values)))
        if null_item is not None:
            parent = pc.list_parent_indices(values)[null_item].as_py()
            raise _CellError(parent, "contains a null field name")
    elif pa.types.is_null(raw.type):
        values = pa.nulls(len(raw), _FIELD_LIST)
    else:
        raise _CellError(0, f"expected a list of field names, found {raw.type}")
    _require_present(values)
    return values


def _field_lists_from_json(raw: pa.Array) -> pa.Array:
    lists: list[list[str] | None] = []
    for index, text in enumerate(raw.to_pylist()):
        if not text:
            lists.append(None)
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise _CellError(index, f"{text[:80]!r} is not a JSON array of strings")
        lists.append(value)
    try:
        return pa.array(lists, _FIELD_LIST)
    except UnicodeEncodeError:  # a lone surrogate written as a JSON escape
        index = next(i for i, names in enumerate(lists) if names and not all(map(_encodes, names)))
        raise _CellError(index, "contains a field name that is not valid Unicode text") from None


def _parse_timestamp(raw: pa.Array, *, column: str, required: bool) -> pa.Array:
    if _is_text(raw.type):
        values = _timestamps_from_text(raw)
    elif pa.types.is_timestamp(raw.type):
        if raw.type.tz is None:
            first = _first_true(pc.is_valid(raw))
            raise _CellError(first or 0, "timestamps have no time zone; UTC is required")
        values = pc.cast(raw, TIMESTAMP, safe=False)  # converts any zone; truncates ns to us
    elif pa.types.is_null(raw.type):
        values = pa.nulls(len(raw), TIMESTAMP)
    else:
        raise _CellError(0, f"expected an ISO 8601 timestamp, found {raw.type}")
    if required:
        _require_present(values)
    out_of_range = _first_true(
        pc.or_(
            pc.less(values, pa.scalar(EARLIEST_INSTANT, TIMESTAMP)),
            pc.greater_equal(values, pa.scalar(LATEST_INSTANT, TIMESTAMP)),
        )
    )
    if out_of_range is not None:
        shown = f"{str(raw[out_of_range])[:80]!r} " if _is_text(raw.type) else ""
        raise _CellError(
            out_of_range, f"{shown}is outside {EARLIEST_INSTANT:%Y-%m-%d} .. {LATEST_INSTANT:%Y-%m-%d} (UTC)"
        )
    return values


def _timestamps_from_text(raw: pa.Array) -> pa.Array:
    micros: list[int | None] = []
    for index, text in enumerate(raw.to_pylist()):
        if not text:
            micros.append(None)
            continue
        try:
            stamp = dt.datetime.fromisoformat(text)
        except ValueError:
            raise _CellError(index, f"{text[:80]!r} is not an ISO 8601 timestamp") from None
        if stamp.tzinfo is None:
            raise _CellError(index, f"{text!r} has no UTC offset; write UTC with 'Z' or '+00:00'")
        try:
            micros.append((stamp - _EPOCH) // _MICROSECOND)
        except OverflowError:  # the offset moves it past year 1 or 9999
            raise _CellError(index, f"{text[:80]!r} is outside the representable range of timestamps") from None
    return pa.array(micros, pa.int64()).cast(TIMESTAMP)


def _parse_bool(raw: pa.Array, *, column: str, required: bool) -> pa.Array:
    if pa.types.is_boolean(raw.type):
        values = raw
    elif pa.types.is_integer(raw.type):
        bad = _first_true(pc.invert(pc.is_in(raw, pa.array([0, 1], raw.type))))
        if bad is not None:
            raise _CellError(bad, f"{raw[bad].as_py()!r} is not a boolean (true/false/1/0)")
        values = pc.not_equal(raw, 0)
    elif _is_text(raw.type):
        text = pc.utf8_lower(_blank_as_null(raw))
        is_true, is_false = pc.is_in(text, _TRUE_TEXT), pc.is_in(text, _FALSE_TEXT)
        bad = _first_true(pc.and_(pc.is_valid(text), pc.invert(pc.or_(is_true, is_false))))
        if bad is not None:
            raise _CellError(bad, f"{raw[bad].as_py()!r} is not a boolean (true/false/1/0)")
        values = pc.if_else(is_true, True, pc.if_else(is_false, False, pa.scalar(None, pa.bool_())))
    elif pa.types.is_null(raw.type):
        values = pa.nulls(len(raw), pa.bool_())
    else:
        raise _CellError(0, f"expected a boolean, found {raw.type}")
    if required:
        _require_present(values)
    return values


def _parse_int(raw: pa.Array, *, column: str, required: bool) -> pa.Array:
    if pa.types.is_integer(raw.type):
        values = raw.cast(pa.int64())
    elif pa.types.is_floating(raw.type):  # pandas turns nullable integers into floats
        bad = _first_true(pc.not_equal(raw, pc.floor(raw)))
        if bad is not None:
            raise _CellError(bad, f"{raw[bad].as_py()!r} is not an integer")
        values = raw.cast(pa.int64())
    elif _is_text(raw.type):
        text = pc.utf8_trim_whitespace(_blank_as_null(raw))
        bad = _first_true(pc.invert(pc.match_substring_regex(text, r"^[+-]?\d{1,18}$")))
        if bad is not None:
            raise _CellError(bad, f"{raw[bad].as_py()!r} is not an integer")
        values = text.cast(pa.int64())
    elif pa.types.is_null(raw.type):
        values = pa.nulls(len(raw), pa.int64())
    else:
        raise _CellError(0, f"expected an integer, found {raw.type}")
    low, high = _INT_RANGE
    out_of_range = _first_true(pc.or_(pc.less(values, low), pc.greater(values, high)))
    if out_of_range is not None:
        raise _CellError(out_of_range, f"{values[out_of_range].as_py()} is outside {low}..{high}")
    if required:
        _require_present(values)
    return values


_PARSERS: dict[str, Callable[..., pa.Array]] = {
    **{name: _parse_text for name in _TEXT_COLUMNS},
    "changed_fields": _parse_changed_fields,
    "synced_at": _parse_timestamp,
    "resolved_at": _parse_timestamp,
    "conflict": _parse_bool,
    "base_version": _parse_int,
    "server_version": _parse_int,
}

_Issue = tuple[int, int, str, str]  # (index in chunk, column position, column, problem)


def _column_position(column: str) -> int:
    return EVENT_SCHEMA.get_field_index(column)


def _duplicate_issues(event_ids: pa.Array, seen: set[str]) -> list[_Issue]:
    for index, event_id in enumerate(event_ids.to_pylist()):
        if event_id in seen:
            problem = f"event_id {event_id!r} appears more than once in the file"
            return [(index, _column_position("event_id"), "event_id", problem)]
        seen.add(event_id)
    return []


def _cross_field_issues(columns: Mapping[str, pa.Array]) -> list[_Issue]:
    """Rules between columns: a resolution needs a conflict, a time, and comes after the sync."""
    issues: list[_Issue] = []
    needed = ("synced_at", "conflict", "resolution_type", "resolved_at")
    if not all(name in columns for name in needed):
        return issues
    synced, conflict = columns["synced_at"], columns["conflict"]
    kind, resolved = columns["resolution_type"], columns["resolved_at"]

    early = _first_true(pc.less(resolved, synced))
    if early is not None:
        problem = f"resolved_at {resolved[early]} is before synced_at {synced[early]}"
        issues.append((early, _column_position("resolved_at"), "resolved_at", problem))

    has_resolution = pc.or_(pc.is_valid(kind), pc.is_valid(resolved))
    unconflicted = _first_true(pc.and_(has_resolution, pc.invert(conflict)))
    if unconflicted is not None:
        column = "resolved_at" if resolved[unconflicted].is_valid else "resolution_type"
        problem = "a resolution is given but conflict is not true"
        issues.append((unconflicted, _column_position(column), column, problem))

    untimed = _first_true(pc.and_(pc.is_valid(kind), pc.is_null(resolved)))
    if untimed is not None:
        problem = "is missing although resolution_type is given"
        issues.append((untimed, _column_position("resolved_at"), "resolved_at", problem))
    return issues


def _validate_chunk(chunk: pa.Table, *, source: str, first_row: int, seen_ids: set[str]) -> pa.Table:
    """The chunk parsed into ``EVENT_SCHEMA``, or the row-wise first problem as an error.

    ``first_row`` is the 1-based file row of the chunk's first row; ``seen_ids`` carries the
    event ids of earlier chunks (and is extended) so duplicates across chunks are caught.
    """
    columns: dict[str, pa.Array] = {}
    issues: list[_Issue] = []
    for position, field in enumerate(EVENT_SCHEMA):
        if field.name in chunk.column_names:
            raw = chunk.column(field.name).combine_chunks()
        else:
            raw = pa.nulls(chunk.num_rows)
        parse = _PARSERS[field.name]
        try:
            columns[field.name] = parse(raw, column=field.name, required=field.name in REQUIRED_COLUMNS)
        except _CellError as error:
            issues.append((error.index, position, field.name, error.problem))
    if "event_id" in columns:
        issues.extend(_duplicate_issues(columns["event_id"], seen_ids))
    issues.extend(_cross_field_issues(columns))
    if issues:
        index, _, column, problem = min(issues)
        raise ImportFormatError(source, problem, row=first_row + index, column=column)
    return pa.Table.from_arrays([columns[field.name] for field in EVENT_SCHEMA], schema=EVENT_SCHEMA)


def _validate_chunks(chunks: Iterable[pa.Table], *, source: str) -> Iterator[pa.Table]:
    seen_ids: set[str] = set()
    next_row = 1
    for chunk in chunks:
        yield _validate_chunk(chunk, source=source, first_row=next_row, seen_ids=seen_ids)
        next_row += chunk.num_rows


# --------------------------------------------------------------------------- reading


def _check_columns(path: Path, names: Collection[str]) -> list[str]:
    """The known columns present in the file; a missing required column is an error."""
    for column in REQUIRED_COLUMNS:
        if column not in names:
            raise ImportFormatError(str(path), "required column is missing", column=column)
    return [name for name in ALL_COLUMNS if name in names]


def _rechunk(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Re-slice a stream of record batches into tables of exactly ``rows`` rows (last: fewer)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        while batch.num_rows:
            take = min(rows - count, batch.num_rows)
            pending.append(batch.slice(0, take))
            batch = batch.slice(take)
            count += take
            if count == rows:
                yield pa.Table.from_batches(pending)
                pending, count = [], 0
    if count:
        yield pa.Table.from_batches(pending)


def _parquet_batches(path: Path, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ImportFormatError(str(path), f"cannot read as Parquet: {exc}") from exc
    columns = _check_columns(path, parquet.schema_arrow.names)
    try:
        yield from parquet.iter_batches(batch_size=chunk_rows, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ImportFormatError(str(path), f"cannot read as Parquet: {exc}") from exc


def _csv_header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise ImportFormatError(str(path), "the file is empty; expected a header row")
    return header


def _csv_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """CSV cells as text: every value goes through the shared validator, not Arrow's inference."""
    columns = _check_columns(path, _csv_header(path))
    convert = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in columns},
        include_columns=columns,
        strings_can_be_null=False,
    )
    parse = pacsv.ParseOptions(newlines_in_values=True)
    try:
        with pacsv.open_csv(path, parse_options=parse, convert_options=convert) as reader:
            yield from reader
    except pa.ArrowInvalid as exc:
        raise ImportFormatError(str(path), f"cannot parse as CSV: {exc}") from exc


def _raw_chunks(path: Path, chunk_rows: int) -> Iterator[pa.Table]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        batches = _parquet_batches(path, chunk_rows)
    elif suffix == ".csv":
        batches = _csv_batches(path)
    else:
        raise ImportFormatError(str(path), f"unsupported extension {suffix!r}; expected .parquet or .csv")
    if not path.is_file():
        raise ImportFormatError(str(path), "no such file")
    return _rechunk(batches, chunk_rows)


def iter_event_chunks(path: Path, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[pa.Table]:
    """Validated chunks of at most ``chunk_rows`` rows of the file, in ``EVENT_SCHEMA``.

    Memory stays bounded by the chunk size (plus the set of event ids seen, needed to
    reject duplicates). Raises ``ImportFormatError`` at the first problem.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    path = Path(path)
    return _validate_chunks(_raw_chunks(path, chunk_rows), source=str(path))


def read_event_table(path: Path) -> pa.Table:
    """The whole file, validated, as one ``EVENT_SCHEMA`` table (for files that fit in memory)."""
    chunks = list(iter_event_chunks(path))
    return pa.concat_tables(chunks) if chunks else EVENT_SCHEMA.empty_table()


def _record_value_as_text(value: Any, column: str) -> str | None:
    """One JSON value in the textual form the shared validator parses, as a CSV cell would be."""
    if value is None or isinstance(value, str):
        return value
    if column in _TEXT_COLUMNS:
        raise TypeError(f"expected a string, found {type(value).__name__}")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return json.dumps(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"unsupported value of type {type(value).__name__}")


def validate_records(records: Sequence[Mapping[str, Any]], *, source: str) -> pa.Table:
    """JSON records (e.g. an HTTP body) validated exactly like a file, as an ``EVENT_SCHEMA`` table.

    Row numbers in errors are list index + 1; ``source`` stands in for the file name.
    Unknown keys are ignored; a missing required key reads as an empty value.
    """
    cells: dict[str, list[str | None]] = {name: [] for name in ALL_COLUMNS}
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ImportFormatError(source, "is not a JSON object", row=index + 1)
        for name in ALL_COLUMNS:
            try:
                cells[name].append(_record_value_as_text(record.get(name), name))
            except TypeError as exc:
                raise ImportFormatError(source, str(exc), row=index + 1, column=name) from None
    try:
        raw = pa.table({name: pa.array(values, pa.string()) for name, values in cells.items()})
    except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800") is no text a store can hold
        row, column = next(
            (index, name)
            for name, values in cells.items()
            for index, value in enumerate(values)
            if value is not None and not _encodes(value)
        )
        raise ImportFormatError(source, "is not valid Unicode text", row=row + 1, column=column) from None
    return _validate_chunk(raw, source=source, first_row=1, seen_ids=set())


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# --------------------------------------------------------------------------- writing to the store


def _insert_ignoring_existing(session: Session, table: Table) -> Any:
    """``INSERT ... ON CONFLICT (event_id) DO NOTHING`` for the session's dialect."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=[table.c.event_id])
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=[table.c.event_id])
    raise StoreError(f"sync event import does not support the {dialect!r} dialect")


def _parameter_rows(events: pa.Table, columns: Sequence[str]) -> list[dict[str, Any]]:
    """Rows as parameter dicts; timestamps become aware UTC datetimes for ``UTCDateTime``."""
    values = [events.column(name).to_pylist() for name in columns]
    return [dict(zip(columns, row, strict=True)) for row in zip(*values, strict=True)]


def _insert_chunk(session: Session, events: pa.Table) -> int:
    """Insert one validated chunk; returns how many syncs were new.

    The ids of the new syncs come back through ``RETURNING``, so resolutions are attached
    only to syncs this call inserted, even if another writer races on the same event ids.
    """
    if events.num_rows == 0:
        return 0
    statement = _insert_ignoring_existing(session, _SYNC_TABLE).returning(_SYNC_TABLE.c.event_id, _SYNC_TABLE.c.id)
    new_ids: dict[str, int] = {}
    for start in range(0, events.num_rows, _STATEMENT_ROWS):
        rows = _parameter_rows(events.slice(start, _STATEMENT_ROWS), _SYNC_COLUMNS)
        new_ids.update(session.execute(statement, rows).tuples().all())
    resolved = events.filter(pc.is_valid(events.column("resolved_at")))
    resolutions = [
        {
            "sync_id": new_ids[row["event_id"]],
            "resolution_type": row["resolution_type"] or DEFAULT_RESOLUTION_TYPE,
            "resolved_at": row["resolved_at"],
        }
        for row in _parameter_rows(resolved, ("event_id", "resolution_type", "resolved_at"))
        if row["event_id"] in new_ids
    ]
    if resolutions:
        session.execute(insert(_RESOLUTION_TABLE), resolutions)
    return len(new_ids)


def _conform(events: pa.Table | pd.DataFrame) -> pa.Table:
    """Already-validated events as an ``EVENT_SCHEMA`` table; absent optional columns are null."""
    table = pa.Table.from_pandas(events, preserve_index=False) if isinstance(events, pd.DataFrame) else events
    columns = []
    for field in EVENT_SCHEMA:
        if field.name not in table.column_names:
            if field.name in REQUIRED_COLUMNS:
                raise ValueError(f"event table has no {field.name!r} column")
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        if pa.types.is_timestamp(column.type) and column.type.tz is None:
            raise ValueError(f"column {field.name!r} holds naive timestamps; UTC is required")
        columns.append(pc.cast(column, field.type, safe=False))
    return pa.Table.from_arrays(columns, schema=EVENT_SCHEMA)


def insert_event_frame(session: Session, table: pa.Table | pd.DataFrame) -> tuple[int, int]:
    """Insert already-validated events within the caller's transaction; ``(inserted, skipped)``.

    Events whose ``event_id`` is already stored are skipped unchanged. The input must already
    satisfy the import format (the output of :func:`validate_records`, or the simulator's
    frames); it is converted to ``EVENT_SCHEMA``, not re-validated.
    """
    events = _conform(table)
    inserted = 0
    for batch in events.to_batches(max_chunksize=DEFAULT_CHUNK_ROWS):
        inserted += _insert_chunk(session, pa.Table.from_batches([batch], schema=EVENT_SCHEMA))
    return inserted, events.num_rows - inserted


@contextmanager
def _bulk_load_cache(session: Session) -> Iterator[None]:
    """On SQLite, a larger page cache while importing, restored afterwards.

    Index maintenance for a large import touches pages all over the user, entity and time
    indexes; the default 2 MB cache makes that disk-bound (roughly 1.5x slower at 1M rows).
    """
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        yield
        return
    previous = int(connection.exec_driver_sql("PRAGMA cache_size").scalar_one())
    connection.exec_driver_sql(f"PRAGMA cache_size={_SQLITE_IMPORT_CACHE_KIB}")
    try:
        yield
    finally:
        connection.exec_driver_sql(f"PRAGMA cache_size={previous}")


def import_events(
    target: sessionmaker[Session] | Engine,
    path: Path,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
) -> ImportResult:
    """Import a Parquet or CSV event file, all or nothing.

    The file is read twice: a first streaming pass validates every row without touching the
    store (a bad file never takes the write lock), a second pass inserts chunk by chunk in a
    single transaction that is rolled back on any error. ``progress`` receives the rows of
    each inserted chunk.
    """
    path = Path(path)
    rows_read = sum(chunk.num_rows for chunk in iter_event_chunks(path, chunk_rows=chunk_rows))
    factory = target if isinstance(target, sessionmaker) else sessionmaker(target)
    inserted = 0
    with factory.begin() as session, _bulk_load_cache(session):
        for chunk in iter_event_chunks(path, chunk_rows=chunk_rows):
            inserted += _insert_chunk(session, chunk)
            if progress is not None:
                progress(chunk.num_rows)
    return ImportResult(path=path, rows_read=rows_read, inserted=inserted, skipped_existing=rows_read - inserted)


# --------------------------------------------------------------------------- reading the store


def _event_select() -> Select[Any]:
    """Every stored event with its resolution, in ``EVENT_SCHEMA`` column order."""
    sources: dict[str, Any] = {name: getattr(SyncLog, name) for name in _SYNC_COLUMNS}
    sources["resolution_type"] = ConflictResolution.resolution_type
    sources["resolved_at"] = ConflictResolution.resolved_at
    return select(*(sources[name] for name in EVENT_SCHEMA.names)).outerjoin(
        ConflictResolution, ConflictResolution.sync_id == SyncLog.id
    )


def _require_utc(value: dt.datetime | None, name: str) -> None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")


def _time_window(since: dt.datetime | None, until: dt.datetime | None) -> list[ColumnElement[bool]]:
    """``since <= synced_at < until``, either bound optional."""
    _require_utc(since, "since")
    _require_utc(until, "until")
    window: list[ColumnElement[bool]] = []
    if since is not None:
        window.append(SyncLog.synced_at >= since)
    if until is not None:
        window.append(SyncLog.synced_at < until)
    return window


def _rows_to_table(rows: Sequence[Sequence[Any]]) -> pa.Table:
    columns: Iterable[Sequence[Any]] = zip(*rows, strict=True) if rows else ([] for _ in EVENT_SCHEMA)
    arrays = [pa.array(values, field.type) for values, field in zip(columns, EVENT_SCHEMA, strict=True)]
    return pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA)


def _events_frame(table: pa.Table) -> pd.DataFrame:
    """Events as pandas: UTC datetime64, nullable Int64 versions, ``changed_fields`` as lists."""
    frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    frame["changed_fields"] = pd.Series(table.column("changed_fields").to_pylist(), dtype=object)
    return frame


def load_events(
    engine: Engine,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    user_ids: Iterable[str] | None = None,
    entity_keys: Iterable[tuple[str, str]] | None = None,
) -> pd.DataFrame:
    """Stored events with ``since <= synced_at < until``, ordered by ``synced_at``.

    ``user_ids`` and ``entity_keys`` (``(entity_type, entity_id)`` pairs) select histories:
    given both, the result is the union, so one call fetches a user's and an entity's
    history. Each selector is its own indexed branch of a ``UNION ALL`` (``user_id,
    synced_at`` and ``entity_type, entity_id, synced_at``); an event matching both appears once.
    """
    window = _time_window(since, until)
    users = None if user_ids is None else list(dict.fromkeys(user_ids))
    entities = None if entity_keys is None else list(dict.fromkeys(entity_keys))
    base = _event_select().where(*window)
    if users is None and entities is None:
        statement = base.order_by(SyncLog.synced_at, SyncLog.id)
    else:
        branches: list[Select[Any]] = []
        if users is not None:
            branches.append(base.where(SyncLog.user_id.in_(users)))
        if entities is not None:
            by_entity = base.where(tuple_(SyncLog.entity_type, SyncLog.entity_id).in_(entities))
            if users is not None:
                by_entity = by_entity.where(SyncLog.user_id.not_in(users))
            branches.append(by_entity)
        both = union_all(*branches).subquery() if len(branches) > 1 else branches[0].subquery()
        statement = select(*both.c).order_by(both.c.synced_at, both.c.event_id)
    with engine.connect() as connection:
        rows = connection.execute(statement).all()
    return _events_frame(_rows_to_table(rows))


def tail_events(
    engine: Engine,
    *,
    after_id: int,
    since: dt.datetime | None = None,
    recheck_ids: Collection[int] = (),
    limit: int | None = None,
) -> pa.Table:
    """Events stored after ``sync_log.id`` ``after_id``, in id (ingest) order, for incremental readers.

    The result has ``EVENT_SCHEMA``'s columns after a ``row_id`` column (the ``sync_log`` id).
    ``since`` drops events synced before it; ``recheck_ids`` also returns those ids at or
    below ``after_id`` if they are stored by now (PostgreSQL may commit a lower id after a
    higher one, so a reader re-asks for the gaps it saw for a while); ``limit`` pages a large
    first load. A conflict's resolution is written with its sync in one transaction
    (:func:`insert_event_frame`), so it arrives with the sync's row.
    """
    _require_utc(since, "since")
    newer: ColumnElement[bool] = SyncLog.id > after_id
    if recheck_ids:
        newer = newer | SyncLog.id.in_(sorted(recheck_ids))
    statement = (
        _event_select()
        .add_columns(SyncLog.id.label("row_id"))
        .where(newer, *_time_window(since, None))
        .order_by(SyncLog.id)
    )
    if limit is not None:
        statement = statement.limit(limit)
    with engine.connect() as connection:
        rows = connection.execute(statement).all()
    events = _rows_to_table([row[:-1] for row in rows])
    row_ids = pa.array([row[-1] for row in rows], pa.int64())
    return events.add_column(0, "row_id", row_ids)


# --------------------------------------------------------------------------- export


def _whole_days(since: dt.datetime | None, until: dt.datetime | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The bounds widened to UTC midnights: partitions are replaced whole, so written whole."""
    _require_utc(since, "since")
    _require_utc(until, "until")

    def midnight(value: dt.datetime) -> dt.datetime:
        return value.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)

    start = midnight(since) if since is not None else None
    end = None
    if until is not None:
        end = midnight(until)
        if end < until:
            end += dt.timedelta(days=1)
    return start, end


def _partition_name(day: str) -> str:
    return f"{PARTITION_COLUMN}={day}"


class _DayWriter:
    """Writes day-ordered event chunks into ``<root>/date=YYYY-MM-DD/part-NNNNN.parquet``."""

    def __init__(self, root: Path):
        self.root = root
        self.days: list[str] = []
        self._day: str | None = None
        self._writer: pq.ParquetWriter | None = None
        self._parts: dict[str, int] = {}

    def write(self, day: str, events: pa.Table) -> None:
        if day != self._day:
            self._close_current()
            part = self._parts.get(day, 0)
            self._parts[day] = part + 1
            directory = self.root / _partition_name(day)
            directory.mkdir(exist_ok=True)
            self._writer = pq.ParquetWriter(directory / f"part-{part:05d}.parquet", EVENT_SCHEMA)
            self._day = day
            if day not in self.days:
                self.days.append(day)
        assert self._writer is not None
        self._writer.write_table(events)

    def _close_current(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer, self._day = None, None

    def close(self) -> list[str]:
        self._close_current()
        return self.days


def _split_by_day(events: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    days = pc.strftime(events.column("synced_at"), format="%Y-%m-%d")
    for day in pc.unique(days).to_pylist():
        yield day, events.filter(pc.equal(days, day))


def _swap_in(staging: Path, out_dir: Path, days: Iterable[str]) -> None:
    """Move each finished day partition into ``out_dir``, replacing the old one.

    Each step is a directory rename on one filesystem: a reader sees the old partition,
    briefly none, or the new one, never a half-written one.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    retired = staging / "retired"
    retired.mkdir()
    for day in days:
        name = _partition_name(day)
        target = out_dir / name
        if target.exists():
            target.rename(retired / name)
        (staging / "fresh" / name).rename(target)


def export_events(
    engine: Engine,
    out_dir: Path,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    progress: Progress | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> ExportResult:
    """Write stored events as hive-partitioned Parquet, one directory per UTC day of ``synced_at``.

    ``since``/``until`` are widened to whole UTC days, because every day written replaces
    that day's existing partition. Days without stored events are left alone, so exports
    stay an archive even after retention has pruned the store. Rows stream from a
    server-side cursor into a staging directory next to ``out_dir``; partitions are swapped
    in only once the whole range has been written. ``progress`` receives rows per chunk.
    """
    out_dir = Path(out_dir)
    start, end = _whole_days(since, until)
    statement = _event_select().where(*_time_window(start, end)).order_by(SyncLog.synced_at, SyncLog.id)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.export-", dir=out_dir.parent))
    rows = 0
    try:
        (staging / "fresh").mkdir()
        writer = _DayWriter(staging / "fresh")
        try:
            with engine.connect() as connection:
                result = connection.execution_options(yield_per=chunk_rows).execute(statement)
                for batch in result.partitions():
                    events = _rows_to_table(batch)
                    for day, day_events in _split_by_day(events):
                        writer.write(day, day_events)
                    rows += events.num_rows
                    if progress is not None:
                        progress(events.num_rows)
        finally:
            days = writer.close()
        _swap_in(staging, out_dir, days)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out_dir=out_dir, rows=rows, partitions=sorted(_partition_name(day) for day in days))
