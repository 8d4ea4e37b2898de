"""Lifecycle faults across processes: a retrain killed with SIGKILL at each of its points, and
two activations or rollbacks at the same moment. No Ray: the real locks, run records,
registry and live config, with the retrain's data steps faked (tests/training/lifecycle_child.py)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from conflict_core import locks, registry, serve_config
from conflict_core.errors import JobLockedError
from conflict_core.settings import Settings
from conflict_core.store import JobRun, ModelVersion
from tests.training.lifecycle_child import BLOCK_POINTS
from tests.training.retrain_fakes import add_model, retrain_settings

REPO = Path(__file__).resolve().parents[2]
LOCK_TTL_S = 2.0
pytestmark = pytest.mark.slow


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return retrain_settings(tmp_path, database_url)


def child(command: str, settings: Settings, **args: Any) -> subprocess.Popen[str]:
    payload = {
        "database_url": settings.database_url,
        "data_dir": str(settings.data_dir),
        "serve_config": str(settings.serve_config_path),
        **args,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tests.training.lifecycle_child", command, json.dumps(payload)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def active_version(factory: sessionmaker[Session]) -> str | None:
    with factory() as session:
        row = registry.active(session)
        return row.version if row else None


def configured_version(settings: Settings) -> str | None:
    version: str | None = serve_config.inference_user_config(serve_config.read(settings.serve_config_path)).get(
        "model_version"
    )
    return version


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("block_at", BLOCK_POINTS)
def test_a_retrain_killed_at_any_point_is_recovered_by_the_next_run(
    settings: Settings, session_factory: sessionmaker[Session], tmp_path: Path, block_at: str
) -> None:
    add_model(settings, session_factory, "v_old", activate=True)
    artifact = settings.models_dir / "v_old" / "model.joblib"
    config_before, artifact_before = settings.serve_config_path.read_text(), sha(artifact)
    marker = tmp_path / "blocked"
    run = child(
        "retrain",
        settings,
        block_at=block_at,
        marker=str(marker),
        gate=True,
        new_version="v_crash",
        lock_ttl_s=LOCK_TTL_S,
    )
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert run.poll() is None, run.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the retrain never reached its block point"
        time.sleep(0.05)
    os.kill(run.pid, signal.SIGKILL)
    run.wait(timeout=30)
    assert run.returncode == -signal.SIGKILL

    # What the kill leaves behind: the old model's artifact is never touched. Before the publish
    # step (which carries out the gate's decision) the registry and the live config are untouched
    # too; after its activation, the registry names the crashed run's model until the next run
    # restores it.
    assert sha(artifact) == artifact_before
    activated = block_at in ("publish:apply", "retention")
    assert active_version(session_factory) == ("v_crash" if activated else "v_old")
    published = block_at == "retention" or block_at == "publish:apply"
    assert configured_version(settings) == ("v_crash" if published else "v_old")
    if not published:
        assert settings.serve_config_path.read_text() == config_before

    # The lock outlives its holder until the TTL: a run now is refused, naming the holder.
    with pytest.raises(JobLockedError, match="another run is in progress"):
        locks.acquire(session_factory, "retrain", ttl=locks.dt.timedelta(seconds=1))
    time.sleep(LOCK_TTL_S + 0.2)

    # The next run takes the expired lock over, restores, and runs (its gate keeps the model).
    result = finished(child("retrain", settings, marker=str(marker), gate=False, new_version="v_next", lock_ttl_s=60))
    assert result["status"] == "succeeded"
    assert len(result["recovered"]) == 1
    assert active_version(session_factory) == "v_old"
    assert configured_version(settings) == "v_old"
    assert sha(artifact) == artifact_before
    assert locks.holder_of(session_factory, "retrain") is None
    with session_factory() as session:
        crashed = session.get(JobRun, result["recovered"][0])
        assert crashed is not None and crashed.status == "crashed"


@pytest.mark.parametrize("operation", ["activate", "rollback"])
def test_two_activations_at_the_same_moment_leave_one_model_named_by_the_config(
    settings: Settings, session_factory: sessionmaker[Session], tmp_path: Path, operation: str
) -> None:
    for version in ("v1", "v2", "v3"):
        add_model(settings, session_factory, version, activate=True)
    for round_ in range(3):
        go = tmp_path / f"go{round_}"
        ready = [tmp_path / f"ready{round_}-{side}" for side in "ab"]
        common = {"go": str(go)}
        if operation == "activate":
            a = child("activate", settings, version="v1", by="a", ready=str(ready[0]), **common)
            b = child("activate", settings, version="v2", by="b", ready=str(ready[1]), **common)
        else:
            a = child("rollback", settings, by="a", ready=str(ready[0]), **common)
            b = child("rollback", settings, by="b", ready=str(ready[1]), **common)
        deadline = time.monotonic() + 120
        while not all(r.exists() for r in ready):
            assert a.poll() is None and b.poll() is None, (a.communicate(), b.communicate())
            assert time.monotonic() < deadline
            time.sleep(0.01)
        go.write_text("go")
        outcomes = [finished(a), finished(b)]
        assert any("published" in o for o in outcomes), outcomes
        with session_factory() as session:
            active = list(session.scalars(select(ModelVersion.version).where(ModelVersion.is_active.is_(True))))
        assert len(active) == 1, (round_, active, outcomes)
        assert configured_version(settings) == active[0], (round_, outcomes)
