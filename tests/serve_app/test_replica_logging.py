"""The app's own log lines land in Ray Serve's replica log file: a prediction log that cannot
spool (store down, spool unwritable) is logged by the writer, and the line is found under the
Ray session's ``logs/serve/`` in the replica's file, in Serve's format."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from serve_app.replica_logging import ToServeLogger, log_through_serve


def test_outside_a_replica_the_app_loggers_are_left_alone() -> None:
    log_through_serve()
    app_logger = logging.getLogger("serve_app")
    assert app_logger.propagate and not any(isinstance(h, ToServeLogger) for h in app_logger.handlers)


def _probe_deployment() -> Any:
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class SpoolProbe:
        """A prediction log writer whose store is down and whose spool is a path under a file."""

        def __init__(self, blocker: str) -> None:
            from serve_app.prediction_log import PredictionLogWriter

            log_through_serve()  # as every deployment of the app does first
            self.writer = PredictionLogWriter(
                "postgresql+psycopg://postgres@127.0.0.1:9/none",  # nothing listens: the store is down
                Path(blocker) / "spool",  # under a file: the spool cannot be created
                flush_interval_s=0.01,
                max_backoff_s=0.01,
                spill_after_s=0.0,
            )

        async def __call__(self) -> int:
            self.writer.start()
            from serve_app.prediction_log import RECORD_COLUMNS

            record = {column: None for column in RECORD_COLUMNS}
            self.writer.submit([{**record, "prediction_id": "p1", "created_at": dt.datetime.now(dt.UTC)}])
            for _ in range(300):
                if self.writer.spill_failures:
                    break
                await asyncio.sleep(0.01)
            return self.writer.spill_failures

    return SpoolProbe


@pytest.mark.ray
def test_a_writer_warning_lands_in_the_replica_log_file(tmp_path: Path) -> None:
    import ray
    from ray import serve

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    context = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        handle = serve.run(_probe_deployment().bind(str(blocker)), name="replica_logging", route_prefix=None)
        assert handle.remote().result(timeout_s=60) > 0
        serve_logs = Path(context.address_info["session_dir"]) / "logs" / "serve"
        deadline, lines = time.monotonic() + 30, []
        while time.monotonic() < deadline:
            lines = [
                (path.name, line)
                for path in serve_logs.glob("replica_replica_logging_SpoolProbe_*.log")
                for line in path.read_text().splitlines()
                if f"prediction log spool {blocker / 'spool'} is unwritable" in line
            ]
            if lines:
                break
            time.sleep(0.2)
    finally:
        serve.shutdown()
        ray.shutdown()
    assert lines, f"no 'is unwritable' line in {sorted(p.name for p in serve_logs.glob('*'))}"
    name, line = lines[0]
    assert line.startswith("ERROR ") and "SpoolProbe" in line  # Serve's format: level, then the replica
