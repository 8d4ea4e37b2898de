"""Asynchronous, batched prediction logging that never slows or fails a request.

:meth:`PredictionLogWriter.submit` only appends to an in-memory buffer. A background task
writes the buffer to ``prediction_log`` in batches with ``INSERT .. ON CONFLICT
(prediction_id) DO NOTHING``. While the store is unreachable the buffer keeps the records;
once the outage has lasted ``spill_after_s`` they are spilled to JSON-lines files in the
spool directory after each failed retry (at most ``max_backoff_s`` apart) or whenever a batch
has gathered, and at any time beyond ``max_buffer``; so a replica that dies mid-outage loses
only what arrived since the last retry. At every retry the spool is replayed. A record therefore
reaches the store once whatever fails in between: a replay after a crash between commit and
file removal re-inserts rows that the unique ``prediction_id`` turns into no-ops.

Only records the store refuses for their content (:func:`is_refusal`: a constraint, a value
the database cannot store) are set aside: their batch is split until they are isolated, they
go to ``<spool>/rejected/`` with the database's error, and the rest are written. Any other
failure (an outage, a read-only standby, a missing grant) concerns every row alike and is
retried with backoff, the records buffered and spilled as above.

Buffer and spool are changed only on the event loop; threads do the I/O.

A record's ``features`` is a mapping of feature name to value, or that mapping already
serialized as a JSON object (a ``str``), as the ingress has it from rendering the response;
both store the same JSON.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import functools
import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, bindparam
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from conflict_core.store import PredictionLog, make_engine

log = logging.getLogger(__name__)

_TABLE = cast(Table, PredictionLog.__table__)
RECORD_COLUMNS: tuple[str, ...] = (
    "prediction_id",
    "model_type",
    "model_version",
    "sync_id",
    "user_id",
    "device_id",
    "entity_type",
    "entity_id",
    "predicted_conflict",
    "probability",
    "risk_level",
    "recommendation",
    "features",
    "fallback_reason",
    "variant",
    "challenger_version",
    "challenger_probability",
    "created_at",
)
SPOOL_SUFFIX = ".jsonl"
REJECTED_DIR = "rejected"
_OUTAGE_ERRORS = (
    sa_exc.OperationalError,  # connection refused or lost, server shutting down, SQLite locked or I/O
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,  # no pooled connection in time
    OSError,  # includes ConnectionError and socket timeouts
)
# Hashable values shared by many records: converted once each.
_REPEATED = frozenset({"created_at", "predicted_conflict", "variant", "challenger_version"})


def insert_ignoring_duplicates(engine: Engine, records: list[dict[str, Any]]) -> None:
    """Insert prediction records in one transaction; a ``prediction_id`` already stored is skipped.

    The statement is compiled once per dialect and the values converted column by column by
    SQLAlchemy's own bind processors, then handed to the driver's ``executemany``: the same
    rows as ``connection.execute(insert, records)`` for a third of the CPU per record. On
    PostgreSQL the same values go by ``COPY`` first (:func:`_copy_into_table`); the statement
    runs only for a batch ``COPY`` could not take whole.
    Features that are already JSON text are stored as they are, not decoded and encoded again.
    """
    if not records:
        return
    dialect = engine.dialect
    if dialect.name not in ("postgresql", "sqlite"):  # pragma: no cover - settings only admit the two
        raise ValueError(f"prediction logging does not support the {dialect.name!r} dialect")
    sql, columns, named = _insert_statement(dialect)
    values = [_column_values(records, column, process) for column, process in columns]
    if dialect.name == "postgresql" and _copy_into_table(engine, [column for column, _ in columns], values):
        return
    if named:
        names = [column for column, _ in columns]
        rows: list[Any] = [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]
    else:
        rows = list(zip(*values, strict=True))
    with engine.begin() as connection:
        connection.exec_driver_sql(sql, rows)


def _copy_into_table(engine: Engine, names: list[str], values: list[list[Any]]) -> bool:
    """PostgreSQL: ``COPY`` the rows straight into ``prediction_log``, in one transaction.

    Half the CPU per row of the ``INSERT`` (client and server together: ~28 µs against ~60 µs
    here), which on two cores is a tenth of a 50-item request's budget. ``COPY`` cannot skip a
    row; False when the server refused the batch (a ``prediction_id`` already stored, as in a
    replay after a crash; a value it cannot hold) or the connection failed during it: nothing
    was written, and the caller's ``INSERT .. ON CONFLICT DO NOTHING`` skips the duplicates,
    or raises the refusal or outage as SQLAlchemy reports it.
    """
    dbapi_error = engine.dialect.loaded_dbapi.Error
    try:
        with engine.begin() as connection:
            cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
            with cursor.copy(_copy_statement(tuple(names))) as copy:
                for row in zip(*values, strict=True):
                    copy.write_row(row)
    except dbapi_error:
        return False
    return True


@functools.cache
def _copy_statement(names: tuple[str, ...]) -> str:
    return f"COPY {_TABLE.name} ({', '.join(names)}) FROM STDIN"


@functools.cache
def _insert_statement(dialect: Any) -> tuple[str, tuple[tuple[str, Callable[[Any], Any] | None], ...], bool]:
    """The dialect's ``INSERT ... ON CONFLICT (prediction_id) DO NOTHING`` compiled once, each column
    with its bind processor (JSON, DateTime), and whether the driver takes named parameters."""
    insert = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
    statement = (
        insert(_TABLE)
        .values({column: bindparam(column) for column in RECORD_COLUMNS})
        .on_conflict_do_nothing(index_elements=["prediction_id"])
    )
    compiled = statement.compile(dialect=dialect)
    named = compiled.positiontup is None
    order = RECORD_COLUMNS if named else tuple(compiled.positiontup or ())
    processors = tuple((c, _TABLE.c[c].type.dialect_impl(dialect).bind_processor(dialect)) for c in order)
    return str(compiled), processors, named


def _column_values(records: list[dict[str, Any]], column: str, process: Callable[[Any], Any] | None) -> list[Any]:
    """One column's driver values; one comprehension per column, no per-value dispatch."""
    raw = [record.get(column) for record in records]
    if process is None:
        return raw
    if column == "features":  # JSON text is stored as it is; a mapping is serialized
        return [v if isinstance(v, str) else process(v) for v in raw]
    if column in _REPEATED:  # the same few values across a request's records: convert each once
        memo: dict[Any, Any] = {}
        return [memo[v] if v in memo else memo.setdefault(v, process(v)) for v in raw]
    return [process(v) for v in raw]


def is_outage(exc: BaseException) -> bool:
    """Whether a failed insert means the store is unreachable (retry later), not that it refused rows."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, _OUTAGE_ERRORS)


def is_refusal(exc: BaseException) -> bool:
    """Whether the store refused the rows themselves (a constraint, a value it cannot hold).

    Only these are isolated and set aside; any other failure (an outage, a read-only standby,
    a missing table or grant) concerns every row alike, so the records stay buffered.
    """
    if is_outage(exc):
        return False
    if isinstance(exc, sa_exc.IntegrityError | sa_exc.DataError):
        return True
    if isinstance(exc, sa_exc.StatementError) and not isinstance(exc, sa_exc.DBAPIError):
        return isinstance(exc.orig, ValueError | TypeError)  # a bind processor refused a value
    return isinstance(exc, ValueError | TypeError)


def insert_isolating_rejects(engine: Engine, records: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
    """Insert ``records``; the ones the store refuses for their content are returned with its error.

    A refused batch is bisected, so ``k`` bad records among ``n`` cost about ``k log n`` extra
    statements. Any other failure raises, whatever part has been written (the retry skips
    those rows).
    """
    try:
        insert_ignoring_duplicates(engine, records)
        return []
    except Exception as exc:
        if not is_refusal(exc):
            raise
        if len(records) == 1:
            return [(records[0], f"{type(exc).__name__}: {exc}"[:2000])]
    middle = len(records) // 2
    return insert_isolating_rejects(engine, records[:middle]) + insert_isolating_rejects(engine, records[middle:])


def _to_json(record: dict[str, Any]) -> str:
    out = dict(record)
    out["created_at"] = record["created_at"].isoformat()
    return json.dumps(out, separators=(",", ":"))


def _write_jsonl(directory: Path, lines: list[str]) -> Path:
    """A new, fsynced JSON-lines file in ``directory``; it appears under its final name only when complete.

    The name carries the number of records (``predictions-<pid>-<id>-n<count>.jsonl``), so the
    spool's depth is known from a directory listing.
    """
    directory.mkdir(parents=True, exist_ok=True)
    name = f"predictions-{os.getpid()}-{uuid.uuid4().hex}-n{len(lines)}{SPOOL_SUFFIX}"
    tmp = directory / f".{name}.tmp"
    try:
        with tmp.open("w") as out:
            out.writelines(line + "\n" for line in lines)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # a partial file on a full disk would only keep it full
        raise
    return tmp.rename(directory / name)


def _from_json(line: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(line)
    record["created_at"] = dt.datetime.fromisoformat(record["created_at"])
    return record


def spooled_records(files: Iterable[Path]) -> int:
    """Records in spool files, from their names (a file named otherwise counts as unknown: 0)."""
    total = 0
    for path in files:
        count = path.name.removesuffix(SPOOL_SUFFIX).rpartition("-n")[2]
        total += int(count) if count.isdigit() else 0
    return total


class PredictionLogWriter:
    """A bounded buffer in front of ``prediction_log``, flushed by a background task."""

    def __init__(
        self,
        database_url: str,
        spool_dir: Path,
        *,
        batch_size: int = 1000,
        flush_interval_s: float = 0.25,
        max_buffer: int = 20_000,
        max_backoff_s: float = 5.0,
        spill_after_s: float = 1.0,
        on_depth: Callable[[int, int], None] | None = None,
        engine: Engine | None = None,
    ):
        self.database_url = database_url
        self.spool_dir = Path(spool_dir)
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_buffer = max_buffer
        self.max_backoff_s = max_backoff_s
        self.spill_after_s = spill_after_s
        self._on_depth = on_depth
        self._engine = engine
        self._buffer: collections.deque[dict[str, Any]] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._closed = False
        self._backoff_s = 0.0
        self._retry_at = 0.0
        self._down_since = 0.0
        self.store_available = True
        self.written = 0
        self.spilled = 0
        self.rejected = 0
        self.spill_failures = 0  # spool writes that failed (disk full, unwritable)
        self.dropped = 0  # records given up: the store was down, the spool unwritable and memory full
        self.last_error: str | None = None

    # ---------------------------------------------------------------- the request path

    def submit(self, records: Iterable[dict[str, Any]]) -> None:
        """Queue records for writing; never blocks on the store or raises for its sake."""
        self._buffer.extend(records)
        if self._task is None and not self._closed:
            self.start()
        if self._wake is not None and len(self._buffer) >= self.batch_size:
            self._wake.set()

    @property
    def depth(self) -> int:
        """Records in memory, not yet in the store."""
        return len(self._buffer)

    def spool_files(self) -> list[Path]:
        if not self.spool_dir.is_dir():
            return []
        return sorted(p for p in self.spool_dir.iterdir() if p.name.endswith(SPOOL_SUFFIX))

    def rejected_files(self) -> list[Path]:
        directory = self.spool_dir / REJECTED_DIR
        return sorted(directory.glob(f"*{SPOOL_SUFFIX}")) if directory.is_dir() else []

    # ---------------------------------------------------------------- background work

    def start(self) -> None:
        """Start the flushing task on the running event loop (idempotent).

        The task first replays what an earlier process left in the spool, so start the writer
        when the replica starts rather than waiting for the first record.
        """
        if self._task is not None:
            return
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run(), name="prediction-log-writer")

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            extra: dict[str, Any] = {}
            if not self.database_url.startswith("sqlite"):
                extra = {"connect_args": {"connect_timeout": 3}, "pool_size": 2, "max_overflow": 2}
            self._engine = make_engine(self.database_url, **extra)
        return self._engine

    async def _run(self) -> None:
        assert self._wake is not None
        # Records spilled by an earlier process (a crashed or restarted replica) go first.
        try:
            await self._replay_spool()
        except Exception:  # the writer must never die; flush() retries the spool
            log.exception("prediction log replay failed unexpectedly")
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.flush_interval_s)
            self._wake.clear()
            if self._closed:
                break
            try:
                await self.flush()
            except Exception:  # the writer must never die; it logs and keeps trying
                log.exception("prediction log flush failed unexpectedly")

    async def flush(self) -> None:
        """Write what is buffered (in batches) if the store is up; spill it to disk during an outage.

        During an outage longer than ``spill_after_s`` the buffer goes to disk after each failed
        retry (at most one file per backoff interval) or once a batch has gathered.
        """
        attempted = failed = False
        while self._buffer and not self._closed_for_writes():
            attempted = True
            if not await self._write_oldest():
                failed = True
                break
        spool = self.spool_files()
        if spool and not self._closed_for_writes():
            await self._replay_spool(spool)  # also the probe that ends an outage when nothing new arrives
            spool = self.spool_files()
        down_long = not self.store_available and time.monotonic() - self._down_since >= self.spill_after_s
        spilled: Path | None = None
        if self._buffer and down_long and (failed or not attempted and len(self._buffer) >= self.batch_size):
            spilled = await self._spill(len(self._buffer))
        elif len(self._buffer) > self.max_buffer:
            spilled = await self._spill(len(self._buffer) - self.max_buffer)
        if spilled is not None:
            spool.append(spilled)
        if self._on_depth is not None:
            self._on_depth(len(self._buffer), spooled_records(spool))

    async def _write_oldest(self) -> bool:
        """Write the oldest batch; False when the store is unreachable (the batch stays buffered)."""
        batch = list(itertools.islice(self._buffer, 0, self.batch_size))
        try:
            rejects = await asyncio.to_thread(insert_isolating_rejects, self.engine, batch)
        except Exception as exc:
            if not is_outage(exc):  # e.g. a read-only standby, a missing table or grant: retried like an outage
                log.exception("prediction log insert failed for every row; keeping the batch and retrying")
            self._mark_down(exc)
            return False
        for _ in batch:
            self._buffer.popleft()
        self.written += len(batch) - len(rejects)
        if rejects:
            await self._reject(rejects)
        self._mark_up()
        return True

    def _closed_for_writes(self) -> bool:
        return not self.store_available and time.monotonic() < self._retry_at

    def _mark_down(self, exc: Exception) -> None:
        if self.store_available:
            log.warning("prediction log store unreachable, buffering: %s", exc)
            self._down_since = time.monotonic()
        self.store_available = False
        self.last_error = str(exc)[:500]
        self._backoff_s = min(max(self._backoff_s * 2, self.flush_interval_s), self.max_backoff_s)
        self._retry_at = time.monotonic() + self._backoff_s

    def _mark_up(self) -> None:
        if not self.store_available:
            log.warning("prediction log store is reachable again")
        self.store_available = True
        self._backoff_s = 0.0
        self.last_error = None

    async def _spill(self, count: int) -> Path | None:
        """Move the ``count`` oldest buffered records to a new spool file; returns it.

        When the spool cannot be written (disk full), the records stay in memory up to
        ``max_buffer``; beyond that the oldest are dropped, counted in ``dropped`` and logged.
        Files already in the spool are never touched.
        """
        records = list(itertools.islice(self._buffer, 0, count))
        try:
            path = await asyncio.to_thread(lambda: _write_jsonl(self.spool_dir, [_to_json(r) for r in records]))
        except OSError as exc:
            self.spill_failures += 1
            self.last_error = f"spool unwritable: {exc}"[:500]
            overflow = len(self._buffer) - self.max_buffer
            log.error(
                "prediction log spool %s is unwritable (%s); %d records stay in memory%s",
                self.spool_dir,
                exc,
                min(len(self._buffer), self.max_buffer),
                f", dropping the {overflow} oldest" if overflow > 0 else "",
            )
            for _ in range(max(0, overflow)):
                self._buffer.popleft()
            self.dropped += max(0, overflow)
            return None
        for _ in records:  # only once the file is complete and named
            self._buffer.popleft()
        self.spilled += count
        log.warning("prediction log spilled %d records to %s", count, path.name)
        return path

    async def _reject(self, rejects: list[tuple[dict[str, Any], str]]) -> None:
        """Keep refused records in ``<spool>/rejected/``; if even that fails, in the log."""
        lines = [json.dumps({"error": error, "record": json.loads(_to_json(r))}) for r, error in rejects]
        self.rejected += len(rejects)
        try:
            path = await asyncio.to_thread(_write_jsonl, self.spool_dir / REJECTED_DIR, lines)
        except OSError as exc:
            log.error(
                "prediction log store refused %d records and %s is unwritable (%s); the records: %s",
                len(rejects),
                self.spool_dir / REJECTED_DIR,
                exc,
                "\n".join(lines),
            )
            return
        log.error("prediction log store refused %d records (kept in %s): %s", len(rejects), path, rejects[0][1])

    async def _replay_spool(self, files: list[Path] | None = None) -> None:
        for path in self.spool_files() if files is None else files:
            try:
                count, rejects = await asyncio.to_thread(self._replay_file, path)
            except FileNotFoundError:
                continue  # another replica claimed it
            except ValueError as exc:  # not a file this writer wrote: set it aside, keep replaying
                kept = self.spool_dir / REJECTED_DIR / path.name
                kept.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):  # another replica set it aside first
                    path.rename(kept)
                log.error("prediction log spool file %s is unreadable (%s); moved to %s", path.name, exc, kept)
                continue
            except Exception as exc:
                self._mark_down(exc)
                return
            self.written += count - len(rejects)
            if rejects:
                await self._reject(rejects)
            self._mark_up()

    def _replay_file(self, path: Path) -> tuple[int, list[tuple[dict[str, Any], str]]]:
        lines = path.read_text().splitlines()
        try:
            records = [_from_json(line) for line in lines if line.strip()]
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a prediction record: {type(exc).__name__}: {exc}") from exc
        rejects: list[tuple[dict[str, Any], str]] = []
        for start in range(0, len(records), self.batch_size):
            rejects += insert_isolating_rejects(self.engine, records[start : start + self.batch_size])
        # Only after every row is committed; a crash before this line replays harmlessly.
        path.unlink(missing_ok=True)
        return len(records), rejects

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self, timeout_s: float = 10.0) -> None:
        """Stop the task; write what is left, or spill it to disk when the store is down."""
        deadline = time.monotonic() + timeout_s
        self._closed = True
        if self._task is not None:
            assert self._wake is not None
            self._wake.set()  # the task ends after the flush it is in, if any
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._task), timeout=max(0.0, timeout_s / 2))
            if not self._task.done():
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
        while self._buffer and time.monotonic() < deadline:
            if not await self._write_oldest():
                break
        if self._buffer and await self._spill(len(self._buffer)) is None:
            log.error("prediction log closing with %d records neither stored nor spooled: dropped", len(self._buffer))
            self.dropped += len(self._buffer)
            self._buffer.clear()
        if self._engine is not None:
            self._engine.dispose()
