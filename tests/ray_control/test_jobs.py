"""Following a submitted job: its log into a file of its own, its result from its result file."""

from __future__ import annotations

import json
import shlex
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ray.job_submission import JobStatus

from ray_control import jobs
from ray_control.jobs import JobFailedError, run_job


class _FakeClient:
    """A JobSubmissionClient whose job 'runs' by writing its result file when its log is tailed."""

    def __init__(self, *, status: JobStatus = JobStatus.SUCCEEDED, result: dict[str, Any] | None = None):
        self.status, self.result = status, result
        self.submitted: dict[str, Any] = {}
        self.stopped: list[str] = []

    def submit_job(self, *, entrypoint: str, submission_id: str, runtime_env: Any = None) -> str:
        self.submitted = {"entrypoint": entrypoint, "submission_id": submission_id, "runtime_env": runtime_env}
        return submission_id

    async def tail_job_logs(self, job_id: str) -> AsyncIterator[str]:
        yield "feature tasks: 1/2\n"
        yield "feature tasks: 2/2\n"
        argv = shlex.split(self.submitted["entrypoint"])
        if self.result is not None:
            Path(argv[argv.index("--result-file") + 1]).write_text(json.dumps(self.result))

    def get_job_status(self, job_id: str) -> JobStatus:
        return self.status

    def get_job_info(self, job_id: str) -> Any:
        return type("Info", (), {"message": "Job entrypoint command failed with exit code 1"})()

    def stop_job(self, job_id: str) -> bool:
        self.stopped.append(job_id)
        return True


def test_a_job_returns_what_it_wrote_and_its_log_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _FakeClient(result={"status": "succeeded", "rows": 12})
    monkeypatch.setattr(jobs, "job_client", lambda url: client)
    lines: list[str] = []
    result = run_job(
        "http://127.0.0.1:9", "jobs.extract_features", ["--days-back", "3"], logs_dir=tmp_path, echo=lines.append
    )

    assert result.summary == {"status": "succeeded", "rows": 12}
    assert result.log_path.read_text() == "feature tasks: 1/2\nfeature tasks: 2/2\n"
    assert result.submission_id.startswith("extract_features-") and result.log_path.parent == tmp_path
    assert [line.split("] ", 1)[1] for line in lines] == ["feature tasks: 1/2", "feature tasks: 2/2"]
    argv = shlex.split(client.submitted["entrypoint"])
    assert argv[1:4] == ["-m", "jobs.extract_features", "--days-back"]  # this interpreter, then the module


def test_a_failed_job_names_its_state_and_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "job_client", lambda url: _FakeClient(status=JobStatus.FAILED))
    with pytest.raises(JobFailedError, match="ended FAILED.*exit code 1; log: .*extract_features-.*\\.log"):
        run_job("http://127.0.0.1:9", "jobs.extract_features", [], logs_dir=tmp_path)


def test_a_job_that_succeeded_without_a_result_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "job_client", lambda url: _FakeClient(result=None))
    with pytest.raises(JobFailedError, match="wrote no readable result"):
        run_job("http://127.0.0.1:9", "jobs.train", [], logs_dir=tmp_path)


def test_a_job_past_its_timeout_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class _Endless(_FakeClient):
        async def tail_job_logs(self, job_id: str) -> AsyncIterator[str]:
            import asyncio

            while True:
                yield "still working\n"
                await asyncio.sleep(0.05)

    client = _Endless()
    monkeypatch.setattr(jobs, "job_client", lambda url: client)
    with pytest.raises(JobFailedError, match="did not finish within 0 s and was stopped"):
        run_job("http://127.0.0.1:9", "jobs.retrain", [], logs_dir=tmp_path, timeout_s=0.3)
    assert client.stopped == [client.submitted["submission_id"]]
