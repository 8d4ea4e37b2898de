"""Import throughput and peak memory: a synthetic event file into fresh SQLite and PostgreSQL stores.

    python bench/bench_import.py [--rows 1000000] [--chunk-rows 50000] [--stores sqlite,postgresql]
                                 [--postgres-admin-url postgresql://postgres@127.0.0.1:5432/postgres]

Each store's import runs in its own process, so the peak RSS printed is that import's own.
The targets: 1M rows in <= 30 s into SQLite and <= 20 s into PostgreSQL (COPY), memory bounded.
A second import of the same file (every event already stored) is timed too. The 1-minute load
average before and after each store's run is printed with it: the machine may be shared.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
TARGET_SECONDS = {"sqlite": 30.0, "postgresql": 20.0}  # for 1M rows


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


@contextmanager
def _store(kind: str, workdir: Path, postgres_admin_url: str) -> Iterator[str]:
    """A freshly migrated, empty store of ``kind`` (a throwaway database on PostgreSQL)."""
    if kind == "sqlite":
        url = f"sqlite:///{workdir / 'store.db'}"
        db.upgrade(url)
        yield url
        return
    import psycopg

    name = f"bench_import_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(postgres_admin_url, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    base = postgres_admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        url = f"{base}/{name}"
        db.upgrade(url)
        yield url
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _import_in_child(kind: str, events: Path, chunk_rows: int, postgres_admin_url: str, out: Any) -> None:
    """One store's import in its own process, so its peak RSS is its own."""
    with tempfile.TemporaryDirectory(dir=events.parent) as tmp, _store(kind, Path(tmp), postgres_admin_url) as url:
        engine = make_engine(url)
        try:
            started = time.perf_counter()
            result = import_events(engine, events, chunk_rows=chunk_rows)
            elapsed = time.perf_counter() - started
            started = time.perf_counter()
            again = import_events(engine, events, chunk_rows=chunk_rows)
            reimport = time.perf_counter() - started
        finally:
            engine.dispose()
    out.put((result.rows_read, result.inserted, elapsed, again.inserted, reimport, _peak_rss_mb()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--stores", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--postgres-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--max-rss-mb", type=float, default=1024.0, help="memory bound for the verdict")
    args = parser.parse_args()
    stores = [kind.strip() for kind in args.stores.split(",") if kind.strip()]
    unknown = sorted(set(stores) - set(TARGET_SECONDS))
    if unknown:
        parser.error(f"unknown store(s) {unknown}; expected some of {sorted(TARGET_SECONDS)}")

    context = multiprocessing.get_context("spawn")
    verdicts: list[bool] = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        events = Path(tmp) / "events.parquet"
        started = time.perf_counter()
        write_synthetic_events(events, args.rows)
        print(
            f"generated {args.rows:,} rows ({events.stat().st_size / 1e6:.1f} MB Parquet) "
            f"in {time.perf_counter() - started:.1f} s"
        )
        for kind in stores:
            out = context.Queue()
            child = context.Process(
                target=_import_in_child, args=(kind, events, args.chunk_rows, args.postgres_admin_url, out)
            )
            load_before = os.getloadavg()[0]
            child.start()
            rows, inserted, elapsed, again, reimport, peak = out.get()
            child.join()
            load_after = os.getloadavg()[0]
            rate = rows / elapsed
            # The target is for 1M rows; smaller runs are judged by the same rate.
            budget = TARGET_SECONDS[kind] * rows / 1_000_000
            fast, small = elapsed <= budget, peak <= args.max_rss_mb
            verdicts += [fast, small]
            print(
                f"{kind:<10} imported {inserted:,} of {rows:,} rows in {elapsed:.1f} s: {rate:,.0f} rows/s "
                f"[{'PASS' if fast else 'FAIL'}: target <= {budget:.1f} s]; peak RSS {peak:.0f} MB "
                f"[{'PASS' if small else 'FAIL'}: bound {args.max_rss_mb:.0f} MB]; "
                f"re-import {reimport:.1f} s, {again:,} new; load average {load_before:.1f} -> {load_after:.1f}"
            )
    print("all targets met" if all(verdicts) else "some targets missed")


if __name__ == "__main__":
    main()
