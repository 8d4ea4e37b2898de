"""The prediction-log writer on a real store: batching, outage buffering, spill, replay, no duplicates."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker

from conflict_core import db
from conflict_core.store import PredictionLog, make_engine
from serve_app import prediction_log
from serve_app.prediction_log import PredictionLogWriter, insert_ignoring_duplicates, spooled_records


def _record(**overrides: Any) -> dict[str, Any]:
    record = {
        "prediction_id": uuid.uuid4().hex,
        "model_type": "conflict_predictor",
        "model_version": "v1",
        "sync_id": "e1",
        "user_id": "u1",
        "device_id": "d1",
        "entity_type": "task",
        "entity_id": "t1",
        "predicted_conflict": False,
        "probability": 0.1,
        "risk_level": "low",
        "recommendation": "sync_now",
        "features": {"concurrent_editors": 0.0},
        "fallback_reason": None,
        "created_at": dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    }
    record.update(overrides)
    return record


def _count(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(PredictionLog)) or 0)


class _FlakyEngine:
    """Delegates to a real engine, or fails every connection while ``down``."""

    def __init__(self, url: str):
        self.real = make_engine(url)
        self.down = False

    @property
    def dialect(self) -> Any:
        return self.real.dialect

    def begin(self) -> Any:
        if self.down:
            raise ConnectionError("store unreachable (simulated)")
        return self.real.begin()

    def dispose(self) -> None:
        self.real.dispose()


def test_duplicate_prediction_ids_are_ignored(database_url: str, session_factory: sessionmaker[Session]) -> None:
    engine = make_engine(database_url)
    record = _record()
    insert_ignoring_duplicates(engine, [record])
    insert_ignoring_duplicates(engine, [record, _record()])
    engine.dispose()
    assert _count(session_factory) == 2


def test_features_as_mapping_or_json_text_store_the_same_json(
    database_url: str, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    features = {"concurrent_editors": 2.0, "user_conflict_rate": 0.125, "hours_since_last_sync": 168.0}
    as_text = _record(features=json.dumps(features, separators=(",", ":")))
    engine = make_engine(database_url)
    insert_ignoring_duplicates(engine, [_record(prediction_id="a" * 32, features=features)])
    insert_ignoring_duplicates(engine, [dict(as_text, prediction_id="b" * 32)])
    engine.dispose()

    # A text record spilled to disk and replayed by a writer comes back the same.
    async def spill_then_replay() -> None:
        writer = PredictionLogWriter(database_url, tmp_path / "spool", max_buffer=0)
        writer.store_available = False  # as after a failed write: the excess goes to disk
        writer._retry_at = float("inf")
        writer.submit([dict(as_text, prediction_id="c" * 32)])
        await writer.flush()
        assert writer.spilled == 1 and len(writer.spool_files()) == 1
        writer._mark_up()
        await writer.flush()
        assert writer.spool_files() == []
        await writer.close()

    asyncio.run(spill_then_replay())
    with session_factory() as session:
        stored = dict(session.execute(select(PredictionLog.prediction_id, PredictionLog.features)).tuples().all())
    assert stored == {"a" * 32: features, "b" * 32: features, "c" * 32: features}


def test_outage_buffers_spills_and_replays_without_loss_or_duplicates(
    database_url: str, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    flaky = _FlakyEngine(database_url)
    depths: list[tuple[int, int]] = []  # (in memory, on disk)
    writer = PredictionLogWriter(
        database_url,
        tmp_path / "spool",
        batch_size=50,
        flush_interval_s=0.02,
        max_buffer=120,
        max_backoff_s=0.05,
        on_depth=lambda memory, disk: depths.append((memory, disk)),
        engine=flaky,  # type: ignore[arg-type]
    )

    async def scenario() -> None:
        writer.submit([_record() for _ in range(30)])
        await asyncio.sleep(0.2)
        assert _count(session_factory) == 30
        flaky.down = True
        for _ in range(10):
            writer.submit([_record() for _ in range(40)])
            await asyncio.sleep(0.03)
        await asyncio.sleep(0.2)
        assert not writer.store_available
        assert writer.depth <= 120 + 40  # bounded in memory ...
        assert writer.spool_files()  # ... the rest on disk
        assert _count(session_factory) == 30
        flaky.down = False
        for _ in range(100):
            await asyncio.sleep(0.05)
            if writer.depth == 0 and not writer.spool_files():
                break
        await writer.close()

    asyncio.run(scenario())
    assert _count(session_factory) == 30 + 400
    assert max(memory for memory, _ in depths) > 0 and max(disk for _, disk in depths) > 0
    assert depths[-1] == (0, 0)
    assert not writer.spool_files()


def test_close_during_outage_spills_and_a_new_writer_replays(
    database_url: str, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    flaky = _FlakyEngine(database_url)
    flaky.down = True
    first = PredictionLogWriter(database_url, tmp_path / "spool", engine=flaky)  # type: ignore[arg-type]
    records = [_record() for _ in range(25)]

    async def shutdown_while_down() -> None:
        first.submit(records)
        await first.close(timeout_s=0.2)

    asyncio.run(shutdown_while_down())
    assert len(first.spool_files()) == 1 and _count(session_factory) == 0
    # A spool file left over from a crash after its rows were committed: replay must not duplicate.
    insert_ignoring_duplicates(make_engine(database_url), records[:5])

    second = PredictionLogWriter(database_url, tmp_path / "spool", flush_interval_s=0.02)

    async def restart() -> None:
        second.start()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if not second.spool_files():
                break
        await second.close()

    asyncio.run(restart())
    assert _count(session_factory) == 25


def test_refused_records_are_set_aside_and_the_rest_written(
    database_url: str, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """A record the store refuses (here NULL in a NOT NULL column) must not hold back the log."""
    good = [_record() for _ in range(40)]
    bad = [_record(probability=None), _record(risk_level=None)]
    writer = PredictionLogWriter(database_url, tmp_path / "spool", batch_size=16, flush_interval_s=0.02)

    async def scenario() -> None:
        writer.submit(good[:10] + bad[:1] + good[10:30] + bad[1:] + good[30:])
        for _ in range(100):
            await asyncio.sleep(0.02)
            if writer.depth == 0:
                break
        writer.submit([_record() for _ in range(5)])  # the log keeps flowing afterwards
        await writer.close()

    asyncio.run(scenario())
    assert _count(session_factory) == 45
    assert writer.store_available and writer.rejected == 2 and writer.written == 45
    assert writer.spool_files() == []
    kept = [json.loads(line) for path in writer.rejected_files() for line in path.read_text().splitlines()]
    assert sorted(k["record"]["prediction_id"] for k in kept) == sorted(r["prediction_id"] for r in bad)
    assert all("IntegrityError" in k["error"] for k in kept)


def test_an_outage_spills_the_buffer_and_the_spool_is_replayed_without_new_records(
    database_url: str, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """Mid-outage the records go to disk (a crash then loses nothing); recovery needs no new traffic."""
    flaky = _FlakyEngine(database_url)
    flaky.down = True
    writer = PredictionLogWriter(
        database_url,
        tmp_path / "spool",
        flush_interval_s=0.02,
        max_backoff_s=0.05,
        spill_after_s=0.1,
        engine=flaky,  # type: ignore[arg-type]
    )

    async def scenario() -> None:
        writer.submit([_record() for _ in range(25)])  # far below max_buffer
        for _ in range(100):
            await asyncio.sleep(0.02)
            if writer.depth == 0:
                break
        assert writer.depth == 0 and writer.spilled == 25 and len(writer.spool_files()) == 1
        assert spooled_records(writer.spool_files()) == 25
        assert _count(session_factory) == 0 and not writer.store_available
        flaky.down = False
        for _ in range(100):
            await asyncio.sleep(0.02)
            # The replay deletes the file in a worker thread before the loop marks the store up.
            if not writer.spool_files() and writer.store_available:
                break
        assert writer.store_available
        await writer.close()

    asyncio.run(scenario())
    assert _count(session_factory) == 25 and writer.written == 25


def test_an_unreadable_spool_file_is_set_aside(
    database_url: str, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "predictions-1-broken.jsonl").write_text('{"prediction_id": "x"\n')
    (spool / "predictions-2-good.jsonl").write_text(
        "\n".join(json.dumps(dict(_record(), created_at="2025-01-01T00:00:00+00:00")) for _ in range(3)) + "\n"
    )
    writer = PredictionLogWriter(database_url, spool)

    async def replay() -> None:
        writer.start()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if not writer.spool_files():
                break
        await writer.close()

    asyncio.run(replay())
    assert _count(session_factory) == 3 and writer.spool_files() == []
    assert [p.name for p in writer.rejected_files()] == ["predictions-1-broken.jsonl"]


def test_only_connection_failures_count_as_an_outage() -> None:
    from sqlalchemy import exc as sa_exc

    from serve_app.prediction_log import is_outage

    cause = Exception("driver error")
    assert is_outage(sa_exc.OperationalError("INSERT", {}, cause))
    assert is_outage(ConnectionRefusedError())
    assert is_outage(sa_exc.DBAPIError("INSERT", {}, cause, connection_invalidated=True))
    assert not is_outage(sa_exc.IntegrityError("INSERT", {}, cause))
    assert not is_outage(sa_exc.DataError("INSERT", {}, cause))
    assert not is_outage(ValueError("bad value"))


def test_only_refused_rows_are_set_aside_other_failures_keep_the_batch() -> None:
    from sqlalchemy import exc as sa_exc

    from serve_app.prediction_log import is_refusal

    cause = Exception("driver error")
    assert is_refusal(sa_exc.IntegrityError("INSERT", {}, cause))  # NOT NULL, CHECK
    assert is_refusal(sa_exc.DataError("INSERT", {}, cause))  # e.g. NUL in PostgreSQL text
    assert is_refusal(sa_exc.StatementError("bind", "INSERT", {}, ValueError("not JSON serializable")))
    # Every row fails alike: keep the records and retry.
    assert not is_refusal(sa_exc.InternalError("INSERT", {}, cause))  # read-only standby after a failover
    assert not is_refusal(sa_exc.ProgrammingError("INSERT", {}, cause))  # missing table or grant
    assert not is_refusal(sa_exc.OperationalError("INSERT", {}, cause))


def test_a_failure_of_every_row_keeps_the_records_for_the_retry(
    database_url: str, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """A store that refuses all inserts (here: the table is gone) is an outage, not 100 bad records."""
    from sqlalchemy import text

    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE prediction_log RENAME TO prediction_log_away"))
    writer = PredictionLogWriter(database_url, tmp_path / "spool", flush_interval_s=0.02, max_backoff_s=0.05)

    async def scenario() -> None:
        writer.submit([_record() for _ in range(100)])
        for _ in range(20):
            await asyncio.sleep(0.02)
        assert writer.rejected == 0 and not writer.store_available and writer.written == 0
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE prediction_log_away RENAME TO prediction_log"))
        for _ in range(200):
            await asyncio.sleep(0.02)
            if writer.depth == 0 and not writer.spool_files():
                break
        await writer.close()

    asyncio.run(scenario())
    engine.dispose()
    assert _count(session_factory) == 100 and writer.rejected == 0 and writer.rejected_files() == []


def test_postgresql_refuses_an_overlong_value_instead_of_truncating_it(postgres_url: str, tmp_path: Path) -> None:
    """VARCHAR(n) refuses what does not fit (SQLite would keep it): the record is set aside whole,
    never stored cut short, and its neighbours in the same batch are written."""
    db.upgrade(postgres_url)
    overlong = _record(model_version="v" * 65)  # model_version is VARCHAR(64)
    writer = PredictionLogWriter(postgres_url, tmp_path / "spool", batch_size=16, flush_interval_s=0.02)

    async def scenario() -> None:
        writer.submit([_record(), overlong, _record()])
        await writer.close()

    asyncio.run(scenario())
    assert writer.written == 2 and writer.rejected == 1
    engine = make_engine(postgres_url)
    with engine.connect() as connection:
        versions = connection.exec_driver_sql("SELECT model_version FROM prediction_log").scalars().all()
    engine.dispose()
    assert len(versions) == 2 and all(len(v) <= 64 for v in versions)


@pytest.mark.postgres
def test_postgresql_takes_a_new_batch_by_copy_and_stores_what_the_insert_stores(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of new predictions goes by COPY (no INSERT statement runs), and every column reads back
    as the INSERT path stores it; a batch with an id already stored falls back to the INSERT, which skips it."""
    db.upgrade(postgres_url)
    engine = make_engine(postgres_url)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _cur, sql, *_: statements.append(sql))
    mixed = [
        _record(prediction_id=f"{i:032x}", features={"concurrent_editors": float(i)}, sync_id=None if i % 2 else "e1")
        for i in range(40)
    ]
    mixed.append(_record(prediction_id="9" * 32, features=json.dumps({"concurrent_editors": 9.0}), fallback_reason="x"))
    by_insert = [dict(r, prediction_id="i" + r["prediction_id"][1:]) for r in mixed]
    with monkeypatch.context() as patched:  # the INSERT path alone, as the reference
        patched.setattr(prediction_log, "_copy_into_table", lambda *_: False)
        insert_ignoring_duplicates(engine, by_insert)
    statements.clear()

    insert_ignoring_duplicates(engine, mixed)
    assert not [s for s in statements if s.lstrip().upper().startswith("INSERT")]

    insert_ignoring_duplicates(engine, [mixed[0], _record(prediction_id="f" * 32)])  # one already stored
    assert any(s.lstrip().upper().startswith("INSERT") for s in statements)

    columns = [c for c in PredictionLog.__table__.c if c.name not in ("id", "prediction_id")]
    with engine.connect() as connection:
        rows = {r.prediction_id: r for r in connection.execute(select(PredictionLog.prediction_id, *columns))}
    engine.dispose()
    assert len(rows) == 2 * len(mixed) + 1
    for record in mixed:
        stored, reference = rows[record["prediction_id"]], rows["i" + record["prediction_id"][1:]]
        assert stored[1:] == reference[1:]
