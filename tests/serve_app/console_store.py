"""A console-ready store: registered models with real artifacts, predictions, monitoring, jobs."""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression

from conflict_core import db, registry, tokens
from conflict_core.features import ALL_FEATURES
from conflict_core.settings import Settings
from conflict_core.store import AlertState, JobRun, MonitoringRun, PredictionLog, make_engine, make_session_factory

REPO = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
# version → holdout ROC-AUC: one of each colour band
MODELS = {"v_good": 0.91, "v_fair": 0.70, "v_poor": 0.55}


@dataclass
class ConsoleStore:
    url: str
    settings: Settings
    admin: str
    reader: str
    revoked_admin: str


def artifact(directory: Path, version: str) -> Path:
    rng = np.random.default_rng(0)
    x = rng.random((100, len(ALL_FEATURES)))
    model = LogisticRegression().fit(x, (x[:, 0] > 0.5).astype(int))
    path = directory / f"{version}.joblib"
    joblib.dump({"estimator": model, "feature_columns": list(ALL_FEATURES), "version": version}, path)
    return path


def build(root: Path, url: str | None = None, predictions: int = 120) -> ConsoleStore:
    url = url or f"sqlite:///{root / 'store.db'}"
    db.upgrade(url)
    models_dir = root / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    report = models_dir / "report"
    report.mkdir(exist_ok=True)
    (report / "report.md").write_text("# report\n")
    shutil.copy(REPO / "serve_config.yaml", root / "serve_config.yaml")
    # A tiny valid PNG (1x1) stands in for a report plot.
    (report / "roc.png").write_bytes(
        bytes.fromhex(
            "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8cfc0"
            "f01f0005000201a5f6e2f10000000049454e44ae426082"
        )
    )
    engine = make_engine(url)
    with make_session_factory(engine).begin() as session:
        for i, (version, roc) in enumerate(MODELS.items()):
            path = artifact(models_dir, version)
            registry.register(
                session,
                version=version,
                algorithm="logistic_regression" if i % 2 else "hgb",
                params={"C": 1.0},
                metrics={
                    "holdout": {"roc_auc": roc, "pr_auc": roc / 2, "brier": 0.05},
                    "seed_baseline_holdout": {"roc_auc": 0.89, "pr_auc": 0.38, "brier": 0.13},
                },
                feature_columns=list(ALL_FEATURES),
                train_samples=1000 * (i + 1),
                holdout_samples=200,
                training_window_start=NOW - dt.timedelta(days=90),
                training_window_end=NOW,
                artifact_path=str(path),
                artifact_sha256=registry.sha256_file(path),
                report_path=str(report / "report.md"),
                gate_decision="first model" if i == 0 else "kept as a candidate",
                created_at=NOW + dt.timedelta(minutes=i),
            )
        registry.activate(session, "v_good", by="tests", now=NOW)
        for i in range(predictions):
            probability = [0.05, 0.3, 0.7][i % 3]
            session.add(
                PredictionLog(
                    prediction_id=f"p{i:05d}",
                    model_version="v_good" if i % 4 else registry.HEURISTIC_VERSION,
                    sync_id=f"s{i}",
                    user_id=f"u{i % 5}",
                    device_id="d",
                    entity_type="task" if i % 2 else "form",
                    entity_id=f"t{i}",
                    predicted_conflict=probability > 0.5,
                    probability=probability,
                    risk_level=["low", "medium", "high"][i % 3],
                    recommendation=["sync_now", "fetch_first", "warn_user"][i % 3],
                    features={},
                    fallback_reason=None if i % 4 else "no_active_model",
                    created_at=NOW - dt.timedelta(minutes=i),
                    prediction_correct=None if i % 5 == 0 else bool(i % 2),
                    actual_conflict_occurred=None if i % 5 == 0 else bool(i % 3),
                )
            )
        for day in range(3):
            session.add(
                MonitoringRun(
                    ran_at=NOW - dt.timedelta(days=2 - day),
                    model_version="v_good",
                    updated_count=10,
                    labelled_count=100 + day,
                    metrics={
                        "accuracy": 0.9 - day / 100,
                        "fallback_rate": 0.01,
                        "model": {"precision": 0.5, "recall": 0.8, "pr_auc": 0.6, "brier": 0.04, "ece": 0.02},
                        "drift": {"psi": {"concurrent_editors": 0.05, "user_conflict_rate": 0.31}},
                    },
                    alerts=["psi_user_conflict_rate"] if day == 2 else [],
                )
            )
        session.add(AlertState(name="psi_user_conflict_rate", firing=True, since=NOW, last_value=0.31, message="drift"))
        session.add(AlertState(name="accuracy_low", firing=False, since=None, last_value=0.9, message="recovered"))
        session.add(
            JobRun(
                job="retrain",
                started_at=NOW - dt.timedelta(hours=1),
                finished_at=NOW,
                status="succeeded",
                summary={"headline": "kept as a candidate"},
            )
        )
        admin = tokens.create(session, name="ops-alice", scopes=["admin"])[1]
        reader = tokens.create(session, name="reader", scopes=["read", "predict"])[1]
        revoked_admin = tokens.create(session, name="ex-admin", scopes=["admin"])[1]
        tokens.revoke(session, "ex-admin")
    engine.dispose()
    settings = Settings(
        database_url=url,
        data_dir=root,
        serve_config_path=root / "serve_config.yaml",
        dashboard_url="http://127.0.0.1:9",  # nothing listens: no running app to reconfigure
        token_cache_ttl_s=0.2,
    )
    return ConsoleStore(url, settings, admin, reader, revoked_admin)
