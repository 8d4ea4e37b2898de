"""Training-set extraction: exported sync events (date-partitioned Parquet) to features.

The same feature definitions (:mod:`conflict_core.features`) run here over many events and
in the online lookup over one request. Two ways to run them:

* :func:`extract_local` — one process, pandas and numpy; the reference and the baseline.
* :func:`extract_with_ray` — Ray Data reads the partitions, then Ray tasks compute the
  user-side features on user-hash buckets and the entity-side features on entity-hash
  buckets. A bucket holds the *whole* history of its users (or entities), so no bucket
  needs another's rows and the results join back on ``event_id`` without overlap.

Both return the same frame; :func:`write_training_set` stores it with a manifest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from conflict_core.errors import TrainingDataError
from conflict_core.features import ALL_FEATURES, FeatureParams, compute_features
from conflict_core.schema import PARTITION_COLUMN, REQUIRED_COLUMNS

# The import format's required columns plus when each conflict became known.
EVENT_COLUMNS: tuple[str, ...] = (*REQUIRED_COLUMNS, "resolved_at")
ID_COLUMNS: tuple[str, ...] = ("event_id", "user_id", "device_id", "entity_type", "entity_id", "synced_at")
LABEL = "conflict"
DATA_FILE = "data.parquet"
MANIFEST_FILE = "manifest.json"
LATEST_FILE = "LATEST"


@dataclass(frozen=True)
class ExtractionWindow:
    """Targets are the events in ``[start, end)``; their history reaches back ``lookback`` more."""

    start: dt.datetime
    end: dt.datetime
    lookback: dt.timedelta

    @classmethod
    def days_back(cls, days: int, *, end: dt.datetime, params: FeatureParams = FeatureParams()) -> ExtractionWindow:
        if days <= 0:
            raise ValueError(f"days_back must be positive, got {days}")
        return cls(start=end - dt.timedelta(days=days), end=end, lookback=params.lookback.to_pytimedelta())

    @property
    def history_start(self) -> dt.datetime:
        return self.start - self.lookback

    def partition_dates(self) -> set[str]:
        """The ``date=`` partitions that can hold history or targets of this window."""
        first, last = self.history_start.date(), self.end.date()
        return {(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)}


def latest_event_time(events_dir: Path) -> dt.datetime:
    """The newest ``synced_at`` in an export, read from its newest partition only."""
    partitions = sorted(events_dir.glob(f"{PARTITION_COLUMN}=*"))
    if not partitions:
        raise TrainingDataError(f"no {PARTITION_COLUMN}=YYYY-MM-DD partitions under {events_dir}; export events first")
    newest = pads.dataset(partitions[-1], format="parquet").to_table(columns=["synced_at"])
    value = pa.compute.max(newest["synced_at"]).as_py()
    return value + dt.timedelta(microseconds=1)


def partition_files(events_dir: Path, window: ExtractionWindow) -> list[Path]:
    wanted = window.partition_dates()
    files = [
        f
        for part in sorted(events_dir.glob(f"{PARTITION_COLUMN}=*"))
        if part.name.split("=", 1)[1] in wanted
        for f in sorted(part.glob("*.parquet"))
    ]
    if not files:
        raise TrainingDataError(
            f"no exported events under {events_dir} between {window.history_start:%Y-%m-%d} and {window.end:%Y-%m-%d}"
        )
    return files


def read_events(files: Sequence[Path]) -> pa.Table:
    """The events of the given Parquet files, only the columns the features need."""
    return pads.dataset([str(f) for f in files], format="parquet").to_table(columns=list(EVENT_COLUMNS))


def _in_window(events: pa.Table, window: ExtractionWindow) -> tuple[pa.Table, np.ndarray]:
    """History rows (from ``history_start``) and the mask of target rows among them."""
    synced = events["synced_at"]
    keep = pa.compute.and_(
        pa.compute.greater_equal(synced, pa.scalar(window.history_start, synced.type)),
        pa.compute.less(synced, pa.scalar(window.end, synced.type)),
    )
    history = events.filter(keep)
    targets = pa.compute.greater_equal(history["synced_at"], pa.scalar(window.start, synced.type))
    return history, targets.to_numpy(zero_copy_only=False)


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    # Keep list columns Arrow-backed: the features flatten them without Python objects.
    return table.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_list(t) else None)


def features_for_bucket(
    events: pa.Table, window: ExtractionWindow, params: FeatureParams, *, side: str, bucket: int, buckets: int
) -> pd.DataFrame:
    """One side's features for the targets whose user (or entity) hashes into ``bucket``."""
    history, is_target = _in_window(events, window)
    if buckets > 1:
        key = history["user_id"] if side == "user" else pa.compute.binary_join_element_wise(
            history["entity_type"], history["entity_id"], "\x1f"
        )
        hashes = pd.util.hash_array(key.to_numpy(zero_copy_only=False), categorize=True)
        mine = (hashes % np.uint64(buckets)) == np.uint64(bucket)
        history, is_target = history.filter(pa.array(mine)), is_target[mine]
    frame = _to_pandas(history)
    targets = frame[is_target]
    features = compute_features(frame, targets, params, side=side)
    features.insert(0, "event_id", targets["event_id"].to_numpy())
    return features.reset_index(drop=True)


def _assemble(events: pa.Table, window: ExtractionWindow, features: pd.DataFrame) -> pd.DataFrame:
    history, is_target = _in_window(events, window)
    targets = history.filter(pa.array(is_target)).select([*ID_COLUMNS, LABEL]).to_pandas()
    merged = targets.merge(features, on="event_id", how="inner", validate="one_to_one")
    if len(merged) != len(targets):
        raise TrainingDataError(f"features were computed for {len(merged)} of {len(targets)} target events")
    merged[LABEL] = merged[LABEL].astype(bool)
    return merged.sort_values(["synced_at", "event_id"], kind="stable").reset_index(drop=True)


def extract_local(files: Sequence[Path], window: ExtractionWindow, params: FeatureParams = FeatureParams()) -> pd.DataFrame:
    """The training frame computed in this process (the single-process baseline)."""
    events = read_events(files)
    features = features_for_bucket(events, window, params, side="all", bucket=0, buckets=1)
    return _assemble(events, window, features)


def extract_with_ray(
    files: Sequence[Path],
    window: ExtractionWindow,
    params: FeatureParams = FeatureParams(),
    *,
    entity_buckets: int = 3,
    user_buckets: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """The training frame computed by Ray tasks over the blocks Ray Data read.

    The entity side is several times costlier than the user side, so it gets more buckets;
    the defaults keep two cores evenly busy. ``progress(done, total)`` reports finished tasks.
    """
    import ray

    ds = ray.data.read_parquet([str(f) for f in files], partitioning=None).select_columns(list(EVENT_COLUMNS))
    block_refs = ds.to_arrow_refs()

    @ray.remote(num_cpus=1)
    def bucket_task(refs: list[Any], side: str, bucket: int, buckets: int) -> pd.DataFrame:
        table = pa.concat_tables(ray.get(refs), promote_options="default")
        return features_for_bucket(table, window, params, side=side, bucket=bucket, buckets=buckets)

    tasks = {
        bucket_task.remote(block_refs, side, b, n): side
        for side, n in (("entity", entity_buckets), ("user", user_buckets))
        for b in range(n)
    }
    parts: dict[str, list[pd.DataFrame]] = {"entity": [], "user": []}
    pending = list(tasks)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        parts[tasks[done[0]]].append(ray.get(done[0]))
        if progress:
            progress(len(tasks) - len(pending), len(tasks))
    features = pd.concat(parts["entity"], ignore_index=True).merge(
        pd.concat(parts["user"], ignore_index=True), on="event_id", how="inner", validate="one_to_one"
    )
    events = pa.concat_tables(ray.get(block_refs), promote_options="default")
    return _assemble(events, window, features[["event_id", *ALL_FEATURES]])


# --------------------------------------------------------------------------------------
# The stored training set
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    snapshot: str
    rows: int
    positives: int
    positive_rate: float
    window_start: str
    window_end: str
    first_event_at: str | None
    last_event_at: str | None
    feature_columns: list[str]
    feature_schema: dict[str, str]
    feature_params: dict[str, float]
    source_files: list[dict[str, Any]]
    created_at: str


def source_snapshot(files: Sequence[Path]) -> tuple[str, list[dict[str, Any]]]:
    """A stable id of the input files (names, sizes, modification times) and their list."""
    listing = [{"path": str(f), "bytes": f.stat().st_size, "mtime": f.stat().st_mtime} for f in files]
    digest = hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()
    return digest[:16], listing


def write_training_set(
    frame: pd.DataFrame, out_root: Path, *, window: ExtractionWindow, params: FeatureParams, files: Sequence[Path]
) -> tuple[Path, Manifest]:
    """Write ``data.parquet`` and ``manifest.json`` into a new snapshot folder, atomically."""
    snapshot, listing = source_snapshot(files)
    name = f"{window.end:%Y%m%dT%H%M%S}_{snapshot}"
    final = out_root / name
    staging = out_root / f".{name}.tmp"
    staging.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), staging / DATA_FILE)
    positives = int(frame[LABEL].sum())
    manifest = Manifest(
        snapshot=name,
        rows=len(frame),
        positives=positives,
        positive_rate=positives / len(frame) if len(frame) else 0.0,
        window_start=window.start.isoformat(),
        window_end=window.end.isoformat(),
        first_event_at=frame["synced_at"].min().isoformat() if len(frame) else None,
        last_event_at=frame["synced_at"].max().isoformat() if len(frame) else None,
        feature_columns=list(ALL_FEATURES),
        feature_schema={c: str(frame[c].dtype) for c in ALL_FEATURES},
        feature_params={k: float(v) for k, v in asdict(params).items()},
        source_files=listing,
        created_at=dt.datetime.now(dt.UTC).isoformat(),
    )
    (staging / MANIFEST_FILE).write_text(json.dumps(asdict(manifest), indent=2))
    if final.exists():
        import shutil

        shutil.rmtree(final)
    staging.rename(final)
    (out_root / LATEST_FILE).write_text(name)
    return final, manifest


def load_training_set(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A stored training set; ``path`` is a snapshot folder or the features root (latest)."""
    if (path / LATEST_FILE).is_file():
        path = path / (path / LATEST_FILE).read_text().strip()
    data, manifest = path / DATA_FILE, path / MANIFEST_FILE
    if not data.is_file() or not manifest.is_file():
        raise TrainingDataError(f"{path} holds no training set ({DATA_FILE} and {MANIFEST_FILE}); run the extraction job")
    return pd.read_parquet(data), json.loads(manifest.read_text())


