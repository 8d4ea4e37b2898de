"""Time the sync-history simulator at a given size.

python bench/bench_simulator.py --events 1000000
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time

import pyarrow as pa
import pyarrow.compute as pc

from conflict_core.simulator import simulate, simulation_size_for_events


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="approximate number of events")
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    config = simulation_size_for_events(args.events, days=args.days, seed=args.seed)
    started = time.perf_counter()
    table = simulate(config)
    seconds = time.perf_counter() - started
    rate = pc.mean(table["conflict"].cast(pa.float64())).as_py() or 0.0

    size = f"users={config.users} entities={config.entities} days={config.days}"
    python = f"{platform.python_implementation()} {platform.python_version()}"
    print(f"config        {size} seed={config.seed}")
    print(f"machine       {python}, {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"events        {table.num_rows:,}")
    print(f"seconds       {seconds:.2f}")
    print(f"events/s      {table.num_rows / seconds:,.0f}")
    print(f"conflict rate {rate:.2%}")
    print(f"peak RSS      {_peak_rss_mib():,.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
