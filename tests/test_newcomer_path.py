"""The main command's lifecycle leaves the checkout as it was cloned; the config tests then pass.

A scratch copy of the repository (its tracked and new files, committed into a git repository
of its own) runs the lifecycle in-process, as ``conflictctl`` would: simulate, import,
export, extract, train (the gate activates and publishes), retrain. Afterwards ``git status``
is clean there, the committed serve config is byte for byte what it was, the live config
under ``data/`` names the active model, and the tests that read the committed config pass
in that same copy.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conflict_core import serve_config
from conflictctl import main

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
CONFIG_TESTS = ["tests/conflict_core/test_serve_config.py", "tests/ray_control/test_serve_deploy.py"]


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def _scratch_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    files = _git(REPO, "ls-files", "--cached", "--others", "--exclude-standard", "-z").split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    _git(copy, "init", "-q")
    _git(copy, "add", "-A")
    _git(copy, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "as cloned")
    return copy


def test_the_lifecycle_leaves_the_checkout_clean_and_the_config_tests_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = _scratch_copy(tmp_path)
    template_before = (copy / "serve_config.yaml").read_bytes()
    monkeypatch.chdir(copy)
    for key in [k for k in os.environ if k.startswith("CONFLICT_") or k == "DATABASE_URL"]:
        monkeypatch.delenv(key)
    end = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    runner = CliRunner()
    for argv in (
        ["simulate", "--users", "40", "--entities", "300", "--days", "30", "--seed", "3", "--end", end.isoformat()],
        ["events", "export"],
        ["extract", "--local", "--days-back", "25"],
        ["train", "--local-sweep", "--num-samples", "2"],
        ["retrain", "--local", "--num-samples", "2", "--now", end.isoformat()],
    ):
        result = runner.invoke(main, argv, catch_exceptions=False)
        assert result.exit_code == 0, f"conflictctl {' '.join(argv)}:\n{result.output}"

    assert _git(copy, "status", "--porcelain") == ""  # everything it wrote is under the ignored data/
    assert (copy / "serve_config.yaml").read_bytes() == template_before
    live = serve_config.read(copy / "data" / "serve_config.yaml")
    assert serve_config.inference_user_config(live)["model_version"] is not None

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CONFIG_TESTS],
        cwd=copy,
        env={**os.environ, "PYTHONPATH": str(copy)},
        capture_output=True,
        text=True,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "passed" in tests.stdout
