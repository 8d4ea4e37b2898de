"""Import throughput and peak memory: a synthetic event file into a fresh SQLite store.

    python bench/bench_import.py [--rows 1000000] [--chunk-rows 50000] [--workdir DIR]

The Parquet file is generated in row groups so that generation itself stays small; the
peak RSS printed at the end is therefore dominated by the import.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from conflict_core import db
from conflict_core.events.store_writes import import_events
from conflict_core.schema import EVENT_SCHEMA
from conflict_core.store import make_engine

FIELD_SETS = [
    ["title"],
    ["status"],
    ["title", "status"],
    ["due_date"],
    ["assignee", "status", "notes"],
]
ENTITY_TYPES = np.array(["task", "note", "project", "comment"])
START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


def _field_lists(choice: np.ndarray) -> pa.Array:
    sets = pa.array(FIELD_SETS, pa.list_(pa.string()))
    return sets.take(pa.array(choice))


def _batch(rng: np.random.Generator, offset: int, rows: int) -> pa.Table:
    index = np.arange(offset, offset + rows)
    synced_us = START_US + index * 2_000_000 + rng.integers(0, 1_000_000, rows)
    conflict = rng.random(rows) < 0.12
    resolved = conflict & (rng.random(rows) < 0.8)
    resolved_us = np.where(resolved, synced_us + rng.integers(1, 3_600_000_000, rows), 0)
    base_version = rng.integers(1, 500, rows)
    columns = {
        "event_id": pa.array(np.char.add("evt-", index.astype(str))),
        "user_id": pa.array(np.char.add("u", rng.integers(0, 20_000, rows).astype(str))),
        "device_id": pa.array(np.char.add("d", rng.integers(0, 50_000, rows).astype(str))),
        "entity_type": pa.array(ENTITY_TYPES[rng.integers(0, len(ENTITY_TYPES), rows)]),
        "entity_id": pa.array(np.char.add("e", rng.integers(0, 200_000, rows).astype(str))),
        "changed_fields": _field_lists(rng.integers(0, len(FIELD_SETS), rows)),
        "synced_at": pa.array(synced_us, pa.int64()).cast(EVENT_SCHEMA.field("synced_at").type),
        "conflict": pa.array(conflict),
        "resolution_type": pa.array(np.full(rows, "server_wins"), mask=~resolved),
        "resolved_at": pa.array(resolved_us, pa.int64(), mask=~resolved).cast(EVENT_SCHEMA.field("resolved_at").type),
        "base_version": pa.array(base_version),
        "server_version": pa.array(base_version + conflict.astype(np.int64)),
    }
    return pa.table(columns, schema=EVENT_SCHEMA)


def _batches(rows: int, batch_rows: int = 100_000) -> Iterator[pa.Table]:
    rng = np.random.default_rng(7)
    for offset in range(0, rows, batch_rows):
        yield _batch(rng, offset, min(batch_rows, rows - offset))


def write_synthetic_events(path: Path, rows: int) -> None:
    with pq.ParquetWriter(path, EVENT_SCHEMA) as writer:
        for table in _batches(rows):
            writer.write_table(table)


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024  # bytes vs KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        workdir = Path(tmp)
        events = workdir / "events.parquet"
        started = time.perf_counter()
        write_synthetic_events(events, args.rows)
        print(
            f"generated {args.rows:,} rows ({events.stat().st_size / 1e6:.1f} MB Parquet) "
            f"in {time.perf_counter() - started:.1f} s; peak RSS so far {_peak_rss_mb():.0f} MB"
        )

        url = f"sqlite:///{workdir / 'store.db'}"
        db.upgrade(url)
        engine = make_engine(url)
        try:
            started = time.perf_counter()
            result = import_events(engine, events, chunk_rows=args.chunk_rows)
            elapsed = time.perf_counter() - started
        finally:
            engine.dispose()

    print(
        f"imported {result.inserted:,} rows (skipped {result.skipped_existing:,}) "
        f"in {elapsed:.1f} s: {result.rows_read / elapsed:,.0f} rows/s "
        f"(validation pass + insert pass)"
    )
    print(f"peak RSS {_peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
