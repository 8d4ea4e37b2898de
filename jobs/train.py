"""Ray Job: training set → swept, calibrated model → report → registry → gate → live serve config.

ray job submit --working-dir . -- python -m jobs.train
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs._runtime import base_parser, run, settings_from


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--training-set", help="snapshot folder (default: the latest under <data-dir>/features)")
    parser.add_argument("--num-samples", type=int, default=None, help="sweep size (default: settings)")
    parser.add_argument("--local-sweep", action="store_true", help="run the sweep in this process, not on Ray Tune")
    parser.add_argument("--activated-by", default="gate:jobs.train", help="recorded on activation")
    parser.add_argument(
        "--search-feature-params",
        action="store_true",
        help="extract one training set per candidate feature parameter set (Ray tasks) and train on the best",
    )
    parser.add_argument("--events-dir", help="exported events, for the search (default: <data-dir>/events)")
    parser.add_argument("--days-back", type=int, default=None, help="target window of the search (default: settings)")
    args = parser.parse_args(argv)
    settings = settings_from(args)

    from conflict_core import db
    from conflict_core.store import make_engine, make_session_factory
    from ray_control.instance import connect
    from ray_control.serve_deploy import applier
    from training.publishing import train_and_publish

    db.upgrade(settings.database_url)
    if not args.local_sweep:
        connect(settings.ray_address)
    engine = make_engine(settings.database_url)
    try:
        return train_and_publish(
            settings,
            make_session_factory(engine),
            training_set=Path(args.training_set) if args.training_set else None,
            sweep="local" if args.local_sweep else "ray",
            num_samples=args.num_samples,
            activated_by=args.activated_by,
            apply=applier(settings.dashboard_url),
            progress=lambda message: print(message, flush=True),
            search_feature_params=args.search_feature_params,
            events_dir=Path(args.events_dir) if args.events_dir else None,
            days_back=args.days_back,
        )
    finally:
        engine.dispose()


if __name__ == "__main__":
    run(main)
