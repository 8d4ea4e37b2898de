"""Reading event files (Parquet, CSV) as validated chunks of bounded size."""

from __future__ import annotations

import csv
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from conflict_core.errors import ImportFormatError
from conflict_core.events.validation import validate_chunks
from conflict_core.schema import (
    ALL_COLUMNS,
    EVENT_SCHEMA,
    REQUIRED_COLUMNS,
)

Progress = Callable[[int], None]
"""Called with the number of rows just written (an increment, as ``tqdm.update`` expects)."""

DEFAULT_CHUNK_ROWS = 50_000


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
    return validate_chunks(_raw_chunks(path, chunk_rows), source=str(path))


def read_event_table(path: Path) -> pa.Table:
    """The whole file, validated, as one ``EVENT_SCHEMA`` table (for files that fit in memory)."""
    chunks = list(iter_event_chunks(path))
    return pa.concat_tables(chunks) if chunks else EVENT_SCHEMA.empty_table()
