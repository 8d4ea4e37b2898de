"""Event records and files in the import format, shared by the event package's tests."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

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
