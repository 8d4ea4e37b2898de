"""Fast all-or-nothing loading of validated event chunks into the store.

Both dialects follow one protocol:

1. every validated chunk is appended to a connection-private staging table (a ``TEMP``
   table), in PostgreSQL with ``COPY`` (Arrow writes the CSV, timestamps as integer
   microseconds, psycopg streams it), in SQLite with ``executemany`` on the raw connection;
   the store's own tables are not touched yet, so a file that turns out bad at its last row
   has written nothing and held no lock on them;
2. one transaction moves the staged rows into ``sync_log``, skipping event ids already
   stored (re-importing a file is harmless), and attaches the staged resolutions to exactly
   the syncs this import inserted.

A batch that is large next to the table (a first import, a backfill) is moved with
``sync_log``'s indexes dropped and rebuilt afterwards, in the same transaction: sorting every
row once per index costs a fraction of inserting each row into each index. On PostgreSQL that
covers the primary key and the unique ``event_id`` constraint too (the foreign key referring
to the primary key is dropped with it and re-added, which checks the new resolutions in one
join instead of one lookup each); on SQLite the secondary indexes (the rowid and the unique
constraint's own index cannot be dropped). Both stores' DDL is transactional, so an error at
any point, the rebuild included, leaves the tables and their indexes exactly as they were.
While the indexes are rebuilt no other writer touches ``sync_log``; PostgreSQL readers wait for
the commit too, SQLite's (WAL) keep reading the previous snapshot.

Memory stays bounded by one chunk: the file streams through the staging table, which
lives in the database's own temporary storage.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
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
_TIMESTAMP_COLUMNS = ("synced_at", "resolved_at")
# The indexes are rebuilt rather than maintained when the new rows number at least
# INDEX_REBUILD_MIN_ROWS and the table holds at most INDEX_REBUILD_MAX_EXISTING_PER_NEW times as
# many. Measured on PostgreSQL, 1M rows: keeping sync_log's unique and three secondary indexes
# up to date costs about 20 us per inserted row, building them about 6 us per stored row.
INDEX_REBUILD_MIN_ROWS = 50_000
INDEX_REBUILD_MAX_EXISTING_PER_NEW = 2
# PostgreSQL settings for the moving transaction only: memory to sort with while rebuilding an
# index, memory per join of the staged rows against the store (without it the joins spill to
# disk), and no JIT compilation (the joins' estimates make the planner expect hours of work and
# compile for seconds).
_PG_MOVE_SETTINGS = {"maintenance_work_mem": "256MB", "work_mem": "64MB", "jit": "off"}
# SQLite settings while importing: a page cache of 128 MiB for the store (negative means KiB;
# index maintenance and rebuilds touch pages all over the user, entity and time indexes), up to
# two sorter threads for the index rebuilds, and no zeroing of the staging table's freed pages
# (the store's own pages keep the build's secure_delete setting).
_SQLITE_IMPORT_PRAGMAS = {"main.cache_size": -131_072, "threads": 2, "temp.secure_delete": 0}
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


def _timestamp_for(column: pa.Array, dialect: str) -> pa.Array:
    """A UTC timestamp column as the staging table takes it.

    PostgreSQL: integer microseconds since the epoch (the move turns them into
    ``timestamptz``); SQLite: the text SQLAlchemy's ``DateTime`` stores
    (``2026-01-05 09:30:00.250000``). Both skip Arrow's per-value time zone formatting.
    """
    if dialect == "postgresql":
        return column.cast(pa.int64())
    return column.cast(pa.timestamp("us")).cast(pa.string())


def _staged_columns(chunk: pa.Table, *, dialect: str) -> list[pa.Array]:
    columns: list[pa.Array] = []
    for name in _STAGED_COLUMNS:
        column = chunk.column(name).combine_chunks()
        if name == "changed_fields":
            column = field_lists_as_json(column)
        elif name in _TIMESTAMP_COLUMNS:
            column = _timestamp_for(column, dialect)
        columns.append(column)
    return columns


def load_chunks(
    engine: Engine,
    chunks: Iterable[pa.Table],
    *,
    progress: Progress | None = None,
    rebuild_indexes: bool | None = None,
) -> tuple[int, int]:
    """Stage every chunk, then insert the new events in one transaction; ``(rows_read, inserted)``.

    An error raised while the chunks are produced (a validation error at any row) leaves the
    store as it was. ``rebuild_indexes`` forces (``True``) or forbids (``False``) moving the
    rows with ``sync_log``'s secondary indexes dropped and rebuilt; ``None`` decides by the
    number of new rows against the rows already stored.
    """
    dialect = engine.dialect.name
    if dialect == "postgresql":
        return _load_postgres(engine, chunks, progress, rebuild_indexes)
    if dialect == "sqlite":
        return _load_sqlite(engine, chunks, progress, rebuild_indexes)
    raise StoreError(f"sync event import does not support the {dialect!r} dialect")


@contextmanager
def _raw_connection(engine: Engine) -> Iterator[Any]:
    pooled = engine.raw_connection()
    try:
        yield pooled.driver_connection
    finally:
        pooled.close()


def _rebuild_pays_off(new_rows: int, stored_rows: int) -> bool:
    return new_rows >= INDEX_REBUILD_MIN_ROWS and stored_rows <= INDEX_REBUILD_MAX_EXISTING_PER_NEW * new_rows


def _bounded_count_sql(new_rows: int) -> str:
    """Counts ``sync_log`` only as far as the rebuild decision needs (past that, the count is moot)."""
    limit = INDEX_REBUILD_MAX_EXISTING_PER_NEW * new_rows + 1
    return f"SELECT count(*) FROM (SELECT 1 FROM sync_log LIMIT {limit:d}) AS stored"


@dataclass(frozen=True)
class _SavedIndex:
    """A ``sync_log`` index (or the unique constraint it backs) as the statements dropping and recreating it."""

    name: str
    drop: str
    create: str


def _recreate(cursor: Any, indexes: Iterable[_SavedIndex]) -> None:
    for index in indexes:
        cursor.execute(index.create)


# --------------------------------------------------------------------------- PostgreSQL

_PG_STAGING_DDL = (
    f"CREATE TEMP TABLE {STAGING_TABLE} ("
    " event_id text NOT NULL, user_id text NOT NULL, device_id text NOT NULL,"
    " entity_type text NOT NULL, entity_id text NOT NULL, changed_fields json NOT NULL,"
    " synced_at bigint NOT NULL, conflict boolean NOT NULL,"
    " base_version integer, server_version integer,"
    " resolution_type text, resolved_at bigint"
    ") ON COMMIT DROP"
)
# sync_log's keys and indexes, each as the DDL dropping and recreating it, in dropping order:
# the foreign keys referring to it (checked once, when re-added, instead of row by row), its
# constraints (primary key, unique), then its plain indexes.
_PG_INDEXES = """
SELECT con.conname,
       format('ALTER TABLE %s DROP CONSTRAINT %I', con.conrelid::regclass, con.conname),
       format('ALTER TABLE %s ADD CONSTRAINT %I %s',
              con.conrelid::regclass, con.conname, pg_get_constraintdef(con.oid)),
       1 AS step
  FROM pg_constraint con
 WHERE con.confrelid = 'sync_log'::regclass AND con.contype = 'f'
UNION ALL
SELECT con.conname,
       format('ALTER TABLE sync_log DROP CONSTRAINT %I', con.conname),
       format('ALTER TABLE sync_log ADD CONSTRAINT %I %s', con.conname, pg_get_constraintdef(con.oid)),
       2
  FROM pg_constraint con
 WHERE con.conrelid = 'sync_log'::regclass AND con.contype IN ('p', 'u')
UNION ALL
SELECT index.relname,
       format('DROP INDEX %I.%I', space.nspname, index.relname),
       pg_get_indexdef(entry.indexrelid),
       3
  FROM pg_index entry
  JOIN pg_class index ON index.oid = entry.indexrelid
  JOIN pg_namespace space ON space.oid = index.relnamespace
 WHERE entry.indrelid = 'sync_log'::regclass
   AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = entry.indexrelid)
 ORDER BY step, 1
"""


def _pg_timestamp(column: str) -> str:
    # float8 * interval is exact here: instants up to 2200 are below 2**53 microseconds.
    return f"timestamptz 'epoch' + {column} * interval '1 microsecond'"


def _pg_move_sql(*, skip_stored: bool) -> str:
    """Staged syncs into ``sync_log`` and their resolutions, counting the new syncs.

    ``skip_stored``: let the unique index skip event ids already stored; otherwise the staging
    table holds only new events (see :func:`_pg_drop_stored`).
    """
    columns = ", ".join(SYNC_LOG_COLUMNS)
    values = ", ".join(_pg_timestamp(name) if name in _TIMESTAMP_COLUMNS else name for name in SYNC_LOG_COLUMNS)
    conflict = " ON CONFLICT (event_id) DO NOTHING" if skip_stored else ""
    return (
        f"WITH inserted AS ("
        f" INSERT INTO sync_log ({columns}) SELECT {values} FROM {STAGING_TABLE}{conflict}"
        f" RETURNING id, event_id"
        f"), resolved AS ("
        f" INSERT INTO conflict_resolution (sync_id, resolution_type, resolved_at)"
        f" SELECT inserted.id, COALESCE(s.resolution_type, '{DEFAULT_RESOLUTION_TYPE}'),"
        f" {_pg_timestamp('s.resolved_at')}"
        f" FROM inserted JOIN {STAGING_TABLE} s USING (event_id) WHERE s.resolved_at IS NOT NULL"
        f" RETURNING 1"
        f") SELECT count(*) FROM inserted"
    )


def _pg_stage(cursor: Any, chunks: Iterable[pa.Table], progress: Progress | None) -> int:
    csv_options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
    copy_sql = f"COPY {STAGING_TABLE} ({', '.join(_STAGED_COLUMNS)}) FROM STDIN (FORMAT csv)"
    rows = 0
    cursor.execute(_PG_STAGING_DDL)
    with cursor.copy(copy_sql) as copy:
        for chunk in chunks:
            staged = pa.Table.from_arrays(_staged_columns(chunk, dialect="postgresql"), names=list(_STAGED_COLUMNS))
            sink = pa.BufferOutputStream()
            pacsv.write_csv(staged, sink, write_options=csv_options)
            copy.write(memoryview(sink.getvalue()))
            rows += chunk.num_rows
            if progress is not None:
                progress(chunk.num_rows)
    # Row count and the two join columns' statistics: all the move's plans need.
    cursor.execute(f"ANALYZE {STAGING_TABLE} (event_id, resolved_at)")
    return rows


def _pg_drop_stored(cursor: Any) -> int:
    """Removes staged events already in ``sync_log`` and blocks other writers; the new rows left."""
    cursor.execute("LOCK TABLE sync_log IN SHARE ROW EXCLUSIVE MODE")
    cursor.execute(f"DELETE FROM {STAGING_TABLE} s USING sync_log t WHERE t.event_id = s.event_id")
    cursor.execute(f"SELECT count(*) FROM {STAGING_TABLE}")
    return int(cursor.fetchone()[0])


def _pg_indexes(cursor: Any) -> list[_SavedIndex]:
    """In dropping order; they are recreated in the reverse order."""
    cursor.execute(_PG_INDEXES)
    return [_SavedIndex(name, drop, create) for name, drop, create, _ in cursor.fetchall()]


def _pg_count_stored(cursor: Any, new_rows: int) -> int:
    cursor.execute(_bounded_count_sql(new_rows))
    return int(cursor.fetchone()[0])


def _pg_move(cursor: Any, rows_read: int, rebuild_indexes: bool | None) -> int:
    """Moves the staged rows into the store (in the caller's transaction); the new syncs."""
    for name, value in _PG_MOVE_SETTINGS.items():
        cursor.execute("SELECT set_config(%s, %s, true)", (name, value))
    stored_dropped = False
    if rebuild_indexes is None:
        rebuild_indexes = False
        if _rebuild_pays_off(rows_read, _pg_count_stored(cursor, rows_read)):
            # The file's size alone says so; decide again on the events not stored yet.
            new_rows, stored_dropped = _pg_drop_stored(cursor), True
            rebuild_indexes = _rebuild_pays_off(new_rows, _pg_count_stored(cursor, new_rows))
    if not rebuild_indexes:
        cursor.execute(_pg_move_sql(skip_stored=True))
        return int(cursor.fetchone()[0])
    if not stored_dropped:
        _pg_drop_stored(cursor)
    cursor.execute("LOCK TABLE sync_log, conflict_resolution IN ACCESS EXCLUSIVE MODE")
    indexes = _pg_indexes(cursor)
    for index in indexes:
        cursor.execute(index.drop)
    cursor.execute(_pg_move_sql(skip_stored=False))
    inserted = int(cursor.fetchone()[0])
    _recreate(cursor, reversed(indexes))
    return inserted


def _load_postgres(
    engine: Engine, chunks: Iterable[pa.Table], progress: Progress | None, rebuild_indexes: bool | None
) -> tuple[int, int]:
    with _raw_connection(engine) as connection:
        try:
            with connection.cursor() as cursor:
                rows_read = _pg_stage(cursor, chunks, progress)
                inserted = _pg_move(cursor, rows_read, rebuild_indexes)
            connection.commit()
        except BaseException:
            connection.rollback()
            raise
    return rows_read, inserted


# --------------------------------------------------------------------------- SQLite

_SQLITE_STAGING_DDL = (
    f"CREATE TEMP TABLE {STAGING_TABLE} ("
    " event_id TEXT NOT NULL, user_id TEXT NOT NULL, device_id TEXT NOT NULL,"
    " entity_type TEXT NOT NULL, entity_id TEXT NOT NULL, changed_fields TEXT NOT NULL,"
    " synced_at TEXT NOT NULL, conflict INTEGER NOT NULL,"
    " base_version INTEGER, server_version INTEGER,"
    " resolution_type TEXT, resolved_at TEXT)"
)
# The indexes a statement created (a UNIQUE constraint's own index has no SQL and stays).
_SQLITE_SECONDARY_INDEXES = (
    "SELECT name, sql FROM main.sqlite_master WHERE type = 'index' AND tbl_name = 'sync_log' AND sql IS NOT NULL"
)
_SQLITE_MOVE_SYNCS = (
    f"INSERT INTO sync_log ({', '.join(SYNC_LOG_COLUMNS)})"
    f" SELECT {', '.join(SYNC_LOG_COLUMNS)} FROM temp.{STAGING_TABLE} WHERE true"
    f" ON CONFLICT (event_id) DO NOTHING"
)
# The new syncs are those above the largest id before the insert (the write lock is held from
# before that read), because INSERT ... SELECT cannot return their ids.
_SQLITE_MOVE_RESOLUTIONS = (
    f"INSERT INTO conflict_resolution (sync_id, resolution_type, resolved_at)"
    f" SELECT sync_log.id, COALESCE(s.resolution_type, '{DEFAULT_RESOLUTION_TYPE}'), s.resolved_at"
    f" FROM temp.{STAGING_TABLE} s JOIN sync_log ON sync_log.event_id = s.event_id"
    f" WHERE s.resolved_at IS NOT NULL AND sync_log.id > ?"
)


def _sqlite_secondary_indexes(connection: sqlite3.Connection) -> list[_SavedIndex]:
    return [
        _SavedIndex(name, f'DROP INDEX main."{name}"', sql)
        for name, sql in connection.execute(_SQLITE_SECONDARY_INDEXES).fetchall()
    ]


def _sqlite_stage(connection: sqlite3.Connection, chunks: Iterable[pa.Table], progress: Progress | None) -> int:
    """Stages the chunks in the connection's temporary database: no lock on the store."""
    placeholders = ", ".join("?" for _ in _STAGED_COLUMNS)
    stage_sql = f"INSERT INTO temp.{STAGING_TABLE} VALUES ({placeholders})"
    rows = 0
    connection.execute(f"DROP TABLE IF EXISTS temp.{STAGING_TABLE}")
    connection.execute(_SQLITE_STAGING_DDL)
    connection.execute("BEGIN")
    for chunk in chunks:
        columns = [column.to_pylist() for column in _staged_columns(chunk, dialect="sqlite")]
        connection.executemany(stage_sql, zip(*columns, strict=True))
        rows += chunk.num_rows
        if progress is not None:
            progress(chunk.num_rows)
    connection.execute("COMMIT")
    return rows


def _sqlite_count_new(connection: sqlite3.Connection) -> int:
    (new_rows,) = connection.execute(
        f"SELECT count(*) FROM temp.{STAGING_TABLE} s"
        f" WHERE NOT EXISTS (SELECT 1 FROM main.sync_log t WHERE t.event_id = s.event_id)"
    ).fetchone()
    return int(new_rows)


def _sqlite_move(connection: sqlite3.Connection, rows_read: int, rebuild_indexes: bool | None) -> int:
    """Moves the staged rows into the store (in the caller's write transaction); the new syncs."""
    (largest_before,) = connection.execute("SELECT COALESCE(MAX(id), 0) FROM sync_log").fetchone()
    if rebuild_indexes is None:
        (stored,) = connection.execute(_bounded_count_sql(rows_read)).fetchone()
        rebuild_indexes = _rebuild_pays_off(rows_read, stored) and _rebuild_pays_off(
            _sqlite_count_new(connection), stored
        )
    indexes = _sqlite_secondary_indexes(connection) if rebuild_indexes else []
    for index in indexes:
        connection.execute(index.drop)
    connection.execute(_SQLITE_MOVE_SYNCS)
    connection.execute(_SQLITE_MOVE_RESOLUTIONS, (largest_before,))
    _recreate(connection, indexes)
    (inserted,) = connection.execute("SELECT count(*) FROM sync_log WHERE id > ?", (largest_before,)).fetchone()
    return int(inserted)


@contextmanager
def _sqlite_pragmas(connection: sqlite3.Connection, settings: dict[str, int]) -> Iterator[None]:
    """PRAGMAs set for the block and restored after it (the connection goes back to the pool)."""
    previous = {name: connection.execute(f"PRAGMA {name}").fetchone()[0] for name in settings}
    try:
        for name, value in settings.items():
            connection.execute(f"PRAGMA {name}={value:d}")
        yield
    finally:
        for name, value in previous.items():
            connection.execute(f"PRAGMA {name}={value:d}")


def _load_sqlite(
    engine: Engine, chunks: Iterable[pa.Table], progress: Progress | None, rebuild_indexes: bool | None
) -> tuple[int, int]:
    with _raw_connection(engine) as connection:
        assert isinstance(connection, sqlite3.Connection)
        isolation_level = connection.isolation_level
        connection.isolation_level = None  # explicit BEGIN/COMMIT below
        try:
            with _sqlite_pragmas(connection, _SQLITE_IMPORT_PRAGMAS):
                rows_read = _sqlite_stage(connection, chunks, progress)
                connection.execute("BEGIN IMMEDIATE")
                inserted = _sqlite_move(connection, rows_read, rebuild_indexes)
                connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        finally:
            with suppress(sqlite3.Error):
                connection.execute(f"DROP TABLE IF EXISTS temp.{STAGING_TABLE}")
            connection.isolation_level = isolation_level
    return rows_read, inserted
