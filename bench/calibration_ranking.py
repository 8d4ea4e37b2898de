"""What calibration does to the ranking: each configuration's holdout metrics uncalibrated, isotonic, Platt.

    python bench/calibration_ranking.py [--profile slow] [--users 150] [--days 300] [--days-back 90]
                                        [--num-samples 4] [--seed 1]

Simulates the profile (seed 1, as ``bench/model_quality.py``), and for each feature parameter
candidate of the search extracts the training set, splits it in time, fits the seed baseline
and the sampled configurations on the fit slice, calibrates each on the calibration slice both
ways, and prints holdout PR-AUC / ROC-AUC (and, calibrated, Brier / ECE and the number of
distinct probabilities).
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from conflict_core import db
from conflict_core.events.export import export_events
from conflict_core.events.store_writes import insert_event_frame
from conflict_core.features import ALL_FEATURES
from conflict_core.simulator import profile_config, simulate
from conflict_core.store import make_engine, make_session_factory
from training import feature_search, selection, tune
from training.evaluate import expected_calibration_error
from training.extract import ExtractionWindow, extract_local, latest_event_time, partition_files
from training.train import LABEL, calibrate, fit_candidate, time_split

END = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def _ranking(y: np.ndarray, proba: np.ndarray) -> str:
    return f"{average_precision_score(y, proba):.4f} / {roc_auc_score(y, proba):.4f}"


def _calibration(y: np.ndarray, proba: np.ndarray) -> str:
    return f"{brier_score_loss(y, proba):.4f} / {expected_calibration_error(y, proba):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="slow")
    parser.add_argument("--users", type=int, default=150)
    parser.add_argument("--days", type=int, default=300)
    parser.add_argument("--days-back", type=int, default=90)
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        table = simulate(
            profile_config(
                args.profile, users=args.users, days=args.days, seed=args.seed, start=END - dt.timedelta(days=args.days)
            )
        )
        url = f"sqlite:///{root / 'store.db'}"
        db.upgrade(url)
        engine = make_engine(url)
        with make_session_factory(engine).begin() as session:
            insert_event_frame(session, table)
        export_events(engine, root / "events")
        engine.dispose()
        end = latest_event_time(root / "events")
        configs = [selection.SEED_CONFIG, *tune.sample_configs(args.num_samples)]
        print(
            "| parameters | model | uncalibrated PR / ROC | isotonic PR / ROC | Platt PR / ROC "
            "| isotonic Brier / ECE (distinct) | Platt Brier / ECE |"
        )
        print("|---|---|---|---|---|---|---|")
        for params in feature_search.DEFAULT_CANDIDATES:
            window = ExtractionWindow.days_back(args.days_back, end=end, params=params)
            split = time_split(extract_local(partition_files(root / "events", window), window, params))
            y = split.holdout[LABEL].to_numpy()
            for config in configs:
                columns = selection.columns_for(config, ALL_FEATURES)
                estimator, _ = fit_candidate(config, columns, split.fit, split.calibration)
                raw = estimator.predict_proba(split.holdout[columns])[:, 1]
                calibrated = {
                    method: calibrate(estimator, split.calibration, columns, method=method).predict_proba(
                        split.holdout[columns]
                    )[:, 1]
                    for method in ("isotonic", "sigmoid")
                }
                iso, platt = calibrated["isotonic"], calibrated["sigmoid"]
                print(
                    f"| {feature_search.label(params)} | {config['model']} | {_ranking(y, raw)} | {_ranking(y, iso)} | "
                    f"{_ranking(y, platt)} | {_calibration(y, iso)} ({len(np.unique(iso))}) | "
                    f"{_calibration(y, platt)} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
