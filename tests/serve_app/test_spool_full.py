"""The prediction log when the store is down and the spool's disk is full: no crash, the
failure is counted and logged, spooled records survive, and records are dropped only beyond
``max_buffer`` in memory — counted, never silently."""

from __future__ import annotations

import asyncio
import errno
import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from serve_app import prediction_log
from serve_app.prediction_log import PredictionLogWriter
from tests.serve_app.test_prediction_log import _count, _FlakyEngine, _record


def test_a_full_spool_keeps_records_in_memory_counts_drops_and_loses_no_spooled_file(
    database_url: str,
    session_factory: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky = _FlakyEngine(database_url)
    writer = PredictionLogWriter(
        database_url,
        tmp_path / "spool",
        batch_size=50,
        flush_interval_s=0.02,
        max_buffer=100,
        max_backoff_s=0.05,
        spill_after_s=0.0,
        engine=flaky,  # type: ignore[arg-type]
    )
    real_write = prediction_log._write_jsonl
    disk_full = {"on": False}

    def write(directory: Path, lines: list[str]) -> Path:
        if disk_full["on"]:
            # As the real writer on a full disk: a partial temporary file, then ENOSPC.
            (directory / ".partial.tmp").write_text("x")
            (directory / ".partial.tmp").unlink()
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(directory, lines)

    monkeypatch.setattr(prediction_log, "_write_jsonl", write)

    async def scenario() -> dict[str, Any]:
        flaky.down = True
        writer.submit([_record() for _ in range(60)])
        for _ in range(50):
            await asyncio.sleep(0.02)
            if writer.spool_files():
                break
        spooled = writer.spool_files()
        assert spooled and writer.depth == 0  # the first 60 are on disk
        disk_full["on"] = True
        for _ in range(10):
            writer.submit([_record() for _ in range(30)])  # 300 more: only 100 fit in memory
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        state = {"depth": writer.depth, "dropped": writer.dropped, "failures": writer.spill_failures}
        assert all(p.exists() for p in spooled)  # spooled records survive the full disk
        disk_full["on"] = False
        flaky.down = False
        for _ in range(200):
            await asyncio.sleep(0.05)
            if writer.depth == 0 and not writer.spool_files():
                break
        await writer.close()
        return state

    with caplog.at_level(logging.ERROR, logger="serve_app.prediction_log"):
        state = asyncio.run(scenario())
    assert state["failures"] > 0
    assert state["depth"] <= 100  # memory stays bounded
    assert state["dropped"] == 300 - state["depth"]  # everything else is counted as dropped
    assert writer.dropped == state["dropped"]
    assert _count(session_factory) == 60 + 300 - writer.dropped  # nothing lost beyond the count
    assert any("unwritable" in r.getMessage() for r in caplog.records)
