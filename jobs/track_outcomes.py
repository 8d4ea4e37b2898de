"""Ray Job: link matured predictions to their sync outcomes, measure the live model, alert.

    ray job submit --working-dir . -- python -m jobs.track_outcomes [--now 2026-03-02T12:00:00Z]

Prints the run's summary as JSON and a one-line headline; exits 1 on failure.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from typing import Any

from jobs._runtime import base_parser, run, settings_from, utc_timestamp


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__.split("\n")[0], prog="jobs.track_outcomes")
    parser.add_argument("--now", type=utc_timestamp, help="the run's instant, for simulated time (default: now)")
    parser.add_argument("--min-age-hours", type=float, help="youngest prediction to label (default: setting)")
    parser.add_argument("--max-age-hours", type=float, help="oldest prediction to label (default: setting)")
    args = parser.parse_args(argv)
    settings = settings_from(args)

    from conflict_core.store import make_engine, make_session_factory
    from training.outcomes import track_outcomes

    hours: dict[str, Any] = {
        k: dt.timedelta(hours=v) for k, v in (("min_age", args.min_age_hours), ("max_age", args.max_age_hours)) if v
    }
    engine = make_engine(settings.database_url)
    try:
        sessions = make_session_factory(engine)
        summary = track_outcomes(settings, sessions, now=args.now, **hours)
        if summary.rollout.get("serving_changed"):
            # A promotion, abort or rollback: the app serves what the registry now says.
            from ray_control.serve_deploy import applier
            from training.publishing import publish_registry

            _, published = publish_registry(settings, sessions, apply=applier(settings.dashboard_url))
            summary.rollout.update(asdict(published))
    finally:
        engine.dispose()
    accuracy = summary.metrics.get("accuracy")
    headline = (
        f"outcomes: {summary.updated} updated ({summary.labelled} labelled, {summary.no_sync} without a sync); "
        f"7-day accuracy {accuracy if accuracy is None else f'{accuracy:.3f}'} over {summary.metrics.get('labelled')}; "
        f"alerts firing: {', '.join(summary.alerts_firing) or 'none'}"
    )
    for decision in summary.rollout.get("decisions", []):
        headline += f"\nrollout: {decision['action']} {decision['version']}: {decision['reason']}"
    return {**summary.to_dict(), "headline": headline}


if __name__ == "__main__":
    run(main)
