"""Feature extraction speed: Ray (Ray Data read + bucketed Ray tasks) vs one pandas process.

    .venv/bin/python bench/bench_extract.py --events 1000000

Simulates about N events, writes them as date-partitioned Parquet, then times both paths on
the same files (each including its Parquet read) and checks that they agree.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as pads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--entity-buckets", type=int, default=4)
    parser.add_argument("--user-buckets", type=int, default=2)
    args = parser.parse_args()

    import pandas as pd
    import ray

    from conflict_core.features import FeatureParams
    from conflict_core.simulator import simulate, simulation_size_for_events
    from training.extract import ExtractionWindow, extract_local, extract_with_ray, latest_event_time, partition_files

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        events_dir = Path(tmp) / "events"
        config = simulation_size_for_events(args.events, days=args.days)
        table = simulate(config)
        table = table.append_column("date", pc.strftime(table["synced_at"], format="%Y-%m-%d"))
        pads.write_dataset(table, events_dir, format="parquet", partitioning=["date"], partitioning_flavor="hive")
        print(f"events: {table.num_rows:,} over {args.days} days")
        window = ExtractionWindow.days_back(args.days, end=latest_event_time(events_dir), params=FeatureParams())
        files = partition_files(events_dir, window)

        started = time.perf_counter()
        local = extract_local(files, window)
        local_s = time.perf_counter() - started
        print(f"single process (pandas/numpy): {local_s:6.1f} s  {len(local) / local_s:10,.0f} events/s")

        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:
            extract_with_ray(files, window)  # warm the worker pool, as a long-running cluster is
            started = time.perf_counter()
            distributed = extract_with_ray(
                files, window, entity_buckets=args.entity_buckets, user_buckets=args.user_buckets
            )
            ray_s = time.perf_counter() - started
        finally:
            ray.shutdown()
        print(f"Ray Data + Ray tasks:          {ray_s:6.1f} s  {len(distributed) / ray_s:10,.0f} events/s")
        print(f"speed-up: {local_s / ray_s:.2f}x")
        pd.testing.assert_frame_equal(local, distributed)
        print("results identical: yes")
    print(f"peak RSS of the driver: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    print(f"at {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")


if __name__ == "__main__":
    main()
