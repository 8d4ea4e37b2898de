"""The weekly retrain puts a version that passes the gate into shadow (or canary), not live."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from conflict_core import registry, rollout, serve_config
from conflict_core.errors import ConfigurationError
from conflict_core.settings import Settings
from tests.training import retrain_fakes
from tests.training.retrain_fakes import NOW
from tests.training.test_retrain import (  # noqa: F401 (fixtures)
    active_version,
    fake_steps,
    settings,
)
from tests.training.test_train import trained  # noqa: F401 (fixture)
from training import pipeline, publishing, retrain


@pytest.fixture
def rollout_steps(
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,  # noqa: F811
    session_factory: sessionmaker[Session],
    fake_steps: dict[str, Any],  # noqa: F811
) -> dict[str, Any]:
    """A fake train step that, like the pipeline, leaves a rollout pending when the gate passes."""

    def fake_train(s: Settings, factory: sessionmaker[Session], **_: Any) -> dict[str, Any]:
        version = f"v_new{len(fake_steps)}"
        fake_steps[version] = True
        return {**retrain_fakes.fake_train(s, factory, version, gate=True), "pending": s.retrain_rollout_mode}

    monkeypatch.setattr(retrain, "train_step", fake_train)
    return fake_steps


def run(
    settings: Settings,  # noqa: F811
    factory: sessionmaker[Session],
    apply: Callable[[Path], bool] | None = None,
) -> retrain.RetrainSummary:
    return retrain.retrain(settings, factory, factory.kw["bind"], now=NOW, use_ray=False, sweep="local", apply=apply)


@pytest.mark.parametrize("mode", ["shadow", "canary"])
def test_a_gate_passing_version_becomes_the_challenger_and_is_published_beside_the_champion(
    mode: str,
    settings: Settings,  # noqa: F811
    session_factory: sessionmaker[Session],
    rollout_steps: dict[str, Any],
) -> None:
    settings = settings.model_copy(update={"retrain_rollout_mode": mode, "rollout_canary_percent": 15.0})
    summary = run(settings, session_factory)
    assert summary.status == "succeeded" and not summary.activated and summary.rollout_stage == mode
    assert f"put in {mode}" in summary.headline()
    assert active_version(session_factory) == "v_old"
    user_config = serve_config.inference_user_config(serve_config.read(settings.serve_config_path))
    assert user_config["model_version"] == "v_old"
    assert user_config["challenger"]["model_version"] == summary.version
    assert user_config["challenger"]["mode"] == mode
    assert user_config["challenger"]["percent"] == (15.0 if mode == "canary" else 0.0)


def test_a_newer_version_supersedes_the_running_challenger(
    settings: Settings,  # noqa: F811
    session_factory: sessionmaker[Session],
    rollout_steps: dict[str, Any],
) -> None:
    settings = settings.model_copy(update={"retrain_rollout_mode": "shadow"})
    first = run(settings, session_factory).version
    second = run(settings, session_factory).version
    assert first is not None and second is not None
    with session_factory() as session:
        assert registry.get(session, first).rollout_stage == "aborted"
        assert registry.get(session, first).abort_reason == f"superseded by {second}"
        assert rollout.challenger(session).version == second  # type: ignore[union-attr]


def test_a_failed_publish_aborts_the_rollout_the_run_began_and_restores_the_config(
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,  # noqa: F811
    session_factory: sessionmaker[Session],
    rollout_steps: dict[str, Any],
) -> None:
    settings = settings.model_copy(update={"retrain_rollout_mode": "shadow"})
    before = settings.serve_config_path.read_text()

    def refuse(path: Path) -> bool:
        raise ConfigurationError("injected: Serve refused the config")

    with pytest.raises(retrain.RetrainError, match="failed at publish") as raised:
        run(settings, session_factory, apply=refuse)
    assert any("aborted the rollout" in note for note in raised.value.summary.restored)
    with session_factory() as session:
        assert rollout.challenger(session) is None
    assert settings.serve_config_path.read_text() == before
    assert active_version(session_factory) == "v_old"


def test_straight_activation_stays_available(
    settings: Settings,  # noqa: F811
    session_factory: sessionmaker[Session],
    fake_steps: dict[str, Any],  # noqa: F811
) -> None:
    summary = run(settings, session_factory)  # the fixture's settings: retrain_rollout_mode="activate"
    assert summary.activated and summary.rollout_stage is None
    assert active_version(session_factory) == summary.version


@pytest.mark.slow  # trains two models
def test_the_training_pipeline_begins_a_rollout_instead_of_activating(
    monkeypatch: pytest.MonkeyPatch,
    trained: dict[str, Any],  # noqa: F811
) -> None:
    train_settings, factory = trained["settings"], trained["factory"]
    champion = trained["result"].version
    monkeypatch.setattr(registry, "gate", lambda **_: registry.GateDecision(True, "forced for the test"))
    result = pipeline.train_and_register(
        train_settings,
        factory,
        training_set=trained["root"] / "features",
        sweep="local",
        num_samples=2,
        rollout_mode="canary",
    )
    assert not result.activated and result.rollout_stage == "canary"
    with factory() as session:
        serving = rollout.serving(session)
        assert serving.champion is not None and serving.champion.version == champion
        assert serving.challenger is not None and serving.challenger.version == result.version
        assert serving.percent == train_settings.rollout_canary_percent
    # Publishing is the caller's step (the retrain's publish step does this).
    _, published = publishing.publish_registry(train_settings, factory)
    assert published.serve_config_updated
    user_config = serve_config.inference_user_config(serve_config.read(train_settings.serve_config_path))
    assert user_config["model_version"] == champion and user_config["challenger"]["model_version"] == result.version
