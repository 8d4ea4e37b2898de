"""Ray Job: training set → swept, calibrated model → report → registry → gate.

ray job submit --working-dir . -- python -m jobs.train
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from pathlib import Path
from typing import Any

from jobs._runtime import base_parser, init_ray, run, settings_from


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--training-set", help="snapshot folder (default: the latest under <data-dir>/features)")
    parser.add_argument("--num-samples", type=int, default=None, help="sweep size (default: settings)")
    parser.add_argument("--local-sweep", action="store_true", help="run the sweep in this process, not on Ray Tune")
    parser.add_argument("--activated-by", default="gate:jobs.train", help="recorded on activation")
    args = parser.parse_args(argv)
    settings = settings_from(args)

    from conflict_core import db, locks
    from conflict_core.store import make_engine, make_session_factory
    from ray_control.serve_deploy import applier
    from training import retrain
    from training.pipeline import train_and_register
    from training.publishing import publish_active_model

    db.upgrade(settings.database_url)
    if not args.local_sweep:
        init_ray(settings)
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    try:
        # The weekly retrain's lock: a manual training and the retrain never gate and activate
        # at the same time (each would compare its candidate with a model about to be replaced).
        with locks.job_lock(sessions, retrain.LOCK_NAME, ttl=dt.timedelta(hours=6)):
            result = train_and_register(
                settings,
                sessions,
                training_set=Path(args.training_set) if args.training_set else settings.features_dir,
                sweep="local" if args.local_sweep else "ray",
                num_samples=args.num_samples,
                activated_by=args.activated_by,
                progress=lambda message: print(message, flush=True),
            )
            published = None
            if result.activated:
                published = publish_active_model(
                    settings,
                    version=result.version,
                    artifact_path=result.artifact_path,
                    artifact_sha256=result.artifact_sha256,
                    apply=applier(settings.dashboard_url),
                )
    finally:
        engine.dispose()
    return {**result.to_dict(), **(asdict(published) if published else {})}


if __name__ == "__main__":
    run(main)
