"""Ray Job: the weekly retrain — export, extract, train with a sweep, gate, publish, retention.

    ray job submit --working-dir . -- python -m jobs.retrain [--local] [--now 2026-03-02T03:00:00Z]

A failure at any step leaves the active model and the live serve config as they were. Prints
the run's summary as JSON (also stored in ``job_run``) and a headline; exits 1 on failure.
"""

from __future__ import annotations

from typing import Any

from jobs._runtime import JobError, base_parser, run, settings_from, utc_timestamp


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__.split("\n")[0], prog="jobs.retrain")
    parser.add_argument("--now", type=utc_timestamp, help="end of the training window, for simulated time")
    parser.add_argument("--local", action="store_true", help="extract and sweep in this process instead of on Ray")
    parser.add_argument("--num-samples", type=int, help="sweep configurations (default: setting)")
    args = parser.parse_args(argv)
    settings = settings_from(args)

    from conflict_core.store import make_engine, make_session_factory
    from ray_control.instance import connect
    from ray_control.serve_deploy import applier
    from training.retrain import RetrainError, retrain

    if not args.local:
        connect(settings.ray_address)  # the job's cluster, or settings.ray_address, before any step touches Ray
    engine = make_engine(settings.database_url)
    try:
        summary = retrain(
            settings,
            make_session_factory(engine),
            engine,
            now=args.now,
            use_ray=not args.local,
            sweep="local" if args.local else "ray",
            num_samples=args.num_samples,
            apply=applier(settings.dashboard_url),
            progress=lambda message: print(message, flush=True),
        )
    except RetrainError as exc:
        raise JobError(str(exc), _public(exc.summary.to_dict(), exc.summary.headline())) from exc
    finally:
        engine.dispose()
    return _public(summary.to_dict(), summary.headline())


def _public(summary: dict[str, Any], headline: str) -> dict[str, Any]:
    """The summary without what only a restore needs, with its headline."""
    return {**{k: v for k, v in summary.items() if k not in ("restore", "status")}, "headline": headline}


if __name__ == "__main__":
    run(main)
