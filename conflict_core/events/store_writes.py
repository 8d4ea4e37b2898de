"""Writing sync events into the store.

* :func:`import_events` loads a Parquet or CSV file in the import format
  (:mod:`conflict_core.schema`) all-or-nothing: chunk by chunk, each validated and staged,
  then inserted in one transaction. Events whose ``event_id`` is already stored are
  skipped, so re-importing a file is harmless.
* :func:`insert_event_frame` writes already-validated events into an open session.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Table, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from conflict_core.errors import StoreError
from conflict_core.events.bulk_load import DEFAULT_RESOLUTION_TYPE, load_chunks
from conflict_core.events.readers import DEFAULT_CHUNK_ROWS, Progress, iter_event_chunks
from conflict_core.schema import (
    EVENT_SCHEMA,
    REQUIRED_COLUMNS,
    SYNC_LOG_COLUMNS,
)
from conflict_core.store import ConflictResolution, SyncLog

_SYNC_TABLE = cast(Table, SyncLog.__table__)
_RESOLUTION_TABLE = cast(Table, ConflictResolution.__table__)
# Rows per executemany call: bounds the driver-side parameter copies, not the transaction.
_STATEMENT_ROWS = 10_000


@dataclass(frozen=True)
class ImportResult:
    """Outcome of one file import; ``rows_read == inserted + skipped_existing``."""

    path: Path
    rows_read: int
    inserted: int
    skipped_existing: int


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
        rows = _parameter_rows(events.slice(start, _STATEMENT_ROWS), SYNC_LOG_COLUMNS)
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


def import_events(
    target: sessionmaker[Session] | Engine,
    path: Path,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    rebuild_indexes: bool | None = None,
) -> ImportResult:
    """Import a Parquet or CSV event file, all or nothing, in one streaming pass.

    Each chunk is validated and staged (:mod:`conflict_core.events.bulk_load`); the events
    move into the store in one transaction only once the whole file has validated, so a bad
    file leaves the store untouched. ``progress`` receives the rows of each staged chunk.
    ``rebuild_indexes`` is :func:`~conflict_core.events.bulk_load.load_chunks`'s: by default a
    batch large next to the table is moved with the secondary indexes rebuilt afterwards.
    """
    path = Path(path)
    engine = target if isinstance(target, Engine) else target.kw["bind"]
    if not isinstance(engine, Engine):
        raise TypeError(f"expected an Engine or a sessionmaker bound to one, got {type(engine).__name__}")
    chunks = iter_event_chunks(path, chunk_rows=chunk_rows)
    rows_read, inserted = load_chunks(engine, chunks, progress=progress, rebuild_indexes=rebuild_indexes)
    return ImportResult(path=path, rows_read=rows_read, inserted=inserted, skipped_existing=rows_read - inserted)
