from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from conflict_core import locks, registry, serve_config
from conflict_core.errors import ConfigurationError, JobLockedError
from conflict_core.settings import Settings
from conflict_core.store import JobRun, session_scope
from tests.training.retrain_fakes import NOW, add_model, fake_train, retrain_settings
from training import retention, retrain
from training.publishing import Apply


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # These tests cover straight activation; rollout: test_rollout_retrain.
    return retrain_settings(tmp_path, database_url, retrain_rollout_mode="activate")


@pytest.fixture
def fake_steps(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, session_factory: sessionmaker[Session]
) -> dict[str, Any]:
    """Export, extract and train without data or Ray; the fake train registers and gates like the pipeline."""
    add_model(settings, session_factory, "v_old", activate=True)
    state: dict[str, Any] = {"gate": True}
    monkeypatch.setattr(retrain, "export_step", lambda s, e, *, now: {"rows": 10})
    monkeypatch.setattr(retrain, "extract_step", lambda s, *, now, use_ray: {"training_set": "unused", "rows": 10})

    def train(s: Settings, factory: sessionmaker[Session], **_: Any) -> dict[str, Any]:
        return fake_train(s, factory, f"v_new{len(state)}", gate=state["gate"])

    monkeypatch.setattr(retrain, "train_step", train)
    return state


def active_version(factory: sessionmaker[Session]) -> str | None:
    with factory() as session:
        row = registry.active(session)
        return row.version if row else None


def run(settings: Settings, factory: sessionmaker[Session], apply: Apply | None = None) -> retrain.RetrainSummary:
    return retrain.retrain(settings, factory, factory.kw["bind"], now=NOW, use_ray=False, sweep="local", apply=apply)


def test_a_successful_run_activates_publishes_and_records_a_summary(
    settings: Settings, session_factory: sessionmaker[Session], fake_steps: dict[str, Any]
) -> None:
    summary = run(settings, session_factory)
    assert summary.status == "succeeded" and summary.activated
    assert active_version(session_factory) == summary.version
    assert (
        serve_config.inference_user_config(serve_config.read(settings.serve_config_path))["model_version"]
        == summary.version
    )
    assert summary.serve_config_updated and not summary.serve_app_reconfigured
    assert list(summary.steps) == list(retrain.STEPS)
    with session_factory() as session:
        row = session.scalars(select(JobRun)).one()
    assert row.status == "succeeded" and row.summary["version"] == summary.version and row.finished_at is not None
    assert locks.holder_of(session_factory, retrain.LOCK_NAME) is None


def test_gate_refusal_leaves_model_and_config_alone(
    settings: Settings, session_factory: sessionmaker[Session], fake_steps: dict[str, Any]
) -> None:
    fake_steps["gate"] = False
    before = settings.serve_config_path.read_text()
    summary = run(settings, session_factory)
    assert summary.status == "succeeded" and not summary.activated
    assert summary.steps["publish"] == {"skipped": "the gate kept the active model", "seconds": pytest.approx(0, abs=1)}
    assert active_version(session_factory) == "v_old" and settings.serve_config_path.read_text() == before


def _fail_after_registering(original: Any) -> Any:
    def train(*args: Any, **kwargs: Any) -> dict[str, Any]:
        original(*args, **kwargs)  # the candidate is registered, its activation pending ...
        raise RuntimeError("injected: train crashed after registering")  # ... then the step fails

    return train


def _refusing_apply(path: Path) -> bool:
    """Serve refusing the config, after set_model has rewritten the file."""
    raise ConfigurationError("injected: Serve refused the config")


@pytest.mark.parametrize("where", ["export", "extract", "train", "train_after_registering", "publish", "publish_apply"])
def test_failure_at_any_step_leaves_the_active_model_and_serve_config_untouched(
    where: str,
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    session_factory: sessionmaker[Session],
    fake_steps: dict[str, Any],
) -> None:
    config_before = settings.serve_config_path.read_text()

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"injected failure in {where}")

    if where == "train_after_registering":
        monkeypatch.setattr(retrain, "train_step", _fail_after_registering(retrain.train_step))
    elif where != "publish_apply":
        monkeypatch.setattr(retrain, f"{where}_step", boom)

    with pytest.raises(retrain.RetrainError, match="failed at") as raised:
        run(settings, session_factory, apply=_refusing_apply if where == "publish_apply" else None)

    summary = raised.value.summary
    assert summary.failed_step == where.split("_")[0]
    assert active_version(session_factory) == "v_old"
    assert settings.serve_config_path.read_text() == config_before
    with session_factory() as session:
        row = session.scalars(select(JobRun)).one()
    assert row.status == "failed" and row.summary["failed_step"] == summary.failed_step
    assert locks.holder_of(session_factory, retrain.LOCK_NAME) is None


def test_failure_after_the_first_ever_activation_leaves_no_model_active(
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    session_factory: sessionmaker[Session],
    fake_steps: dict[str, Any],
) -> None:
    with session_scope(session_factory) as session:
        registry.deactivate(session, "v_old")
    with pytest.raises(retrain.RetrainError):
        run(settings, session_factory, apply=_refusing_apply)
    assert active_version(session_factory) is None


def test_a_failed_retention_leaves_the_published_model(
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    session_factory: sessionmaker[Session],
    fake_steps: dict[str, Any],
) -> None:
    monkeypatch.setattr(retrain, "retention_step", lambda s: (_ for _ in ()).throw(OSError("disk full")))
    summary = run(settings, session_factory)
    assert summary.status == "succeeded" and summary.activated
    assert summary.steps["retention"]["failed"] == "OSError: disk full"
    new = summary.steps["train"]["version"]
    assert active_version(session_factory) == new and new in settings.serve_config_path.read_text()


def test_an_activation_by_someone_else_is_not_undone(
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    session_factory: sessionmaker[Session],
    fake_steps: dict[str, Any],
) -> None:
    fake_steps["gate"] = False

    def operator_activates_then_fail(*args: Any, **kwargs: Any) -> dict[str, Any]:
        add_model(settings, session_factory, "v_operator", activate=True, by="alice")
        raise OSError("disk")

    monkeypatch.setattr(retrain, "train_step", operator_activates_then_fail)
    with pytest.raises(retrain.RetrainError):
        run(settings, session_factory)
    assert active_version(session_factory) == "v_operator"


def test_a_model_activated_between_the_gate_and_the_publish_step_is_not_replaced(
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    session_factory: sessionmaker[Session],
    fake_steps: dict[str, Any],
) -> None:
    """The gate compared the candidate with v_old; an operator activates v_operator before the
    publish step: the comparison no longer holds, so the candidate stays registered, inactive."""
    config_before = settings.serve_config_path.read_text()
    original = retrain.train_step

    def train_then_operator_activates(*args: Any, **kwargs: Any) -> dict[str, Any]:
        result: dict[str, Any] = original(*args, **kwargs)
        add_model(settings, session_factory, "v_operator", activate=True, by="alice")
        return result

    monkeypatch.setattr(retrain, "train_step", train_then_operator_activates)
    summary = run(settings, session_factory)
    assert summary.status == "succeeded" and not summary.activated and summary.rollout_stage is None
    assert "the active model changed since the gate" in summary.steps["publish"]["skipped"]
    assert "(v_old -> v_operator)" in summary.steps["publish"]["skipped"]
    assert active_version(session_factory) == "v_operator"
    assert settings.serve_config_path.read_text() == config_before
    with session_factory() as session:
        candidate = registry.get(session, summary.version or "")
        assert not candidate.is_active and candidate.activated_at is None


def test_two_runs_never_overlap(
    settings: Settings, session_factory: sessionmaker[Session], fake_steps: dict[str, Any]
) -> None:
    locks.acquire(session_factory, retrain.LOCK_NAME, ttl=dt.timedelta(hours=1), holder="other-run")
    with pytest.raises(JobLockedError, match="other-run"):
        run(settings, session_factory)
    assert active_version(session_factory) == "v_old"
    with session_factory() as session:
        assert session.scalars(select(JobRun)).all() == []


def test_rerun_after_a_crash_restores_what_the_crashed_run_changed(
    settings: Settings, session_factory: sessionmaker[Session], fake_steps: dict[str, Any]
) -> None:
    config_before = settings.serve_config_path.read_text()
    # A run that was killed after activating and publishing: its row still says "running",
    # its lock expired.
    with session_scope(session_factory) as session:
        crashed = JobRun(
            job="retrain",
            started_at=NOW,
            status="running",
            summary={"restore": {"active_version": "v_old", "serve_config_text": config_before}},
        )
        session.add(crashed)
        session.flush()
        crashed_id = crashed.id
    add_model(settings, session_factory, "v_crashed", activate=True, by=f"retrain#{crashed_id}")
    serve_config.set_model(settings.serve_config_path, version="v_crashed", artifact_path="x", artifact_sha256="y")
    locks.acquire(
        session_factory,
        retrain.LOCK_NAME,
        ttl=dt.timedelta(minutes=1),
        holder="killed",
        now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
    )

    fake_steps["gate"] = False
    summary = run(settings, session_factory)
    assert summary.status == "succeeded" and summary.recovered_runs == [crashed_id]
    assert summary.active_before == "v_old" and active_version(session_factory) == "v_old"
    assert settings.serve_config_path.read_text() == config_before
    with session_factory() as session:
        assert session.get(JobRun, crashed_id).status == "crashed"  # type: ignore[union-attr]


def test_a_crashed_run_that_cannot_be_restored_does_not_block_later_runs(
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    session_factory: sessionmaker[Session],
    fake_steps: dict[str, Any],
) -> None:
    with session_scope(session_factory) as session:
        crashed = JobRun(job="retrain", started_at=NOW, status="running", summary={"restore": {}})
        session.add(crashed)
        session.flush()
        crashed_id = crashed.id

    def broken_restore(*args: Any, **kwargs: Any) -> list[str]:
        raise FileNotFoundError("the previous model's artifact is gone")

    monkeypatch.setattr(retrain, "undo_run", broken_restore)
    fake_steps["gate"] = False
    summary = run(settings, session_factory)
    assert summary.status == "succeeded" and summary.recovered_runs == [crashed_id]
    with session_factory() as session:
        row = session.get(JobRun, crashed_id)
        assert row is not None and row.status == "restore_failed"
        assert "artifact is gone" in row.summary["error"]
    # Handled once, not retried by every later run.
    assert retrain.recover_crashed_runs(settings, session_factory, now=NOW) == []


def test_a_manual_training_waits_for_no_one_while_a_retrain_holds_the_lock(
    settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    """jobs.train takes the retrain's lock: the two never gate and activate at once."""
    from jobs import train as train_job

    locks.acquire(session_factory, retrain.LOCK_NAME, ttl=dt.timedelta(hours=1), holder="retrain-in-progress")
    args = ["--database-url", settings.database_url, "--data-dir", str(settings.data_dir), "--local-sweep"]
    with pytest.raises(JobLockedError, match="retrain-in-progress"):
        train_job.main(args)


# --------------------------------------------------------------------------- retention


def test_retention_deletes_old_exports_and_training_sets_but_keeps_latest(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=31)).timestamp()

    def folder(path: Path, *, aged: bool) -> Path:
        path.mkdir(parents=True)
        (path / "part.parquet").write_bytes(b"x" * 100)
        if aged:
            for p in (path / "part.parquet", path):
                os.utime(p, (old, old))
        return path

    old_partition = folder(settings.events_dir / "date=2026-01-01", aged=True)
    new_partition = folder(settings.events_dir / "date=2026-02-28", aged=False)
    old_snapshot = folder(settings.features_dir / "20260101T000000_a", aged=True)
    latest = folder(settings.features_dir / "20260102T000000_b", aged=True)
    (settings.features_dir / "LATEST").write_text(latest.name)
    old_trials = folder(settings.data_dir / "tune" / "v20260101_000000", aged=True)
    model = folder(settings.models_dir / "v20260101_000000", aged=True)

    dry = retention.apply_retention(settings, dry_run=True)
    assert len(dry.deleted) == 3 and old_partition.exists()

    result = retention.apply_retention(settings)
    assert sorted(result.deleted) == sorted(str(p) for p in (old_partition, old_snapshot, old_trials))
    assert result.kept_protected == [str(latest)] and result.bytes_freed == 300
    assert new_partition.exists() and latest.exists() and model.exists()


def test_retention_ignores_files_removed_while_it_scans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daily retention job and a retrain's own cleanup can overlap: a vanished file is no error."""
    settings = Settings(data_dir=tmp_path)
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=31)).timestamp()
    partition = settings.events_dir / "date=2026-01-01"
    partition.mkdir(parents=True)
    (partition / "part.parquet").write_bytes(b"x" * 100)
    for p in (partition / "part.parquet", partition):
        os.utime(p, (old, old))
    real_rglob = Path.rglob

    def rglob_with_a_ghost(self: Path, pattern: str) -> Any:
        yield from real_rglob(self, pattern)
        yield self / "removed-meanwhile.parquet"

    monkeypatch.setattr(Path, "rglob", rglob_with_a_ghost)
    result = retention.apply_retention(settings)
    assert result.deleted == [str(partition)] and result.bytes_freed == 100
