"""A job's result is data: the summary it returns is printed and written to --result-file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conflict_core.errors import TrainingDataError
from jobs._runtime import JobError, run


def test_the_summary_goes_to_the_result_file_and_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def main(argv: list[str] | None) -> dict[str, Any]:
        return {"rows": 3, "headline": "3 rows"}

    result = tmp_path / "r.json"
    with pytest.raises(SystemExit) as exited:
        run(main, ["--result-file", str(result)])
    assert exited.value.code == 0
    assert json.loads(result.read_text()) == {"status": "succeeded", "rows": 3, "headline": "3 rows"}
    out = capsys.readouterr().out
    assert '"rows": 3' in out and out.rstrip().endswith("3 rows")


def test_a_product_error_is_a_failed_result_and_exit_status_1(tmp_path: Path) -> None:
    def main(argv: list[str] | None) -> dict[str, Any]:
        raise TrainingDataError("only 3 conflicts")

    result = tmp_path / "r.json"
    with pytest.raises(SystemExit) as exited:
        run(main, ["--result-file", str(result)])
    assert exited.value.code == 1
    assert json.loads(result.read_text()) == {
        "status": "failed",
        "error": "only 3 conflicts",
        "error_type": "TrainingDataError",
    }


def test_a_job_error_keeps_the_runs_own_summary(tmp_path: Path) -> None:
    def main(argv: list[str] | None) -> dict[str, Any]:
        raise JobError("failed at train", {"failed_step": "train", "restored": ["re-activated v1"]})

    result = tmp_path / "r.json"
    with pytest.raises(SystemExit):
        run(main, ["--result-file", str(result)])
    stored = json.loads(result.read_text())
    assert stored["status"] == "failed" and stored["failed_step"] == "train"
    assert stored["restored"] == ["re-activated v1"]
