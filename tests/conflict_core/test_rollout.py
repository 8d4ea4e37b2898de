"""Rollout stages: allowed steps, one challenger beside one champion, every step recorded."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from conflict_core import registry, rollout, serve_config
from conflict_core.errors import ArtifactIntegrityError, RolloutError
from conflict_core.store import ModelVersion, RolloutDecision

NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)


def add(factory: sessionmaker[Session], tmp_path: Path, version: str, *, active: bool = False) -> None:
    artifact = tmp_path / f"{version}.joblib"
    artifact.write_bytes(version.encode())
    with factory.begin() as session:
        registry.register(
            session,
            version=version,
            algorithm="logreg",
            params={},
            metrics={"holdout": {"roc_auc": 0.8, "pr_auc": 0.5}},
            feature_columns=["concurrent_editors"],
            train_samples=10,
            holdout_samples=5,
            training_window_start=NOW,
            training_window_end=NOW,
            artifact_path=str(artifact),
            artifact_sha256=registry.sha256_file(artifact),
        )
        if active:
            registry.activate(session, version, by="test", now=NOW)


def stage(factory: sessionmaker[Session], version: str) -> str:
    with factory() as session:
        return registry.get(session, version).rollout_stage


@pytest.fixture
def models(session_factory: sessionmaker[Session], tmp_path: Path) -> sessionmaker[Session]:
    add(session_factory, tmp_path, "v1", active=True)
    add(session_factory, tmp_path, "v2")
    add(session_factory, tmp_path, "v3")
    return session_factory


def test_shadow_canary_promote_moves_the_stages_and_records_each_step(models: sessionmaker[Session]) -> None:
    with models.begin() as session:
        rollout.start_shadow(session, "v2", by="ops", now=NOW)
    assert stage(models, "v2") == "shadow"
    with models() as session:
        serving = rollout.serving(session)
    assert serving.champion and serving.champion.version == "v1"
    assert serving.challenger and serving.challenger.version == "v2" and serving.mode == "shadow"
    with models.begin() as session:
        rollout.start_canary(session, "v2", 10, by="ops", now=NOW + dt.timedelta(hours=1))
    with models() as session:
        serving = rollout.serving(session)
        row = registry.get(session, "v2")
        assert row.shadow_started_at == NOW and row.canary_started_at == NOW + dt.timedelta(hours=1)
    assert serving.mode == "canary" and serving.percent == 10
    with models.begin() as session:
        rollout.promote(session, "v2", by="ops", now=NOW + dt.timedelta(hours=2))
    assert (stage(models, "v1"), stage(models, "v2")) == ("retired", "active")
    with models() as session:
        assert registry.active(session).version == "v2"  # type: ignore[union-attr]
        assert rollout.challenger(session) is None
        actions = [(d.action, d.stage_before, d.stage_after) for d in reversed(rollout.decisions(session))]
    assert actions == [
        ("shadow", "candidate", "shadow"),
        ("canary", "shadow", "canary"),
        ("promote", "canary", "active"),
    ]


def test_only_one_challenger_at_a_time(models: sessionmaker[Session]) -> None:
    with models.begin() as session:
        rollout.start_shadow(session, "v2", by="ops")
    with pytest.raises(RolloutError, match="v2 is already the challenger"), models.begin() as session:
        rollout.start_canary(session, "v3", 5, by="ops")
    assert stage(models, "v3") == "candidate"


def test_the_store_refuses_a_second_challenger_whatever_the_application_checks(models: sessionmaker[Session]) -> None:
    with models.begin() as session:
        rollout.start_shadow(session, "v2", by="ops")
    with pytest.raises(IntegrityError), models.begin() as session:
        session.execute(update(ModelVersion).where(ModelVersion.version == "v3").values(is_challenger=True))


def test_a_challenger_needs_a_champion(session_factory: sessionmaker[Session], tmp_path: Path) -> None:
    add(session_factory, tmp_path, "v9")
    with pytest.raises(RolloutError, match="no model is active"), session_factory.begin() as session:
        rollout.start_shadow(session, "v9", by="ops")


@pytest.mark.parametrize("percent", [0, 100, -5, 150])
def test_canary_percent_must_be_strictly_between_0_and_100(models: sessionmaker[Session], percent: float) -> None:
    with pytest.raises(RolloutError, match="canary percent"), models.begin() as session:
        rollout.start_canary(session, "v2", percent, by="ops")


def test_steps_not_allowed_from_the_current_stage_are_refused(models: sessionmaker[Session]) -> None:
    with pytest.raises(RolloutError, match="v2 is candidate; moving it to active"), models.begin() as session:
        rollout.promote(session, "v2", by="ops")
    with models.begin() as session:
        rollout.abort(session, "v2", by="ops", reason="changed my mind")
    assert stage(models, "v2") == "aborted"
    with pytest.raises(RolloutError, match="v2 is aborted"), models.begin() as session:
        rollout.start_shadow(session, "v2", by="ops")
    with pytest.raises(RolloutError, match="v1 is active"), models.begin() as session:
        rollout.abort(session, "v1", by="ops")


def test_a_challenger_whose_artifact_fails_verification_is_refused(
    models: sessionmaker[Session], tmp_path: Path
) -> None:
    (tmp_path / "v2.joblib").write_bytes(b"tampered")
    with pytest.raises(ArtifactIntegrityError, match="sha256"), models.begin() as session:
        rollout.start_shadow(session, "v2", by="ops")
    assert stage(models, "v2") == "candidate"


def test_rollback_restores_the_previous_version_aborts_the_bad_one_and_a_running_challenger(
    models: sessionmaker[Session],
) -> None:
    with models.begin() as session:
        rollout.start_shadow(session, "v2", by="ops", now=NOW)
        rollout.promote(session, "v2", by="ops", now=NOW + dt.timedelta(hours=1))
        rollout.start_shadow(session, "v3", by="ops", now=NOW + dt.timedelta(hours=2))
    with models.begin() as session:
        bad, restored = rollout.rollback(session, by="auto", now=NOW + dt.timedelta(hours=3), reason="fell")
        assert (bad.version, restored.version) == ("v2", "v1")
    assert (stage(models, "v1"), stage(models, "v2"), stage(models, "v3")) == ("active", "aborted", "aborted")
    with models() as session:
        last = session.scalars(select(RolloutDecision).order_by(RolloutDecision.id.desc())).first()
        assert last is not None and last.action == "rollback" and last.champion_version == "v1"


def test_activating_directly_clears_a_challenger_flag(models: sessionmaker[Session]) -> None:
    with models.begin() as session:
        rollout.start_canary(session, "v2", 20, by="ops")
    with models.begin() as session:
        registry.activate(session, "v2", by="ops")
    with models() as session:
        assert rollout.challenger(session) is None
        assert rollout.serving(session).challenger is None


def test_serving_is_written_into_the_serve_config_and_read_back(models: sessionmaker[Session], tmp_path: Path) -> None:
    path = tmp_path / "serve_config.yaml"
    path.write_text(
        "# kept comment\n"
        + yaml.safe_dump(
            {"applications": [{"name": "a", "deployments": [{"name": "ModelInference", "user_config": {}}]}]}
        )
    )
    with models.begin() as session:
        rollout.start_canary(session, "v2", 12.5, by="ops")
    with models() as session:
        serve_config.set_serving(path, rollout.serving(session))
    user_config = serve_config.inference_user_config(serve_config.read(path))
    assert user_config["model_version"] == "v1"
    assert user_config["challenger"]["model_version"] == "v2"
    assert (user_config["challenger"]["mode"], user_config["challenger"]["percent"]) == ("canary", 12.5)
    assert path.read_text().startswith("# kept comment")
    # Activating the challenger's version outright drops the challenger block.
    serve_config.set_model(path, version="v2", artifact_path="p", artifact_sha256="s")
    assert serve_config.inference_user_config(serve_config.read(path))["challenger"] is None


def test_a_rolled_back_version_is_never_restored_by_a_later_rollback(models: sessionmaker[Session]) -> None:
    with models.begin() as session:
        rollout.start_shadow(session, "v2", by="ops", now=NOW)
        rollout.promote(session, "v2", by="ops", now=NOW + dt.timedelta(hours=1))
        rollout.rollback(session, by="auto", now=NOW + dt.timedelta(hours=2))
    with models() as session:
        restored = registry.active(session)
        assert restored is not None and restored.version == "v1"
        assert restored.activated_at == NOW + dt.timedelta(hours=2)  # the decision's (simulated) time
    with pytest.raises(RolloutError, match="no version was active before v1"), models.begin() as session:
        rollout.rollback(session, by="auto")
