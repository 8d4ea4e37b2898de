"""``conflictctl models rollout``: each step changes the registry and the serve config together."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy.orm import Session, sessionmaker

from conflict_core import registry, serve_config
from conflictctl.main import main
from serve_app.live_gauges import live_metric_samples
from tests.conflict_core.test_rollout import add

CONFIG = {
    "applications": [{"name": "a", "deployments": [{"name": "ModelInference", "user_config": {"model_version": None}}]}]
}


@pytest.fixture
def cli(
    session_factory: sessionmaker[Session], database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[CliRunner, Path]:
    for version in ("v1", "v2"):
        add(session_factory, tmp_path, version, active=version == "v1")
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    monkeypatch.setenv("CONFLICT_SERVE_CONFIG_PATH", str(config))
    monkeypatch.setenv("CONFLICT_DASHBOARD_URL", "http://127.0.0.1:9")  # nothing listens: no running app
    monkeypatch.setenv("DATABASE_URL", database_url)
    return CliRunner(), config


def rollout(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(main, ["models", "rollout", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_shadow_canary_promote_through_the_command(cli: tuple[CliRunner, Path]) -> None:
    runner, config = cli
    out = rollout(runner, "v2", "--shadow")
    assert "challenger v2 in shadow" in out and "no running app to reconfigure" in out
    user_config = serve_config.inference_user_config(serve_config.read(config))
    assert user_config["model_version"] == "v1" and user_config["challenger"]["mode"] == "shadow"
    rollout(runner, "v2", "--canary", "10")
    user_config = serve_config.inference_user_config(serve_config.read(config))
    assert user_config["challenger"]["mode"] == "canary" and user_config["challenger"]["percent"] == 10
    out = rollout(runner, "v2", "--promote")
    user_config = serve_config.inference_user_config(serve_config.read(config))
    assert user_config["model_version"] == "v2" and user_config["challenger"] is None
    status = runner.invoke(main, ["models", "rollout-status"]).output
    assert "champion   v2" in status and "challenger none" in status and "promote" in status


def test_the_command_refuses_a_bad_step_with_the_reason(
    cli: tuple[CliRunner, Path], session_factory: sessionmaker[Session]
) -> None:
    runner, config = cli
    before = config.read_text()
    refused = runner.invoke(main, ["models", "rollout", "v2", "--promote"])
    assert (
        refused.exit_code == 1 and "v2 is candidate; moving it to active needs one of: shadow, canary" in refused.output
    )
    both = runner.invoke(main, ["models", "rollout", "v2", "--shadow", "--canary", "5"])
    assert both.exit_code == 2 and "exactly one of" in both.output
    assert config.read_text() == before
    with session_factory() as session:
        assert registry.get(session, "v2").rollout_stage == "candidate"


def test_live_gauges_show_both_variants_of_the_latest_decision(
    cli: tuple[CliRunner, Path], session_factory: sessionmaker[Session]
) -> None:
    from conflict_core import rollout as stages

    runner, _ = cli
    rollout(runner, "v2", "--shadow")
    with session_factory.begin() as session:
        stages.record(
            session,
            version="v2",
            action="stay",
            reason="not yet",
            by="test",
            now=dt.datetime.now(dt.UTC),
            champion_version="v1",
            stage_before="shadow",
            stage_after="shadow",
            numbers={"champion": {"pr_auc": 0.4, "labelled": 300}, "challenger": {"pr_auc": 0.5, "labelled": 300}},
        )
    with session_factory() as session:
        samples = {(t["variant"], t["model_version"], t["metric"]): v for t, v in live_metric_samples(session)}
    assert samples == {
        ("champion", "v1", "pr_auc"): 0.4,
        ("champion", "v1", "labelled"): 300.0,
        ("challenger", "v2", "pr_auc"): 0.5,
        ("challenger", "v2", "labelled"): 300.0,
    }


def test_activating_beside_a_challenger_publishes_what_the_registry_serves(
    cli: tuple[CliRunner, Path], session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """`models activate` of a third version keeps the challenger beside the new champion, as the
    registry does; with no active model nothing is served beside the heuristics; activating the
    canary itself ends the rollout in the config too."""
    runner, config = cli
    add(session_factory, tmp_path, "v3", active=False)
    rollout(runner, "v2", "--canary", "20")

    def served() -> tuple[str | None, str | None]:
        user_config = serve_config.inference_user_config(serve_config.read(config))
        challenger = user_config["challenger"]
        return user_config["model_version"], challenger and challenger["model_version"]

    activated = runner.invoke(main, ["models", "activate", "v3"])
    assert activated.exit_code == 0, activated.output
    with session_factory() as session:
        assert registry.get(session, "v2").is_challenger
    assert served() == ("v3", "v2")

    deactivated = runner.invoke(main, ["models", "deactivate", "v3"])
    assert deactivated.exit_code == 0, deactivated.output
    assert served() == (None, None)

    activated = runner.invoke(main, ["models", "activate", "v2"])
    assert activated.exit_code == 0, activated.output
    assert served() == ("v2", None)
