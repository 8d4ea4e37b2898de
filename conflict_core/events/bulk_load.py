"""Fast all-or-nothing loading of validated event chunks into the store.

Both dialects follow one protocol:

1. every validated chunk is appended to a connection-private staging table (a ``TEMP``
   table), in PostgreSQL with ``COPY`` (Arrow writes the CSV, psycopg streams it), in
   SQLite with ``executemany`` on the raw connection; the store's own tables are not
   touched yet, so a file that turns out bad at its last row has written nothing and held
   no lock on them;
2. one ``INSERT ... SELECT ... ON CONFLICT (event_id) DO NOTHING`` moves the staged rows into
   ``sync_log`` (re-importing a file is harmless), and the staged resolutions are attached
   to exactly the syncs this import inserted, in the same transaction.

Memory stays bounded by one chunk: the file streams through the staging table, which
lives in the database's own temporary storage.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from sqlalchemy.engine import Engine

from conflict_core.errors import StoreError
from conflict_core.events.readers import Progress
from conflict_core.schema import SYNC_LOG_COLUMNS

DEFAULT_RESOLUTION_TYPE = "unspecified"
STAGING_TABLE = "event_import_staging"
_STAGED_COLUMNS: tuple[str, ...] = (*SYNC_LOG_COLUMNS, "resolution_type", "resolved_at")
# SQLite page cache while the staged rows go into the store, in KiB (negative means KiB):
# index maintenance touches pages all over the user, entity and time indexes.
_SQLITE_IMPORT_CACHE_KIB = -131_072
# The storage format SQLAlchemy's SQLite DateTime writes (and compares against).
_SQLITE_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"  # Arrow's %S carries the microseconds
_CONTROL_CHARACTER = r"[\x00-\x1f]"


def field_lists_as_json(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``list<string>`` as JSON array text, vectorized (``["a", "b"]``; ``[]`` when empty).

    Names with control characters (rare) take ``json.dumps`` instead of the escaping below.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    flat = values.flatten()
    if len(flat) and pc.any(pc.match_substring_regex(flat, _CONTROL_CHARACTER)).as_py():
        import json

        return pa.array([json.dumps(names) for names in values.to_pylist()], pa.string())
    escaped = pc.replace_substring(pc.replace_substring(flat, "\\", "\\\\"), '"', '\\"')
    quoted = pc.binary_join_element_wise('"', escaped, '"', "")
    offsets = pc.subtract(values.offsets, values.offsets[0])
    lists = pa.ListArray.from_arrays(offsets, quoted)
    return pc.binary_join_element_wise("[", pc.binary_join(lists, ", "), "]", "")


def _staged_columns(chunk: pa.Table, *, timestamps_as_text: bool) -> list[pa.Array]:
    columns: list[pa.Array] = []
    for name in _STAGED_COLUMNS:
        column = chunk.column(name).combine_chunks()
        if name == "changed_fields":
            column = field_lists_as_json(column)
        elif timestamps_as_text and name in ("synced_at", "resolved_at"):
            column = pc.strftime(column, format=_SQLITE_TIMESTAMP_FORMAT)
        columns.append(column)
    return columns


def _move_staged_rows_sql(*, dialect: str) -> tuple[str, str]:
    """The statements moving staged syncs and their resolutions into the store."""
    columns = ", ".join(SYNC_LOG_COLUMNS)
    if dialect == "postgresql":
        syncs = (
            f"WITH inserted AS ("
            f" INSERT INTO sync_log ({columns}) SELECT {columns} FROM {STAGING_TABLE}"
            f" ON CONFLICT (event_id) DO NOTHING RETURNING id, event_id"
            f"), resolved AS ("
            f" INSERT INTO conflict_resolution (sync_id, resolution_type, resolved_at)"
            f" SELECT inserted.id, COALESCE(s.resolution_type, '{DEFAULT_RESOLUTION_TYPE}'), s.resolved_at"
            f" FROM inserted JOIN {STAGING_TABLE} s USING (event_id) WHERE s.resolved_at IS NOT NULL"
            f" RETURNING 1"
            f") SELECT count(*) FROM inserted"
        )
        return syncs, ""
    # SQLite: the new syncs are those above the largest id before the insert (the write
    # lock is held from before that read), because executemany cannot return their ids.
    syncs = (
        f"INSERT INTO sync_log ({columns}) SELECT {columns} FROM temp.{STAGING_TABLE} WHERE true"
        f" ON CONFLICT (event_id) DO NOTHING"
    )
    resolutions = (
        f"INSERT INTO conflict_resolution (sync_id, resolution_type, resolved_at)"
        f" SELECT sync_log.id, COALESCE(s.resolution_type, '{DEFAULT_RESOLUTION_TYPE}'), s.resolved_at"
        f" FROM temp.{STAGING_TABLE} s JOIN sync_log ON sync_log.event_id = s.event_id"
        f" WHERE s.resolved_at IS NOT NULL AND sync_log.id > ?"
    )
    return syncs, resolutions


def load_chunks(engine: Engine, chunks: Iterable[pa.Table], *, progress: Progress | None = None) -> tuple[int, int]:
    """Stage every chunk, then insert the new events in one transaction; ``(rows_read, inserted)``.

    An error raised while the chunks are produced (a validation error at any row) leaves the
    store as it was.
    """
    dialect = engine.dialect.name
    if dialect == "postgresql":
        return _load_postgres(engine, chunks, progress)
    if dialect == "sqlite":
        return _load_sqlite(engine, chunks, progress)
    raise StoreError(f"sync event import does not support the {dialect!r} dialect")


@contextmanager
def _raw_connection(engine: Engine) -> Iterator[Any]:
    pooled = engine.raw_connection()
    try:
        yield pooled.driver_connection
    finally:
        pooled.close()


# --------------------------------------------------------------------------- PostgreSQL


def _load_postgres(engine: Engine, chunks: Iterable[pa.Table], progress: Progress | None) -> tuple[int, int]:
    csv_options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
    copy_sql = f"COPY {STAGING_TABLE} ({', '.join(_STAGED_COLUMNS)}) FROM STDIN (FORMAT csv)"
    move_syncs, _ = _move_staged_rows_sql(dialect="postgresql")
    rows_read = 0
    with _raw_connection(engine) as connection:
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"CREATE TEMP TABLE {STAGING_TABLE} ("
                    " event_id text NOT NULL, user_id text NOT NULL, device_id text NOT NULL,"
                    " entity_type text NOT NULL, entity_id text NOT NULL, changed_fields json NOT NULL,"
                    " synced_at timestamptz NOT NULL, conflict boolean NOT NULL,"
                    " base_version integer, server_version integer,"
                    " resolution_type text, resolved_at timestamptz"
                    ") ON COMMIT DROP"
                )
                with cursor.copy(copy_sql) as copy:
                    for chunk in chunks:
                        staged = pa.Table.from_arrays(
                            _staged_columns(chunk, timestamps_as_text=False), names=list(_STAGED_COLUMNS)
                        )
                        sink = pa.BufferOutputStream()
                        pacsv.write_csv(staged, sink, write_options=csv_options)
                        copy.write(memoryview(sink.getvalue()))
                        rows_read += chunk.num_rows
                        if progress is not None:
                            progress(chunk.num_rows)
                cursor.execute(f"ANALYZE {STAGING_TABLE}")
                cursor.execute(move_syncs)
                inserted = int(cursor.fetchone()[0])
            connection.commit()
        except BaseException:
            connection.rollback()
            raise
    return rows_read, inserted


# --------------------------------------------------------------------------- SQLite


def _load_sqlite(engine: Engine, chunks: Iterable[pa.Table], progress: Progress | None) -> tuple[int, int]:
    placeholders = ", ".join("?" for _ in _STAGED_COLUMNS)
    stage_sql = f"INSERT INTO temp.{STAGING_TABLE} VALUES ({placeholders})"
    move_syncs, move_resolutions = _move_staged_rows_sql(dialect="sqlite")
    rows_read = 0
    with _raw_connection(engine) as connection:
        assert isinstance(connection, sqlite3.Connection)
        isolation_level = connection.isolation_level
        connection.isolation_level = None  # explicit BEGIN/COMMIT below
        previous_cache = connection.execute("PRAGMA main.cache_size").fetchone()[0]
        try:
            connection.execute(f"DROP TABLE IF EXISTS temp.{STAGING_TABLE}")
            connection.execute(
                f"CREATE TEMP TABLE {STAGING_TABLE} ("
                " event_id TEXT NOT NULL, user_id TEXT NOT NULL, device_id TEXT NOT NULL,"
                " entity_type TEXT NOT NULL, entity_id TEXT NOT NULL, changed_fields TEXT NOT NULL,"
                " synced_at TEXT NOT NULL, conflict INTEGER NOT NULL,"
                " base_version INTEGER, server_version INTEGER,"
                " resolution_type TEXT, resolved_at TEXT)"
            )
            # Staging writes only the connection's temporary database: no lock on the store.
            connection.execute("BEGIN")
            for chunk in chunks:
                columns = [column.to_pylist() for column in _staged_columns(chunk, timestamps_as_text=True)]
                connection.executemany(stage_sql, zip(*columns, strict=True))
                rows_read += chunk.num_rows
                if progress is not None:
                    progress(chunk.num_rows)
            connection.execute("COMMIT")

            connection.execute(f"PRAGMA main.cache_size={_SQLITE_IMPORT_CACHE_KIB}")
            connection.execute("BEGIN IMMEDIATE")
            (largest_before,) = connection.execute("SELECT COALESCE(MAX(id), 0) FROM sync_log").fetchone()
            connection.execute(move_syncs)
            connection.execute(move_resolutions, (largest_before,))
            (inserted,) = connection.execute("SELECT COUNT(*) FROM sync_log WHERE id > ?", (largest_before,)).fetchone()
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        finally:
            with suppress(sqlite3.Error):
                connection.execute(f"DROP TABLE IF EXISTS temp.{STAGING_TABLE}")
            connection.execute(f"PRAGMA main.cache_size={previous_cache}")
            connection.isolation_level = isolation_level
    return rows_read, int(inserted)
