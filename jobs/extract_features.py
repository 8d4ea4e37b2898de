"""Ray Job: exported sync events → point-in-time training set.

ray job submit --working-dir . -- python -m jobs.extract_features --days-back 90
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jobs._runtime import base_parser, init_ray, run, settings_from


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--days-back", type=int, default=None, help="target window length in days (default: settings)")
    parser.add_argument("--events-dir", help="exported events (default: <data-dir>/events)")
    parser.add_argument("--out", help="training sets root (default: <data-dir>/features)")
    parser.add_argument("--local", action="store_true", help="compute in this process instead of Ray tasks")
    args = parser.parse_args(argv)
    settings = settings_from(args)

    from conflict_core.features import FeatureParams
    from training.extract import (
        ExtractionWindow,
        extract_local,
        extract_with_ray,
        latest_event_time,
        partition_files,
        write_training_set,
    )

    events_dir = Path(args.events_dir) if args.events_dir else settings.events_dir
    out_root = Path(args.out) if args.out else settings.features_dir
    params = FeatureParams()
    window = ExtractionWindow.days_back(
        args.days_back or settings.training_days_back, end=latest_event_time(events_dir), params=params
    )
    files = partition_files(events_dir, window)
    started = time.perf_counter()
    if args.local:
        frame = extract_local(files, window, params)
    else:
        init_ray(settings)
        frame = extract_with_ray(
            files,
            window,
            params,
            task_cpus=settings.job_task_cpus,
            progress=lambda done, total: print(f"feature tasks: {done}/{total}", flush=True),
        )
    elapsed = time.perf_counter() - started
    path, manifest = write_training_set(frame, out_root, window=window, params=params, files=files)
    return {
        "training_set": str(path),
        "rows": manifest.rows,
        "positive_rate": round(manifest.positive_rate, 5),
        "window": [manifest.window_start, manifest.window_end],
        "seconds": round(elapsed, 2),
        "events_per_second": round(manifest.rows / elapsed) if elapsed else None,
    }


if __name__ == "__main__":
    run(main)
