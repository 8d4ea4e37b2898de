"""Holdout quality per simulator tempo profile: fixed vs learned feature parameters, model vs seed baseline.

    python bench/model_quality.py [--profiles fast,slow] [--users 200] [--num-samples 6] [--ray]

For each profile: simulate, import into a fresh SQLite store, export, then

* **fixed** — extract with the default feature parameters and train (sweep, selection,
  calibration) exactly as the training job does;
* **learned** — search the candidate feature parameters (one extraction per candidate) and
  train on the winner.

Prints ROC-AUC, PR-AUC, Brier and ECE with 95% bootstrap intervals and the holdout positives,
for the shipped model and the seed baseline, and which parameters won. ``--ray`` runs the
search's extractions as Ray tasks (wrap the command in ``flock /tmp/conflict-ray.lock``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from conflict_core import db, registry
from conflict_core.events.export import export_events
from conflict_core.events.store_writes import insert_event_frame
from conflict_core.features import FeatureParams
from conflict_core.settings import Settings
from conflict_core.simulator import profile_config, simulate
from conflict_core.store import make_engine, make_session_factory
from training import feature_search
from training.extract import ExtractionWindow, extract_local, latest_event_time, partition_files, write_training_set
from training.pipeline import SEED_BASELINE, train_and_register

END = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
SIZES = {"fast": {"days": 60, "days_back": 45}, "slow": {"days": 300, "days_back": 90}}


def _row(name: str, metrics: dict[str, float], intervals: dict[str, Any], positives: int, samples: int) -> str:
    cells = [
        f"{metrics[k]:.4f} [{intervals[k][0]:.4f}, {intervals[k][1]:.4f}]"
        for k in ("roc_auc", "pr_auc", "brier", "ece")
    ]
    return f"| {name} | " + " | ".join(cells) + f" | {positives} of {samples} |"


def _train(
    settings: Settings, training_set: Path, num_samples: int, searched: Any = None, seed_set: Path | None = None
) -> dict[str, Any]:
    engine = make_engine(settings.database_url)
    try:
        result = train_and_register(
            settings,
            make_session_factory(engine),
            training_set=training_set,
            sweep="local",
            num_samples=num_samples,
            feature_search=searched,
            seed_training_set=seed_set,
        )
        with make_session_factory(engine)() as session:
            row = registry.get(session, result.version)
            metrics = dict(row.metrics)
            algorithm = row.algorithm
    finally:
        engine.dispose()
    report = json.loads((Path(result.report_path).parent / "metrics.json").read_text())["holdout"]
    return {"result": result, "metrics": metrics, "algorithm": algorithm, "holdout": report}


def run_profile(profile: str, root: Path, args: argparse.Namespace) -> list[str]:
    size = SIZES[profile]
    settings = Settings(
        database_url=f"sqlite:///{root / 'store.db'}", data_dir=root, serve_config_path=root / "none.yaml"
    )
    db.upgrade(settings.database_url)
    started = time.perf_counter()
    table = simulate(
        profile_config(
            profile, users=args.users, days=size["days"], seed=args.seed, start=END - dt.timedelta(days=size["days"])
        )
    )
    engine = make_engine(settings.database_url)
    with make_session_factory(engine).begin() as session:
        insert_event_frame(session, table)
    export_events(engine, settings.events_dir)
    engine.dispose()
    rate = sum(table["conflict"].to_pylist()) / table.num_rows
    print(
        f"[{profile}] {table.num_rows:,} events, {rate:.2%} conflicts ({time.perf_counter() - started:.0f} s)",
        flush=True,
    )

    end = latest_event_time(settings.events_dir)
    params = FeatureParams()
    window = ExtractionWindow.days_back(size["days_back"], end=end, params=params)
    files = partition_files(settings.events_dir, window)
    fixed_set, _ = write_training_set(
        extract_local(files, window, params), settings.features_dir / "fixed", window=window, params=params, files=files
    )
    fixed = _train(settings, fixed_set, args.num_samples)
    print(f"[{profile}] fixed params trained ({time.perf_counter() - started:.0f} s)", flush=True)

    if args.ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        searched = feature_search.search(
            settings.events_dir,
            settings.features_dir / "search",
            end=end,
            days_back=size["days_back"],
            num_samples=args.num_samples,
            use_ray=args.ray,
            progress=lambda message: print(f"[{profile}] {message}", flush=True),
        )
    finally:
        if args.ray:
            ray.shutdown()
    learned = _train(
        settings, Path(searched[0].training_set), args.num_samples, searched, seed_set=fixed_set
    )  # the seed baseline stays the original system: seed features with the fixed parameters
    print(
        f"[{profile}] learned params ({searched[0].label}) trained ({time.perf_counter() - started:.0f} s)", flush=True
    )

    lines = [
        f"### {profile} profile: {table.num_rows:,} events over {size['days']} days, {rate:.2%} conflicts; "
        f"targets: the last {size['days_back']} days",
        "",
        "| model | ROC-AUC [95% CI] | PR-AUC [95% CI] | Brier [95% CI] | ECE [95% CI] | holdout positives |",
        "|---|---|---|---|---|---|",
    ]
    for variant, run in (("fixed params", fixed), (f"learned params ({searched[0].label})", learned)):
        version = run["result"].version
        holdout, intervals = run["holdout"], run["metrics"]["holdout_intervals"]
        shipped = holdout[version]
        lines.append(
            _row(
                f"{variant}: {run['algorithm']}", shipped, intervals[version], shipped["positives"], shipped["samples"]
            )
        )
        seed = holdout[SEED_BASELINE]
        lines.append(
            _row(f"{variant}: seed baseline", seed, intervals[SEED_BASELINE], seed["positives"], seed["samples"])
        )
    lines += [
        "",
        "Feature parameter search (validation, best first):",
        "",
        *feature_search.search_section(searched)[2:],
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="fast,slow")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--num-samples", type=int, default=6)
    parser.add_argument("--ray", action="store_true", help="run the search's extractions as Ray tasks")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    out: list[str] = []
    for profile in [p.strip() for p in args.profiles.split(",") if p.strip()]:
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            out += run_profile(profile, Path(tmp), args)
    print("\n".join(out))


if __name__ == "__main__":
    main()
