"""Exporting stored events as hive-partitioned Parquet.

:func:`export_events` writes ``date=YYYY-MM-DD`` partitions (the UTC day of ``synced_at``)
and replaces whole day partitions on re-export.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy.engine import Engine

from conflict_core.events.readers import DEFAULT_CHUNK_ROWS, Progress
from conflict_core.events.store_reads import event_select, require_utc, rows_to_table, time_window
from conflict_core.schema import (
    EVENT_SCHEMA,
    PARTITION_COLUMN,
)
from conflict_core.store import SyncLog


@dataclass(frozen=True)
class ExportResult:
    """Outcome of one export; ``partitions`` are the ``date=YYYY-MM-DD`` directories written."""

    out_dir: Path
    rows: int
    partitions: list[str]


def _whole_days(since: dt.datetime | None, until: dt.datetime | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The bounds widened to UTC midnights: partitions are replaced whole, so written whole."""
    require_utc(since, "since")
    require_utc(until, "until")

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
    statement = event_select().where(*time_window(start, end)).order_by(SyncLog.synced_at, SyncLog.id)
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
                    events = rows_to_table(batch)
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
