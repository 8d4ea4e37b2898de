"""Stand-ins for the retrain's data steps, shared by the retrain tests and the lifecycle child
process: a registered model without training, and a train step that registers and gates a new
version the way the pipeline does (its result dict has the pipeline's keys)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.orm import Session, sessionmaker

from conflict_core import registry
from conflict_core.settings import Settings
from conflict_core.store import session_scope

NOW = dt.datetime(2026, 3, 2, 3, 0, tzinfo=dt.UTC)
CONFIG = {
    "applications": [
        {
            "name": "conflict_predictor",
            "import_path": "serve_app.app:build",
            "deployments": [{"name": "ModelInference", "user_config": {"model_version": "v_old"}}],
        }
    ]
}


def retrain_settings(root: Path, database_url: str, **overrides: Any) -> Settings:
    """Settings over ``database_url`` with data and a live serve config (:data:`CONFIG`) under ``root``;
    nothing listens at the dashboard address, so no running app is reconfigured."""
    config = root / "serve_config.yaml"
    config.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    return Settings(
        database_url=database_url,
        data_dir=root / "data",
        serve_config_path=config,
        dashboard_url="http://127.0.0.1:9",
        **overrides,
    )


def add_model(
    settings: Settings, factory: sessionmaker[Session], version: str, *, activate: bool, by: str = "manual"
) -> registry.GateDecision:
    artifact = settings.models_dir / version / "model.joblib"
    artifact.parent.mkdir(parents=True, exist_ok=True)
    artifact.write_bytes(version.encode())
    with session_scope(factory) as session:
        registry.register(
            session,
            version=version,
            algorithm="logreg",
            params={},
            metrics={"holdout": {"roc_auc": 0.8}},
            feature_columns=["concurrent_editors"],
            train_samples=100,
            holdout_samples=20,
            training_window_start=NOW,
            training_window_end=NOW,
            artifact_path=str(artifact),
            artifact_sha256=registry.sha256_file(artifact),
        )
        if activate:
            registry.activate(session, version, by=by)
    return registry.GateDecision(activate, "test")


def fake_train(settings: Settings, factory: sessionmaker[Session], version: str, *, gate: bool) -> dict[str, Any]:
    """What the train step returns after registering ``version``: the gate's decision pending
    ("activate" when ``gate`` passes), carried out by the retrain's publish step."""
    add_model(settings, factory, version, activate=False)
    with factory() as session:
        row = registry.get(session, version)
        active = registry.active(session)
    return {
        "version": version,
        "algorithm": "logreg",
        "activated": False,
        "pending": "activate" if gate else None,
        "active_before": active.version if active else None,
        "gate_reason": "test gate",
        "holdout": {"roc_auc": 0.9},
        "active_before_holdout": {"roc_auc": 0.8},
        "report_path": "r.md",
        "artifact_path": row.artifact_path,
        "artifact_sha256": row.artifact_sha256,
    }
