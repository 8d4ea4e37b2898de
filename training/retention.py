"""Training-data retention: delete exports and training sets older than the retention period.

What counts as training data, all under ``data_dir``:

* event exports, ``events/date=YYYY-MM-DD/`` — aged by when the partition was last written
  (the weekly export rewrites every day of its 90-day window, so a partition still in use
  is always recent);
* training sets, ``features/<snapshot>/`` — aged by the manifest's ``created_at``; the
  snapshot named by ``features/LATEST`` is always kept, as are unfinished staging folders
  younger than the cutoff;
* sweep trial folders, ``tune/<version>/``.

Model artifacts, reports and their drift references (``models/``) are never touched: the
registry may roll back to any of them.

Ages are measured on the wall clock (files are written on the wall clock), not on the
simulated time a demo or test may pass to the other jobs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from conflict_core import locks
from conflict_core.errors import ConflictPredictorError
from conflict_core.schema import PARTITION_COLUMN
from conflict_core.settings import Settings
from conflict_core.store import JobRun, session_scope, utcnow
from training.extract import LATEST_FILE, MANIFEST_FILE

log = logging.getLogger(__name__)


@dataclass
class RetentionResult:
    cutoff: str
    dry_run: bool
    deleted: list[str] = field(default_factory=list)
    kept_protected: list[str] = field(default_factory=list)
    kept_recent: int = 0
    bytes_freed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stat(path: Path) -> os.stat_result | None:
    """``path``'s stat, or ``None`` when it vanished meanwhile (another job cleaning or rewriting)."""
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def _files(path: Path) -> list[os.stat_result]:
    return [s for s in map(_stat, path.rglob("*")) if s is not None and stat.S_ISREG(s.st_mode)]


def _written_at(path: Path) -> dt.datetime:
    """When ``path`` (a file or a folder of files) was last written."""
    own = _stat(path)
    times = [s.st_mtime for s in _files(path)] + ([own.st_mtime] if own is not None else [])
    return dt.datetime.fromtimestamp(max(times, default=0.0), dt.UTC)


def _snapshot_created_at(folder: Path) -> dt.datetime:
    manifest = folder / MANIFEST_FILE
    try:
        created = dt.datetime.fromisoformat(json.loads(manifest.read_text())["created_at"])
        return created if created.tzinfo else created.replace(tzinfo=dt.UTC)
    except (OSError, KeyError, ValueError):
        return _written_at(folder)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(s.st_size for s in _files(path))
    own = _stat(path)
    return 0 if own is None else own.st_size


def _candidates(settings: Settings) -> Iterator[tuple[Path, dt.datetime]]:
    if settings.events_dir.is_dir():
        for part in sorted(settings.events_dir.glob(f"{PARTITION_COLUMN}=*")):
            if part.is_dir():
                yield part, _written_at(part)
    if settings.features_dir.is_dir():
        for folder in sorted(p for p in settings.features_dir.iterdir() if p.is_dir()):
            yield folder, _snapshot_created_at(folder)
    tune_dir = settings.data_dir / "tune"
    if tune_dir.is_dir():
        for folder in sorted(p for p in tune_dir.iterdir() if p.is_dir()):
            yield folder, _written_at(folder)


def _protected(settings: Settings) -> set[Path]:
    latest = settings.features_dir / LATEST_FILE
    if latest.is_file():
        return {(settings.features_dir / latest.read_text().strip()).resolve()}
    return set()


def apply_retention(
    settings: Settings, *, days: int | None = None, now: dt.datetime | None = None, dry_run: bool = False
) -> RetentionResult:
    """Delete training data written more than ``days`` (default: the setting) before ``now``.

    Tries every candidate; if any cannot be deleted, raises after the others are done.
    """
    days = days if days is not None else settings.training_data_retention_days
    if days <= 0:
        raise ValueError(f"retention days must be positive, got {days}")
    cutoff = (now or utcnow()) - dt.timedelta(days=days)
    result = RetentionResult(cutoff=cutoff.isoformat(), dry_run=dry_run)
    protected = _protected(settings)
    failures: list[str] = []
    for path, written in _candidates(settings):
        if written >= cutoff:
            result.kept_recent += 1
            continue
        if path.resolve() in protected:
            result.kept_protected.append(str(path))
            continue
        size = _size(path)
        if not dry_run:
            try:
                shutil.rmtree(path)
            except FileNotFoundError:
                continue  # removed meanwhile by another cleaner
            except OSError as exc:
                failures.append(f"{path}: {exc}")
                continue
        result.deleted.append(str(path))
        result.bytes_freed += size
    verb = "would delete" if dry_run else "deleted"
    log.info(
        "retention: %s %d folders (%.1f MB) written before %s",
        verb,
        len(result.deleted),
        result.bytes_freed / 1e6,
        result.cutoff,
    )
    if failures:
        raise ConflictPredictorError(f"retention could not delete {len(failures)} folders: {'; '.join(failures)}")
    return result


def run_retention_job(
    settings: Settings,
    session_factory: sessionmaker[Session],
    *,
    days: int | None = None,
    dry_run: bool = False,
    lock_ttl: dt.timedelta = dt.timedelta(hours=1),
) -> RetentionResult:
    """:func:`apply_retention` under the ``retention`` lock, recorded as a ``job_run`` row."""
    with locks.job_lock(session_factory, "retention", ttl=lock_ttl):
        started = utcnow()

        def record(status: str, summary: dict[str, Any]) -> None:
            with session_scope(session_factory) as session:
                session.add(
                    JobRun(job="retention", started_at=started, finished_at=utcnow(), status=status, summary=summary)
                )

        try:
            result = apply_retention(settings, days=days, dry_run=dry_run)
        except Exception as exc:
            record("failed", {"error": f"{type(exc).__name__}: {exc}"})
            raise
        record("succeeded", result.to_dict())
        return result
