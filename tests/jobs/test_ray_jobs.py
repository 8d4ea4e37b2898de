"""The offline pipeline as real Ray Jobs on a local Ray instance (slow)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from conflict_core import registry
from conflict_core.store import make_engine, make_session_factory
from ray_control.jobs import run_job
from training.extract import ExtractionWindow, extract_local, extract_with_ray, load_training_set

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_ray_extraction_equals_the_single_process_one(
    dashboard: str, training_frame: tuple[pd.DataFrame, ExtractionWindow, list[Path]]
) -> None:
    local, window, files = training_frame
    distributed = extract_with_ray(files, window, entity_buckets=3, user_buckets=2)
    pd.testing.assert_frame_equal(distributed, local)
    assert local.equals(extract_local(files, window))


def test_extract_and_train_jobs_submitted_to_ray(
    dashboard: str, simulated_store: tuple[str, Path], tmp_path: Path
) -> None:
    url, events_dir = simulated_store
    store = f"sqlite:///{tmp_path / 'store.db'}"
    serve_config = tmp_path / "serve_config.yaml"
    serve_config.write_text((Path(__file__).parents[2] / "serve_config.yaml").read_text())
    args = ["--database-url", store, "--data-dir", str(tmp_path), "--serve-config", str(serve_config)]
    lines: list[str] = []
    logs = tmp_path / "logs"
    extracted = run_job(
        dashboard,
        "jobs.extract_features",
        [*args, "--events-dir", str(events_dir), "--days-back", "45"],
        logs_dir=logs,
        echo=lines.append,
    )
    extraction = extracted.summary
    assert extraction["status"] == "succeeded" and extraction["rows"] > 1000
    assert any("feature tasks: 6/6" in line for line in lines)  # progress is shown (4 entity + 2 user buckets)
    assert "feature tasks: 6/6" in extracted.log_path.read_text()  # and kept in the job's own log file

    training = run_job(dashboard, "jobs.train", [*args, "--num-samples", "2"], logs_dir=logs).summary
    assert training["activated"] and training["holdout"]["roc_auc"] >= 0.85
    frame, manifest = load_training_set(tmp_path / "features")
    assert manifest["rows"] == len(frame) == extraction["rows"]
    engine = make_engine(store)
    with make_session_factory(engine)() as session:
        active = registry.active(session)
        assert active is not None and active.version == training["version"]
        assert active.activated_by == "gate:jobs.train"
    engine.dispose()
    assert Path(training["report_path"]).is_file()
    published = serve_config.read_text()
    assert f"model_version: {training['version']}" in published
    assert published.startswith("# ")  # comments survive the edit


def test_a_failing_job_is_reported_with_its_error(dashboard: str, tmp_path: Path) -> None:
    from ray_control.jobs import JobFailedError

    with pytest.raises(JobFailedError, match="FAILED") as raised:
        run_job(
            dashboard,
            "jobs.extract_features",
            ["--data-dir", str(tmp_path), "--events-dir", str(tmp_path)],
            logs_dir=tmp_path / "logs",
        )
    log_path = Path(str(raised.value).split("log: ", 1)[1].split()[0])
    assert log_path.parent == tmp_path / "logs" and log_path.stat().st_size > 0  # the job's own log, kept
