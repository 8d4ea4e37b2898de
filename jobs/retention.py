"""Ray Job: delete training data (event exports, training sets, sweep trials) past retention.

    ray job submit --working-dir . -- python -m jobs.retention [--days 30] [--dry-run]

Prints what was deleted as JSON (also stored in ``job_run``); exits 1 on failure.
"""

from __future__ import annotations

from typing import Any

from jobs._runtime import base_parser, run, settings_from


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__.split("\n")[0], prog="jobs.retention")
    parser.add_argument("--days", type=int, help="keep data written in the last DAYS days (default: setting)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    args = parser.parse_args(argv)
    settings = settings_from(args)

    from conflict_core.store import make_engine, make_session_factory
    from training.retention import run_retention_job

    engine = make_engine(settings.database_url)
    try:
        result = run_retention_job(settings, make_session_factory(engine), days=args.days, dry_run=args.dry_run)
    finally:
        engine.dispose()
    verb = "would delete" if result.dry_run else "deleted"
    headline = (
        f"retention: {verb} {len(result.deleted)} folders ({result.bytes_freed / 1e6:.1f} MB) "
        f"written before {result.cutoff}"
    )
    return {**result.to_dict(), "headline": headline}


if __name__ == "__main__":
    run(main)
