from __future__ import annotations

import datetime as dt
from pathlib import Path

import joblib
import pytest
from sqlalchemy.orm import Session, sessionmaker

from conflict_core import registry
from conflict_core.errors import ArtifactIntegrityError, RegistryError

T0 = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)


def _add(session: Session, tmp_path: Path, version: str) -> None:
    path = tmp_path / f"{version}.joblib"
    joblib.dump({"estimator": None, "feature_columns": ["a"]}, path)
    registry.register(
        session,
        version=version,
        algorithm="hgb",
        params={},
        metrics={"holdout": {"roc_auc": 0.9}},
        feature_columns=["a"],
        train_samples=10,
        holdout_samples=5,
        training_window_start=T0,
        training_window_end=T0,
        artifact_path=str(path),
        artifact_sha256=registry.sha256_file(path),
    )


@pytest.fixture
def three(session_factory: sessionmaker[Session], tmp_path: Path) -> sessionmaker[Session]:
    with session_factory.begin() as session:
        for v in ("v20260501_000001", "v20260501_000002", "v20260501_000003"):
            _add(session, tmp_path, v)
    return session_factory


def test_activation_keeps_exactly_one_active_and_records_who(three: sessionmaker[Session]) -> None:
    for i, v in enumerate(("v20260501_000001", "v20260501_000002")):
        with three.begin() as session:
            registry.activate(session, v, by="ops", now=T0 + dt.timedelta(hours=i))
    with three() as session:
        rows = registry.list_versions(session)
        assert [r.version for r in rows if r.is_active] == ["v20260501_000002"]
        active = registry.active(session)
        assert active is not None and active.activated_by == "ops" and active.activated_at == T0 + dt.timedelta(hours=1)
        assert registry.get(session, "v20260501_000001").status == "retired"


def test_rollback_returns_to_the_previous_active_model(three: sessionmaker[Session]) -> None:
    for i, v in enumerate(("v20260501_000001", "v20260501_000002")):
        with three.begin() as session:
            registry.activate(session, v, by="ops", now=T0 + dt.timedelta(hours=i))
    with three.begin() as session:
        assert registry.rollback(session, by="oncall").version == "v20260501_000001"
    with three() as session:
        assert registry.active(session).version == "v20260501_000001"  # type: ignore[union-attr]


def test_rollback_without_history_is_refused(three: sessionmaker[Session]) -> None:
    with pytest.raises(RegistryError, match="no previously active model"), three.begin() as session:
        registry.rollback(session, by="oncall")


def test_tampered_artifact_is_refused_and_nothing_changes(three: sessionmaker[Session]) -> None:
    with three.begin() as session:
        registry.activate(session, "v20260501_000001", by="ops")
        path = Path(registry.get(session, "v20260501_000002").artifact_path)
    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(ArtifactIntegrityError, match="sha256"), three.begin() as session:
        registry.activate(session, "v20260501_000002", by="ops")
    with pytest.raises(ArtifactIntegrityError):
        registry.load_artifact(path, registry.sha256_file(path)[::-1])
    with three() as session:
        assert registry.active(session).version == "v20260501_000001"  # type: ignore[union-attr]


def test_unknown_version_and_inactive_deactivation_are_clear_errors(three: sessionmaker[Session]) -> None:
    with pytest.raises(RegistryError, match="no model version 'v1'"), three.begin() as session:
        registry.activate(session, "v1", by="ops")
    with pytest.raises(RegistryError, match="is not active"), three.begin() as session:
        registry.deactivate(session, "v20260501_000003")


@pytest.mark.parametrize(
    ("candidate", "active", "expected"),
    [
        (0.74, None, False),  # below the floor
        (0.80, None, True),  # first model over the floor
        (0.90, 0.86, False),  # +4.7%
        (0.91, 0.86, True),  # +5.8%
        (0.74, 0.60, False),  # much better but under the floor
    ],
)
def test_gate(candidate: float, active: float | None, expected: bool) -> None:
    decision = registry.gate(
        candidate_roc_auc=candidate, active_roc_auc=active, min_relative_improvement=0.05, quality_floor=0.75
    )
    assert decision.activate is expected
    assert f"{candidate:.4f}" in decision.reason


def test_gate_names_an_active_model_it_could_not_score() -> None:
    decision = registry.gate(
        candidate_roc_auc=0.8,
        active_roc_auc=None,
        min_relative_improvement=0.05,
        quality_floor=0.75,
        active_unscorable="v1: sha256 mismatch",
    )
    assert decision.activate and "first model" not in decision.reason
    assert decision.reason.startswith("the active model cannot be scored (v1: sha256 mismatch); holdout ROC-AUC 0.8000")


def test_version_names() -> None:
    assert registry.new_version(dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)) == "v20260304_050607"
