"""The one validator of the sync event import format.

:func:`_validate_chunk` accepts columns either as text (CSV cells, JSON values rendered as
text) or natively typed (Parquet), so every input path (files, HTTP bodies) enforces the
same rules and reports problems as ``ImportFormatError`` naming the source, the 1-based
data row and the column. :func:`validate_records` applies it to JSON records.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Table

from conflict_core.errors import ImportFormatError
from conflict_core.schema import (
    ALL_COLUMNS,
    EVENT_SCHEMA,
    REQUIRED_COLUMNS,
    TIMESTAMP,
)
from conflict_core.store import ConflictResolution, SyncLog

_SYNC_TABLE = cast(Table, SyncLog.__table__)
_RESOLUTION_TABLE = cast(Table, ConflictResolution.__table__)
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
_TRUE_TEXT = pa.array(["true", "1"])
_FALSE_TEXT = pa.array(["false", "0"])


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


def _absent_as_null(raw: pa.Array) -> pa.Array:
    """An optional column's empty or whitespace-only text cells as nulls.

    Exports write "absent" as an empty string (or a padded one) in a text column of any
    format, Parquet included; for an optional column that is the same as a null.
    """
    if not _is_text(raw.type):
        return raw
    blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(raw)), 0)
    return pc.if_else(blank, pa.scalar(None, raw.type), raw)


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
            if pa.types.is_dictionary(raw.type):  # pandas categoricals written to Parquet
                raw = raw.dictionary_decode()
        else:
            raw = pa.nulls(chunk.num_rows)
        if field.name not in REQUIRED_COLUMNS:
            raw = _absent_as_null(raw)
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


def validate_chunks(chunks: Iterable[pa.Table], *, source: str) -> Iterator[pa.Table]:
    seen_ids: set[str] = set()
    next_row = 1
    for chunk in chunks:
        yield _validate_chunk(chunk, source=source, first_row=next_row, seen_ids=seen_ids)
        next_row += chunk.num_rows


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
