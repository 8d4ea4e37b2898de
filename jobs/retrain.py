"""Ray Job: the weekly retrain — export, extract, train with a sweep, gate, publish, retention.

    ray job submit --working-dir . -- python -m jobs.retrain [--local] [--now 2026-03-02T03:00:00Z]

A failure at any step leaves the active model and serve_config.yaml as they were. Prints
the run's summary as JSON (also stored in ``job_run``) and a headline; exits 1 on failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from conflict_core.errors import ConflictPredictorError
from conflict_core.store import make_engine, make_session_factory
from jobs._runtime import base_parser, init_ray, settings_from, utc_timestamp


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.split("\n")[0], prog="jobs.retrain")
    p.add_argument("--now", type=utc_timestamp, help="end of the training window, for simulated time (default: now)")
    p.add_argument("--local", action="store_true", help="extract and sweep in this process instead of on Ray")
    p.add_argument("--num-samples", type=int, help="sweep configurations (default: setting)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ray_control.serve_deploy import applier
    from training.retrain import RetrainError, retrain

    try:
        settings = settings_from(args)
        if not args.local:
            init_ray(settings)  # the job's cluster, or settings.ray_address, before any step touches Ray
        engine = make_engine(settings.database_url)
        summary = retrain(
            settings,
            make_session_factory(engine),
            engine,
            now=args.now,
            use_ray=not args.local,
            sweep="local" if args.local else "ray",
            num_samples=args.num_samples,
            apply=applier(settings.dashboard_url),
            progress=print,
        )
    except RetrainError as exc:
        print(json.dumps({k: v for k, v in exc.summary.to_dict().items() if k != "restore"}, indent=2, default=str))
        print(exc.summary.headline(), file=sys.stderr)
        return 1
    except ConflictPredictorError as exc:
        print(f"retrain did not run: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in summary.to_dict().items() if k != "restore"}, indent=2, default=str))
    print(summary.headline())
    return 0


if __name__ == "__main__":
    sys.exit(main())
