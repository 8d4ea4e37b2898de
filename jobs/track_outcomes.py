"""Ray Job: link matured predictions to their sync outcomes, measure the live model, alert.

    ray job submit --working-dir . -- python -m jobs.track_outcomes [--now 2026-03-02T12:00:00Z]

Prints the run's summary as JSON and a one-line headline; exits 1 on failure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from typing import Any

from conflict_core.errors import ConflictPredictorError
from conflict_core.store import make_engine, make_session_factory
from jobs._runtime import base_parser, settings_from, utc_timestamp


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.split("\n")[0], prog="jobs.track_outcomes")
    p.add_argument("--now", type=utc_timestamp, help="the run's instant, for simulated time (default: now)")
    p.add_argument("--min-age-hours", type=float, help="youngest prediction to label (default: setting)")
    p.add_argument("--max-age-hours", type=float, help="oldest prediction to label (default: setting)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from training.outcomes import track_outcomes

    try:
        settings = settings_from(args)
        engine = make_engine(settings.database_url)
        hours: dict[str, Any] = {
            k: dt.timedelta(hours=v)
            for k, v in (("min_age", args.min_age_hours), ("max_age", args.max_age_hours))
            if v is not None
        }
        summary = track_outcomes(settings, make_session_factory(engine), now=args.now, **hours)
    except (ConflictPredictorError, ValueError) as exc:
        print(f"outcome tracking failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary.to_dict(), indent=2, default=str))
    accuracy = summary.metrics.get("accuracy")
    print(
        f"outcomes: {summary.updated} updated ({summary.labelled} labelled, {summary.no_sync} without a sync); "
        f"7-day accuracy {accuracy if accuracy is None else f'{accuracy:.3f}'} over {summary.metrics.get('labelled')}; "
        f"alerts firing: {', '.join(summary.alerts_firing) or 'none'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
