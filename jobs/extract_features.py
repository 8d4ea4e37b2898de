"""Ray Job: exported sync events → point-in-time training set.

ray job submit --working-dir . -- python -m jobs.extract_features --days-back 90
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs._runtime import base_parser, run, settings_from


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--days-back", type=int, default=None, help="target window length in days (default: settings)")
    parser.add_argument("--events-dir", help="exported events (default: <data-dir>/events)")
    parser.add_argument("--out", help="training sets root (default: <data-dir>/features)")
    parser.add_argument("--local", action="store_true", help="compute in this process instead of Ray tasks")
    args = parser.parse_args(argv)
    settings = settings_from(args)

    from ray_control.instance import connect
    from training.extract import extract_training_set

    if not args.local:
        connect(settings.ray_address)
    return extract_training_set(
        settings,
        days_back=args.days_back,
        events_dir=Path(args.events_dir) if args.events_dir else None,
        out_root=Path(args.out) if args.out else None,
        use_ray=not args.local,
        progress=lambda done, total: print(f"feature tasks: {done}/{total}", flush=True),
    )


if __name__ == "__main__":
    run(main)
