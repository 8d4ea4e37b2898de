"""FeatureLookup's event window at a large tenant's scale: 1 M and 10 M events over 30 days.

    .venv/bin/python bench/bench_feature_window.py [--events 1000000,10000000] [--store-rows 200000]

For each size, in a fresh process (so peak RSS is that size's own): synthesizes the events of
30 days (users and entities in proportion, log-normal activity, 1–3 changed fields each,
~5% conflicts) as the
events as compact numpy columns, loads them into an ``OnlineFeatureLookup``'s event window
with the window's own ``refresh`` (its store query answered with Arrow pages built from those
columns, as a store's rows arrive), builds the user index,
and prints

    load      wall and CPU seconds to append every page and build the index (target <= 60 s)
    RSS       the process's peak resident memory after loading (target <= 2 GiB)
    batch     CPU ms per ``compute_many`` of 8 requests x 50 items and of 1 single item,
              averaged over many batches of the benchmark's request mix (target: 10 M within
              1.5x of 1 M)

then the verdicts. ``--store-rows N`` also measures reading N events from a SQLite store the
way the window's first load does (``tail_events`` pages), and prints that rate scaled to each
size: the store read is the other half of a replica's start, measured on fewer rows because
inserting 10 M rows here takes far longer than reading them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DAY_MS = 86_400_000
FIELDS = ["title", "status", "notes", "due", "owner", "priority", "tags", "assignee", "location", "photos"]
PAGE_ROWS = 50_000
LOAD_TARGET_S = 60.0
RSS_TARGET_MIB = 2048.0
BATCH_RATIO_TARGET = 1.5


def _rss_mib() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MiB."""
    current = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            current = int(line.split()[1]) / 1024
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tenant(events: int) -> tuple[int, int]:
    """Users and entities of a tenant with ``events`` syncs in 30 days (about 500 syncs per user)."""
    users = max(events // 500, 10)
    return users, users * 10


def _activity(n: int, seed: int) -> np.ndarray:
    """Each of ``n`` users' (or entities') share of the syncs: log-normal, so a few are many times busier."""
    weights = np.random.default_rng(seed).lognormal(0.0, 1.0, n)
    return weights / weights.sum()


class SyntheticStore:
    """``events`` events over the 30 days before ``now_ms`` as compact numpy columns (~26 bytes an
    event), answering the window's tail query page by page, each page built fresh as a store's is."""

    def __init__(self, events: int, now_ms: int, seed: int = 0):
        from conflict_core.schema import EVENT_SCHEMA

        rng = np.random.default_rng(seed)
        n_users, n_entities = tenant(events)
        self.events = events
        self.seed = seed
        self.times = np.sort(rng.integers(now_ms - 30 * DAY_MS + 60_000, now_ms - 1000, events))
        self.user = rng.choice(n_users, events, p=_activity(n_users, 10)).astype(np.int32)
        self.entity = rng.choice(n_entities, events, p=_activity(n_entities, 11)).astype(np.int32)
        self.n_fields = rng.integers(1, 4, events).astype(np.int8)
        self.conflict = rng.random(events) < 0.05
        self.user_names = pa.array([f"user-{k}" for k in range(n_users)])
        self.entity_names = pa.array([f"task-{k}" for k in range(n_entities)])
        fields = {f.name: f for f in EVENT_SCHEMA}  # the store's own types and nullability
        names = ("user_id", "entity_type", "entity_id", "changed_fields", "synced_at", "conflict", "resolved_at")
        self.schema = pa.schema([pa.field("row_id", pa.int64())] + [fields[n] for n in names])

    @property
    def nbytes(self) -> int:
        arrays = (self.times, self.user, self.entity, self.n_fields, self.conflict)
        return sum(a.nbytes for a in arrays) + self.user_names.nbytes + self.entity_names.nbytes

    def page(self, after_id: int, limit: int | None = None) -> pa.Table:
        """Rows with id > ``after_id`` (ids are 1..events, in time order), at most ``limit``."""
        lo = min(after_id, self.events)
        hi = self.events if limit is None else min(lo + limit, self.events)
        rng = np.random.default_rng((self.seed, lo))
        n = hi - lo
        times = self.times[lo:hi]
        conflict = self.conflict[lo:hi]
        offsets = np.concatenate([[0], np.cumsum(self.n_fields[lo:hi], dtype=np.int32)]).astype(np.int32)
        field_values = pc.take(pa.array(FIELDS), pa.array(rng.integers(0, len(FIELDS), int(offsets[-1]))))
        resolved = times + rng.integers(60_000, 3_600_000, n)
        columns = [
            pa.array(np.arange(lo + 1, hi + 1), pa.int64()),
            pc.take(self.user_names, pa.array(self.user[lo:hi])),
            pa.array(["task"] * n, pa.string()),
            pc.take(self.entity_names, pa.array(self.entity[lo:hi])),
            pa.ListArray.from_arrays(pa.array(offsets), field_values),
            pa.array(times, pa.timestamp("ms", tz="UTC")),
            pa.array(conflict),
            pa.array(np.where(conflict, resolved, 0), pa.timestamp("ms", tz="UTC"), mask=~conflict),
        ]
        return pa.Table.from_arrays(columns, names=self.schema.names).cast(self.schema)


def requests(events: int, count: int, size: int, seed: int = 1) -> list[list[dict[str, Any]]]:
    """Request items naming the tenant's users and entities (busy ones more often), instant: now."""
    rng = np.random.default_rng(seed)
    n_users, n_entities = tenant(events)
    users = rng.choice(n_users, (count, size), p=_activity(n_users, 10))
    entities = rng.choice(n_entities, (count, size), p=_activity(n_entities, 11))
    return [
        [
            {
                "user_id": f"user-{users[r, k]}",
                "entity_type": "task",
                "entity_id": f"task-{entities[r, k]}",
                "changed_fields": [str(f) for f in rng.choice(FIELDS, 2, replace=False)],
                "at": None,
            }
            for k in range(size)
        ]
        for r in range(count)
    ]


def measure(events: int, batches: int) -> dict[str, Any]:
    """Load ``events`` into a window in this process; load time, RSS and per-batch CPU."""
    from conflict_core import db
    from conflict_core.store import utcnow
    from serve_app.feature_lookup import OnlineFeatureLookup

    now_ms = int(utcnow().timestamp() * 1000)
    source = SyntheticStore(events, now_ms)
    rss_before, _ = _rss_mib()
    now = dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC)
    with tempfile.TemporaryDirectory(prefix="bench_window_") as tmp:
        url = f"sqlite:///{Path(tmp) / 'empty.db'}"
        db.upgrade(url)
        # No background refresh: the window holds exactly the synthetic events.
        lookup = OnlineFeatureLookup(url, refresh_interval_s=3600, max_staleness_s=7200)
        try:
            window_module: Any = sys.modules[type(lookup.window).__module__]

            def tail(engine: object, *, after_id: int, limit: int | None = None, **_: object) -> pa.Table:
                # The store's answer to the window's tail query: rows after ``after_id``, in id order.
                return source.page(after_id, limit)

            real_tail, window_module.tail_events = window_module.tail_events, tail
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                loaded = lookup.window.refresh(now)  # the first load: page by page, as from the store
            finally:
                window_module.tail_events = real_tail
            rss_window, _ = _rss_mib()
            lookup._maybe_rebuild_index()
            load_wall, load_cpu = time.perf_counter() - wall, time.process_time() - cpu
            if loaded != events:
                raise RuntimeError(f"the window loaded {loaded:,} of {events:,} events")
            rss_after, peak = _rss_mib()
            result: dict[str, Any] = {
                "events": events,
                "users": tenant(events)[0],
                "entities": tenant(events)[1],
                "load_wall_s": round(load_wall, 2),
                "load_cpu_s": round(load_cpu, 2),
                "synthetic_source_mib": round(source.nbytes / 2**20, 1),
                "rss_before_mib": round(rss_before, 1),
                "rss_window_mib": round(rss_window, 1),
                "rss_after_mib": round(rss_after, 1),
                "peak_rss_mib": round(peak, 1),
            }
            for label, count, size in (("8x50", 8, 50), ("1x1", 1, 1)):
                mix = requests(events, batches * count, size)
                groups = [mix[k : k + count] for k in range(0, len(mix), count)]
                lookup.compute_many(groups[0])  # warm: lazily built arrays
                started = time.process_time()
                for group in groups:
                    lookup.compute_many(group)
                result[f"batch_{label}_cpu_ms"] = round((time.process_time() - started) / len(groups) * 1000, 3)
        finally:
            lookup.close()
    return result


def store_read(rows: int) -> dict[str, Any]:
    """Rows/s of the window's first load from a SQLite store of ``rows`` events (tail_events pages)."""
    import pandas as pd

    from conflict_core import db
    from conflict_core.events.store_writes import insert_event_frame
    from conflict_core.store import make_engine, make_session_factory, session_scope, utcnow
    from serve_app.feature_lookup import EventWindow

    now = utcnow()
    events = SyntheticStore(rows, int(now.timestamp() * 1000)).page(0)
    frame = events.drop(["row_id"]).to_pandas()
    frame["changed_fields"] = pd.Series(events.column("changed_fields").to_pylist(), dtype=object)
    frame["event_id"] = [f"e{k}" for k in range(len(frame))]
    frame["device_id"] = "d"
    frame["resolution_type"] = frame["conflict"].map({True: "manual", False: None})
    with tempfile.TemporaryDirectory(prefix="bench_window_store_") as tmp:
        url = f"sqlite:///{Path(tmp) / 'store.db'}"
        db.upgrade(url)
        engine = make_engine(url)
        with session_scope(make_session_factory(engine)) as session:
            insert_event_frame(session, frame)
        window = EventWindow(engine, dt.timedelta(days=30))
        wall, cpu = time.perf_counter(), time.process_time()
        loaded = window.refresh(now)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        engine.dispose()
    return {"rows": loaded, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "rows_per_s": round(loaded / wall)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", default="1000000,10000000", help="Window sizes, comma-separated.")
    parser.add_argument("--batches", type=int, default=100, help="Batches timed per size and kind.")
    parser.add_argument("--store-rows", type=int, default=0, help="Also time reading this many rows from SQLite.")
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # a child process: one size
    a = parser.parse_args()
    if a.one:
        print(json.dumps(measure(a.one, a.batches)), flush=True)
        return
    print(f"machine: {os.cpu_count()} CPUs, {sys.platform}, Python {sys.version.split()[0]}", flush=True)
    results = []
    for events in (int(e) for e in a.events.split(",")):
        child = subprocess.run(
            [sys.executable, __file__, "--one", str(events), "--batches", str(a.batches)],
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode != 0:
            print(f"{events:,} events: failed\n{child.stderr[-3000:]}", flush=True)
            continue
        r = json.loads(child.stdout.strip().splitlines()[-1])
        results.append(r)
        print(
            f"{events:>11,} events ({r['users']:,} users, {r['entities']:,} entities): "
            f"load {r['load_wall_s']:.1f} s wall / {r['load_cpu_s']:.1f} s CPU, "
            f"peak RSS {r['peak_rss_mib']:,.0f} MiB (window loaded {r['rss_window_mib']:,.0f}, with the user "
            f"index {r['rss_after_mib']:,.0f}; "
            f"the synthetic source, held throughout {r['synthetic_source_mib']:,.0f}), "
            f"batch 8x50 {r['batch_8x50_cpu_ms']:.2f} ms CPU, 1x1 {r['batch_1x1_cpu_ms']:.2f} ms CPU",
            flush=True,
        )
    read = store_read(a.store_rows) if a.store_rows else None
    if read:
        print(
            f"store read (SQLite, tail_events pages): {read['rows']:,} rows in {read['wall_s']:.1f} s "
            f"({read['rows_per_s']:,} rows/s, {read['cpu_s']:.1f} s CPU)",
            flush=True,
        )
    print("\n== verdicts", flush=True)
    for r in results:
        start = r["load_wall_s"] + (r["events"] / read["rows_per_s"] if read else 0.0)
        how = "window load + store read scaled from the measured rate" if read else "window load only (no store read)"
        print(
            f"[{'MET' if start <= LOAD_TARGET_S else 'NOT MET':7s}] {r['events']:,} events: start <= 60 s: "
            f"{start:.1f} s ({how})"
        )
        print(
            f"[{'MET' if r['peak_rss_mib'] <= RSS_TARGET_MIB else 'NOT MET':7s}] {r['events']:,} events: "
            f"RSS <= 2 GiB: peak {r['peak_rss_mib']:,.0f} MiB"
        )
    if len(results) >= 2:
        small, large = results[0], results[-1]
        for key in ("batch_8x50_cpu_ms", "batch_1x1_cpu_ms"):
            ratio = large[key] / max(small[key], 1e-9)
            print(
                f"[{'MET' if ratio <= BATCH_RATIO_TARGET else 'NOT MET':7s}] {key}: {large['events']:,} / "
                f"{small['events']:,} events = {ratio:.2f} (<= {BATCH_RATIO_TARGET})"
            )


if __name__ == "__main__":
    main()
