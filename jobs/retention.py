"""Ray Job: delete training data (event exports, training sets, sweep trials) past retention.

    ray job submit --working-dir . -- python -m jobs.retention [--days 30] [--dry-run]

Prints what was deleted as JSON (also stored in ``job_run``); exits 1 on failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from conflict_core.errors import ConflictPredictorError
from conflict_core.store import make_engine, make_session_factory
from jobs._runtime import base_parser, settings_from


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.split("\n")[0], prog="jobs.retention")
    p.add_argument("--days", type=int, help="keep data written in the last DAYS days (default: setting)")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from training.retention import run_retention_job

    try:
        settings = settings_from(args)
        result = run_retention_job(
            settings, make_session_factory(make_engine(settings.database_url)), days=args.days, dry_run=args.dry_run
        )
    except (ConflictPredictorError, ValueError, OSError) as exc:
        print(f"retention failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.to_dict(), indent=2))
    verb = "would delete" if result.dry_run else "deleted"
    print(
        f"retention: {verb} {len(result.deleted)} folders ({result.bytes_freed / 1e6:.1f} MB) "
        f"written before {result.cutoff}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
