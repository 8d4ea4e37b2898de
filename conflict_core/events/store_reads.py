"""Reading sync events back from the store.

:func:`load_events` reads events as a pandas frame, filtered through the indexes;
:func:`tail_events` reads the events stored since a given row, for incremental readers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
from sqlalchemy import ColumnElement, Select, select, tuple_, union_all
from sqlalchemy.engine import Engine

from conflict_core.schema import (
    EVENT_SCHEMA,
    SYNC_LOG_COLUMNS,
)
from conflict_core.store import ConflictResolution, SyncLog


def event_select() -> Select[Any]:
    """Every stored event with its resolution, in ``EVENT_SCHEMA`` column order."""
    sources: dict[str, Any] = {name: getattr(SyncLog, name) for name in SYNC_LOG_COLUMNS}
    sources["resolution_type"] = ConflictResolution.resolution_type
    sources["resolved_at"] = ConflictResolution.resolved_at
    return select(*(sources[name] for name in EVENT_SCHEMA.names)).outerjoin(
        ConflictResolution, ConflictResolution.sync_id == SyncLog.id
    )


def require_utc(value: dt.datetime | None, name: str) -> None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")


def time_window(since: dt.datetime | None, until: dt.datetime | None) -> list[ColumnElement[bool]]:
    """``since <= synced_at < until``, either bound optional."""
    require_utc(since, "since")
    require_utc(until, "until")
    window: list[ColumnElement[bool]] = []
    if since is not None:
        window.append(SyncLog.synced_at >= since)
    if until is not None:
        window.append(SyncLog.synced_at < until)
    return window


def rows_to_table(rows: Sequence[Sequence[Any]]) -> pa.Table:
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
    window = time_window(since, until)
    users = None if user_ids is None else list(dict.fromkeys(user_ids))
    entities = None if entity_keys is None else list(dict.fromkeys(entity_keys))
    base = event_select().where(*window)
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
    return _events_frame(rows_to_table(rows))


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
    require_utc(since, "since")
    newer: ColumnElement[bool] = SyncLog.id > after_id
    if recheck_ids:
        newer = newer | SyncLog.id.in_(sorted(recheck_ids))
    statement = (
        event_select()
        .add_columns(SyncLog.id.label("row_id"))
        .where(newer, *time_window(since, None))
        .order_by(SyncLog.id)
    )
    if limit is not None:
        statement = statement.limit(limit)
    with engine.connect() as connection:
        rows = connection.execute(statement).all()
    events = rows_to_table([row[:-1] for row in rows])
    row_ids = pa.array([row[-1] for row in rows], pa.int64())
    return events.add_column(0, "row_id", row_ids)
