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
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from conflict_core.atomic import write_text_atomically
from conflict_core.errors import TrainingDataError
from conflict_core.features import ALL_FEATURES, FeatureParams, compute_features
from conflict_core.schema import PARTITION_COLUMN, REQUIRED_COLUMNS
from conflict_core.settings import Settings

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


def _window_masks(events: pa.Table, window: ExtractionWindow) -> tuple[np.ndarray, np.ndarray]:
    """Rows inside the feature history (from ``history_start``) and the target rows among all."""
    synced = events["synced_at"]
    after_start = pa.compute.greater_equal(synced, pa.scalar(window.history_start, synced.type))
    before_end = pa.compute.less(synced, pa.scalar(window.end, synced.type))
    history = pa.compute.and_(after_start, before_end).to_numpy(zero_copy_only=False)
    targets = history & pa.compute.greater_equal(synced, pa.scalar(window.start, synced.type)).to_numpy(
        zero_copy_only=False
    )
    return history, targets


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    # Keep list columns Arrow-backed: the features flatten them without Python objects.
    return table.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_list(t) else None)


BUCKET_COLUMNS: dict[str, str] = {"user": "_user_bucket", "entity": "_entity_bucket"}


def bucket_of(events: pa.Table, side: str, buckets: int) -> np.ndarray:
    """The hash bucket of each row's user (``side="user"``) or entity; stable across processes."""
    if side == "user":
        key = events["user_id"]
    else:
        key = pa.compute.binary_join_element_wise(events["entity_type"], events["entity_id"], "\x1f")
    hashes = pd.util.hash_array(key.to_numpy(zero_copy_only=False), categorize=True)
    return (hashes % np.uint64(buckets)).astype(np.int16)


@dataclass(frozen=True)
class Buckets:
    """How many hash buckets each side of the features is split into."""

    entity: int = 4
    user: int = 2

    def with_bucket_columns(self, batch: pa.Table) -> pa.Table:
        """``batch`` plus its rows' bucket numbers (a Ray Data ``map_batches`` function)."""
        for side, n in (("entity", self.entity), ("user", self.user)):
            batch = batch.append_column(BUCKET_COLUMNS[side], pa.array(bucket_of(batch, side, n)))
        return batch


def features_for_bucket(
    events: pa.Table, window: ExtractionWindow, params: FeatureParams, *, side: str, bucket: int, buckets: int
) -> tuple[np.ndarray, pd.DataFrame]:
    """One side's features for the targets whose user (or entity) hashes into ``bucket``.

    Returns the targets' row positions in ``events`` and their features, in that order. A
    bucket holds every event of its users (or entities), which is all their features need.
    """
    in_history, is_target = _window_masks(events, window)
    if buckets > 1:
        column = BUCKET_COLUMNS.get(side, "")
        bucket_ids = events[column].to_numpy() if column in events.column_names else bucket_of(events, side, buckets)
        in_history = in_history & (bucket_ids == bucket)
    rows = np.flatnonzero(in_history)
    frame = _to_pandas(events.select(list(EVENT_COLUMNS)).take(rows))
    targets = is_target[rows]
    features = compute_features(frame, frame[targets], params, side=side)
    return rows[targets], features.reset_index(drop=True)


def _assemble(
    events: pa.Table, window: ExtractionWindow, parts: Sequence[tuple[np.ndarray, pd.DataFrame]]
) -> pd.DataFrame:
    """The target events' ids, times and label with every feature, ordered by time.

    ``parts`` are :func:`features_for_bucket` results; between them each target must have
    each feature exactly once.
    """
    _, is_target = _window_masks(events, window)
    targets = np.flatnonzero(is_target)
    columns: dict[str, np.ndarray] = {}
    filled: dict[str, np.ndarray] = {}
    for rows, features in parts:
        for name in features.columns:
            values = features[name].to_numpy()
            if name not in columns:
                columns[name] = np.zeros(len(events), dtype=values.dtype)
                filled[name] = np.zeros(len(events), dtype=np.int8)
            columns[name][rows] = values
            filled[name][rows] += 1
    for name in ALL_FEATURES:
        counts = filled[name][targets] if name in filled else np.zeros(len(targets), dtype=np.int8)
        if len(targets) and (counts.min() != 1 or counts.max() != 1):
            raise TrainingDataError(
                f"feature {name} was computed for {int((counts == 1).sum())} of {len(targets)} target events"
            )
    table = events.select([*ID_COLUMNS, LABEL]).take(targets)
    for name in ALL_FEATURES:
        table = table.append_column(name, pa.array(columns[name][targets]))
    table = table.take(_time_order(table))
    frame = table.to_pandas()
    frame[LABEL] = frame[LABEL].astype(bool)
    return frame


def _time_order(table: pa.Table) -> np.ndarray:
    """Indices that order ``table`` by ``(synced_at, event_id)``; cheap when it is already ordered."""
    times = table["synced_at"].cast(pa.int64()).to_numpy()
    steps = np.diff(times)
    if (steps >= 0).all():
        ties = np.flatnonzero(steps == 0)
        ids = table["event_id"]
        if (
            len(ties) == 0
            or pa.compute.all(pa.compute.less(ids.take(pa.array(ties)), ids.take(pa.array(ties + 1)))).as_py()
        ):
            return np.arange(len(times))
    order = pa.compute.sort_indices(table, sort_keys=[("synced_at", "ascending"), ("event_id", "ascending")])
    return order.to_numpy()


def extract_local(
    files: Sequence[Path], window: ExtractionWindow, params: FeatureParams = FeatureParams()
) -> pd.DataFrame:
    """The training frame computed in this process (the single-process baseline)."""
    events = read_events(files)
    part = features_for_bucket(events, window, params, side="all", bucket=0, buckets=1)
    return _assemble(events, window, [part])


def _event_files_datasource(files: Sequence[Path]) -> Any:
    """A Ray Data datasource over the export's Parquet files whose every task is a read task.

    Ray Data's own Parquet reader first samples files in tasks that each ask for a whole CPU,
    whatever ``num_cpus`` the read gets; beside a Serve app whose fractional replicas are spread
    over 1-CPU nodes no node has one free, and the read never starts. This reader does no
    sampling: one task per group of files (local files are listed in the driver), each asking
    only for the ``num_cpus`` given to ``read_datasource``, each file read whole with the
    columns the features need.
    """
    from ray.data.datasource import FileBasedDatasource

    class EventFiles(FileBasedDatasource):
        _FILE_EXTENSIONS = ["parquet"]

        def _open_input_source(self, filesystem: Any, path: str, **open_args: Any) -> Any:
            return filesystem.open_input_file(path)  # Parquet needs random access, not a stream

        def _read_stream(self, f: Any, path: str) -> Iterator[pa.Table]:
            yield pq.read_table(f, columns=list(EVENT_COLUMNS))

    return EventFiles([str(f) for f in files])


def extract_with_ray(
    files: Sequence[Path],
    window: ExtractionWindow,
    params: FeatureParams = FeatureParams(),
    *,
    entity_buckets: int = 4,
    user_buckets: int = 2,
    task_cpus: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """The training frame computed by Ray tasks over the blocks Ray Data read.

    Ray Data reads the partitions (:func:`_event_files_datasource`, one task per group of files,
    as many groups as CPUs) and tags each row with its user and entity hash buckets in the
    same tasks. Then one Ray task per bucket computes that
    bucket's side of the features from the shared blocks (zero-copy from the object store).
    The entity side costs about twice the user side, so it gets twice the buckets;
    the defaults keep two cores evenly busy. ``task_cpus`` is the logical CPU share each read
    and feature task reserves. ``progress(done, total)`` reports finished tasks.
    """
    import ray

    if not ray.is_initialized():
        ray.init()  # joins the job's cluster (RAY_ADDRESS) or starts a local one, as Ray Data would
    buckets = Buckets(entity=entity_buckets, user=user_buckets)
    n_blocks = max(1, min(len(files), int(ray.available_resources().get("CPU", 1) / task_cpus) or 1))
    ds = ray.data.read_datasource(
        _event_files_datasource(files), num_cpus=task_cpus, override_num_blocks=n_blocks
    ).map_batches(buckets.with_bucket_columns, batch_format="pyarrow", batch_size=None, num_cpus=task_cpus)
    block_refs = ds.to_arrow_refs()

    @ray.remote(num_cpus=task_cpus)
    def bucket_task(refs: list[Any], side: str, bucket: int, n: int) -> tuple[np.ndarray, pd.DataFrame]:
        # Every task concatenates the blocks in the same order, so row positions agree.
        table = pa.concat_tables(ray.get(refs), promote_options="default")
        return features_for_bucket(table, window, params, side=side, bucket=bucket, buckets=n)

    tasks = [
        bucket_task.remote(block_refs, side, b, n)
        for side, n in (("entity", buckets.entity), ("user", buckets.user))
        for b in range(n)
    ]
    parts = []
    pending = list(tasks)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        parts.append(ray.get(done[0]))
        if progress:
            progress(len(tasks) - len(pending), len(tasks))
    events = pa.concat_tables(ray.get(block_refs), promote_options="default")
    return _assemble(events, window, parts)


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
    write_text_atomically(out_root / LATEST_FILE, name)  # readers never see it empty
    return final, manifest


def load_training_set(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A stored training set; ``path`` is a snapshot folder or the features root (latest)."""
    if (path / LATEST_FILE).is_file():
        path = path / (path / LATEST_FILE).read_text().strip()
    data, manifest = path / DATA_FILE, path / MANIFEST_FILE
    if not data.is_file() or not manifest.is_file():
        raise TrainingDataError(
            f"{path} holds no training set ({DATA_FILE} and {MANIFEST_FILE}); run the extraction job"
        )
    return pd.read_parquet(data), json.loads(manifest.read_text())


def events_dir_of(manifest: dict[str, Any]) -> Path:
    """The export a stored training set was extracted from (its files sit in ``date=`` folders)."""
    files = manifest.get("source_files") or []
    if not files:
        raise TrainingDataError(f"training set {manifest.get('snapshot')!r} lists no source files")
    return Path(files[0]["path"]).parent.parent


def features_of_rows(manifest: dict[str, Any], rows: pd.DataFrame, params: FeatureParams) -> pd.DataFrame:
    """``rows`` of a stored training set (its newest ones, say) with features computed anew with
    ``params``, from the export the set was extracted from; same rows, same order."""
    window = ExtractionWindow(
        start=rows["synced_at"].min().to_pydatetime(),
        end=dt.datetime.fromisoformat(manifest["window_end"]),
        lookback=params.lookback.to_pytimedelta(),
    )
    frame = extract_local(partition_files(events_dir_of(manifest), window), window, params).set_index("event_id")
    missing = rows["event_id"][~rows["event_id"].isin(frame.index)]
    if len(missing):
        raise TrainingDataError(
            f"the export behind training set {manifest['snapshot']!r} no longer holds {len(missing)} of its events "
            f"(e.g. {missing.iloc[0]!r}); extract the training set again"
        )
    return frame.loc[rows["event_id"]].reset_index()


def extract_training_set(
    settings: Settings,
    *,
    days_back: int | None = None,
    events_dir: Path | None = None,
    out_root: Path | None = None,
    use_ray: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The extraction job: features of the last ``days_back`` days of exported events, written
    as a new training set. With ``use_ray`` the caller has connected to Ray."""
    events_dir = events_dir or settings.events_dir
    params = FeatureParams()
    window = ExtractionWindow.days_back(
        days_back or settings.training_days_back, end=latest_event_time(events_dir), params=params
    )
    files = partition_files(events_dir, window)
    started = time.perf_counter()
    if use_ray:
        frame = extract_with_ray(files, window, params, task_cpus=settings.job_task_cpus, progress=progress)
    else:
        frame = extract_local(files, window, params)
    elapsed = time.perf_counter() - started
    path, manifest = write_training_set(
        frame, out_root or settings.features_dir, window=window, params=params, files=files
    )
    return {
        "training_set": str(path),
        "rows": manifest.rows,
        "positive_rate": round(manifest.positive_rate, 5),
        "window": [manifest.window_start, manifest.window_end],
        "seconds": round(elapsed, 2),
        "events_per_second": round(manifest.rows / elapsed) if elapsed else None,
        "headline": f"training set {path.name}: {manifest.rows:,} rows, conflict rate {manifest.positive_rate:.2%}",
    }
