"""Online features: the recent history of the requesting users and entities, then the shared
:func:`conflict_core.features.feature_arrays` with the request items as targets.

:class:`EventWindow` keeps the store's events of the last ``FeatureParams.lookback`` in
memory, indexed by user and by entity. It is loaded once and then refreshed by tailing new
``sync_log`` rows in ingest order (:func:`conflict_core.events_io.tail_events`), so a
prediction never waits for the store. The cost is staleness bounded by the refresh
interval: a sync recorded less than one interval ago is not yet counted. Every feature is a
count over a 5-minute or 30-day window, so missing the last fraction of a second is harmless
— the same trade the clients make, since a prediction is always made slightly before the
sync it scores. If the store stops answering, the window is used only while it is fresher
than ``max_staleness_s``; after that lookups fail and the graph answers with the heuristics
(``feature_lookup_failed``) until a refresh succeeds.

:class:`OnlineFeatureLookup` is plain Python; the Serve deployment in
:mod:`serve_app.deployments` batches concurrent requests into one :meth:`compute_many`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy.engine import Engine

from conflict_core.errors import ConflictPredictorError
from conflict_core.events_io import load_events, tail_events
from conflict_core.features import (
    ALL_FEATURES,
    HISTORY_COLUMNS,
    FeatureParams,
    UserCounts,
    UserHistoryIndex,
    feature_arrays,
    user_side_counts,
    user_side_features,
)
from conflict_core.store import make_engine, utcnow

log = logging.getLogger(__name__)

FEATURE_NAMES: tuple[str, ...] = ALL_FEATURES

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)
_TIME_MS = pa.timestamp("ms", tz="UTC")
_FIELDS = pa.list_(pa.string())
_NO_POSITIONS = np.zeros(0, dtype=np.int64)
_MAX_GAPS = 1_000  # ids re-asked for at most; more gaps than that are mostly old imports
_WINDOW_COLUMNS = ("row_id", *HISTORY_COLUMNS)
_INDEX_HORIZON_MS = 6 * 3_600_000  # the user index answers targets up to 6 h past its newest time


class FeatureLookupUnavailable(ConflictPredictorError):
    """The in-memory history is not loaded, or older than the allowed staleness."""


def _epoch_ms(moment: dt.datetime) -> int:
    return (moment - _EPOCH) // _MS


class EventWindow:
    """The store's events synced in the last ``lookback``, in memory, indexed by user and entity.

    One thread calls :meth:`refresh` (it is the only writer); any thread calls
    :meth:`history`. Rows whose ``synced_at`` fell out of the lookback stay until enough of
    them accumulate to be worth a compaction: history may hold older events, the feature
    definitions ignore them.
    """

    def __init__(
        self,
        engine: Engine,
        lookback: dt.timedelta,
        *,
        page_rows: int = 50_000,
        gap_recheck_s: float = 30.0,
        max_chunks: int = 32,
        compact_min_rows: int = 10_000,
    ):
        self.engine = engine
        self.lookback = lookback
        self.page_rows = page_rows
        self.gap_recheck_s = gap_recheck_s
        self.max_chunks = max_chunks
        self.compact_min_rows = compact_min_rows
        self._lock = threading.Lock()
        self._table: pa.Table | None = None
        self._by_user: dict[str, list[int]] = {}
        self._by_entity: dict[tuple[str, str], list[int]] = {}
        # The same positions as int64 arrays, built on first use and dropped when a key grows.
        self._arrays: dict[Any, np.ndarray] = {}
        self._seen: set[int] = set()  # row ids of rows loaded since the last compaction
        self.generation = 0  # bumped by each compaction, which renumbers the row positions
        self._last_id = 0
        self._gaps: dict[int, float] = {}  # ids skipped by the sequence, first seen missing at
        self.covered_since: dt.datetime | None = None  # targets from covered_since + lookback on are exact
        self.loaded_at: float | None = None  # time.monotonic() of the last successful refresh
        self.last_error: str | None = None

    @property
    def rows(self) -> int:
        table = self._table
        return 0 if table is None else table.num_rows

    def refresh(self, now: dt.datetime | None = None) -> int:
        """Load the rows stored since the last refresh; returns how many. Raises if the store fails."""
        now = now or utcnow()
        cutoff = now - self.lookback
        added = 0
        while True:
            expired = [i for i, first in self._gaps.items() if time.monotonic() - first > self.gap_recheck_s]
            for i in expired:
                del self._gaps[i]
            page = tail_events(
                self.engine, after_id=self._last_id, since=cutoff, recheck_ids=list(self._gaps), limit=self.page_rows
            ).select(list(_WINDOW_COLUMNS))
            added += self._append(page)
            if page.num_rows < self.page_rows:
                break
        if self.covered_since is None:
            self.covered_since = cutoff
        self.loaded_at = time.monotonic()
        self.last_error = None
        self._compact_if_worth_it(cutoff)
        return added

    def _append(self, page: pa.Table) -> int:
        ids = page.column("row_id").to_pylist()
        fresh = [k for k, i in enumerate(ids) if i not in self._seen]
        if len(fresh) < len(ids):
            page = page.take(pa.array(fresh, pa.int64()))
            ids = [ids[k] for k in fresh]
        top = max(ids, default=self._last_id)
        for i in ids:
            self._gaps.pop(i, None)
        if self.loaded_at is not None and top - self._last_id <= _MAX_GAPS:
            # Ids skipped after the first load: rolled back, or not committed yet (PostgreSQL).
            skipped = set(range(self._last_id + 1, top + 1)).difference(ids)
            self._gaps.update(dict.fromkeys(skipped, time.monotonic()))
            while len(self._gaps) > _MAX_GAPS:
                del self._gaps[next(iter(self._gaps))]
        self._last_id = max(self._last_id, top)
        if not ids:
            if self._table is None:  # an empty store: no history yet, which is not a failure
                with self._lock:
                    self._table = page
            return 0
        self._seen.update(ids)
        users = page.column("user_id").to_pylist()
        entities = zip(page.column("entity_type").to_pylist(), page.column("entity_id").to_pylist(), strict=True)
        with self._lock:
            base = self.rows
            table = page if self._table is None else pa.concat_tables([self._table, page])
            if table.column("row_id").num_chunks > self.max_chunks:
                table = table.combine_chunks()
            arrays = self._arrays
            for offset, (user, entity) in enumerate(zip(users, entities, strict=True)):
                self._by_user.setdefault(user, []).append(base + offset)
                self._by_entity.setdefault(entity, []).append(base + offset)
                arrays.pop(user, None)
                arrays.pop(entity, None)
            self._table = table
        return len(ids)

    def _compact_if_worth_it(self, cutoff: dt.datetime) -> None:
        table = self._table
        if table is None:
            return
        keep = pc.greater_equal(table.column("synced_at"), pa.scalar(cutoff, type=table.schema.field("synced_at").type))
        # min_count=0: the sum over an empty window is 0, not null.
        dropped = table.num_rows - pc.sum(keep, min_count=0).as_py()
        if dropped == 0 or dropped < max(self.compact_min_rows, table.num_rows // 4):
            return
        kept = table.filter(keep).combine_chunks()
        by_user: dict[str, list[int]] = {}
        by_entity: dict[tuple[str, str], list[int]] = {}
        entities = zip(kept.column("entity_type").to_pylist(), kept.column("entity_id").to_pylist(), strict=True)
        for position, (user, entity) in enumerate(zip(kept.column("user_id").to_pylist(), entities, strict=True)):
            by_user.setdefault(user, []).append(position)
            by_entity.setdefault(entity, []).append(position)
        seen = set(kept.column("row_id").to_pylist())
        with self._lock:
            self._table, self._by_user, self._by_entity, self._seen = kept, by_user, by_entity, seen
            self._arrays = {}
            self.generation += 1
        log.info("event window compacted: %d rows kept, %d older than the lookback dropped", kept.num_rows, dropped)

    def history(self, users: Sequence[str], entities: Sequence[tuple[str, str]]) -> pa.Table:
        """Every windowed event of ``users`` and of ``entities``, each once, in ingest order."""
        table = self._select(users, entities, since_row=0, generation=None)
        assert table is not None
        return table

    def added_since(self, users: Sequence[str], since_row: int, generation: int) -> pa.Table | None:
        """The events of ``users`` at row ``since_row`` or later of ``generation``; None when a
        compaction has renumbered the rows since."""
        return self._select(users, (), since_row=since_row, generation=generation)

    def _select(
        self, users: Sequence[str], entities: Sequence[tuple[str, str]], *, since_row: int, generation: int | None
    ) -> pa.Table | None:
        with self._lock:
            table = self._table
            if table is None:
                raise FeatureLookupUnavailable("the event window has not been loaded from the store yet")
            if generation is not None and generation != self.generation:
                return None
            parts = [self._positions(self._by_user, u) for u in users]
            parts += [self._positions(self._by_entity, e) for e in entities]
        # A row mask instead of sorting the positions: each row once, in ingest order.
        mask = np.zeros(table.num_rows, dtype=bool)
        if parts:
            mask[np.concatenate(parts)] = True
        mask[:since_row] = False
        return table.filter(pa.array(mask, pa.bool_()))

    def snapshot(self) -> tuple[pa.Table | None, int]:
        """The window's rows as of now (an immutable table) and their generation."""
        with self._lock:
            return self._table, self.generation

    def _positions(self, index: dict[Any, list[int]], key: Any) -> np.ndarray:
        """``index[key]`` as an int64 array, cached until the key's list grows (call under the lock)."""
        array = self._arrays.get(key)
        if array is None:
            positions = index.get(key)
            if positions is None:  # not cached: request keys are unbounded
                return _NO_POSITIONS
            array = self._arrays[key] = np.array(positions, dtype=np.int64)
        return array


def _keys(items: Sequence[dict[str, Any]]) -> tuple[list[str], list[tuple[str, str]]]:
    """The distinct users and (entity type, entity id) pairs of ``items``, in first-seen order."""
    users = list(dict.fromkeys(i["user_id"] for i in items))
    entities = list(dict.fromkeys((i["entity_type"], i["entity_id"]) for i in items))
    return users, entities


def _matrix(arrays: dict[str, Any]) -> np.ndarray:
    """Feature arrays as one float matrix, columns in ``FEATURE_NAMES`` order."""
    return np.column_stack([np.asarray(arrays[name], dtype=np.float64) for name in FEATURE_NAMES])


class OnlineFeatureLookup:
    """Features of prospective syncs, computed from an in-memory window of the store's history.

    ``refresh_interval_s`` > 0: a background thread tails the store that often, and
    :meth:`compute` refuses a window older than ``max_staleness_s``. ``refresh_interval_s``
    == 0: every :meth:`compute` tails the store first (read-your-writes, one indexed query
    per call; for tests and tiny deployments).

    The user-side features come from a :class:`UserHistoryIndex` over the window, rebuilt
    after a refresh once the rows added since its build exceed ``index_rebuild_rows`` (or a
    tenth of the window, whichever is more); those rows are counted from the window directly
    until then, so every answer covers every loaded event. The entity side is computed per
    batch from the requested entities' events, which are few.
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        engine: Engine | None = None,
        params: FeatureParams = FeatureParams(),
        refresh_interval_s: float = 0.5,
        max_staleness_s: float = 5.0,
        index_rebuild_rows: int = 2_000,
    ):
        if engine is None:
            if database_url is None:
                raise ValueError("OnlineFeatureLookup needs a database_url or an engine")
            engine = make_engine(database_url)
        if refresh_interval_s < 0 or max_staleness_s <= refresh_interval_s:
            raise ValueError(
                f"need 0 <= refresh_interval_s < max_staleness_s, got {refresh_interval_s} and {max_staleness_s}"
            )
        self.engine = engine
        self.params = params
        self.refresh_interval_s = refresh_interval_s
        self.max_staleness_s = max_staleness_s
        self.window = EventWindow(engine, params.lookback.to_pytimedelta())
        self.index_rebuild_rows = index_rebuild_rows
        self._user_index: tuple[UserHistoryIndex, int] | None = None  # and the window generation it indexes
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._try_refresh()
        if refresh_interval_s > 0:
            self._thread = threading.Thread(target=self._refresh_loop, name="event-window-refresh", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _try_refresh(self) -> bool:
        try:
            with self._refresh_lock:
                self.window.refresh()
                self._maybe_rebuild_index()
            return True
        except Exception as exc:
            if self.window.last_error is None:
                log.warning("event window refresh failed: %s: %s", type(exc).__name__, exc)
            self.window.last_error = f"{type(exc).__name__}: {exc}"
            return False

    def _maybe_rebuild_index(self) -> None:
        """Rebuild the user index when it is missing, renumbered, too far behind or near its horizon."""
        table, generation = self.window.snapshot()
        if table is None:
            return
        current = self._user_index
        now_ms = _epoch_ms(utcnow())
        if current is not None:
            index, indexed_generation = current
            behind = table.num_rows - index.rows
            if (
                indexed_generation == generation
                and behind <= max(self.index_rebuild_rows, index.rows // 10)
                and now_ms < index.latest_ms - _INDEX_HORIZON_MS // 2
            ):
                return
        index = UserHistoryIndex(table, self.params, now_ms=now_ms, horizon_ms=_INDEX_HORIZON_MS)
        self._user_index = (index, generation)  # one assignment: readers see the old or the new

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_interval_s):
            self._try_refresh()

    def _check_fresh(self) -> None:
        if self.refresh_interval_s == 0:
            with self._refresh_lock:
                self.window.refresh()
                self._maybe_rebuild_index()
            return
        loaded_at = self.window.loaded_at
        if loaded_at is None:
            raise FeatureLookupUnavailable(f"event window not loaded: {self.window.last_error}")
        age = time.monotonic() - loaded_at
        if age > self.max_staleness_s:
            raise FeatureLookupUnavailable(
                f"event window is {age:.1f}s old (limit {self.max_staleness_s}s): {self.window.last_error}"
            )

    def targets_table(self, items: Sequence[dict[str, Any]], now: dt.datetime) -> pa.Table:
        return pa.table(
            {
                "user_id": pa.array([i["user_id"] for i in items], pa.string()),
                "entity_type": pa.array([i["entity_type"] for i in items], pa.string()),
                "entity_id": pa.array([i["entity_id"] for i in items], pa.string()),
                "changed_fields": pa.array([list(i["changed_fields"]) for i in items], _FIELDS),
                "synced_at": pa.array([_epoch_ms(i.get("at") or now) for i in items], _TIME_MS),
            }
        )

    def compute(self, items: Sequence[dict[str, Any]], now: dt.datetime | None = None) -> np.ndarray:
        """An ``(len(items), len(FEATURE_NAMES))`` float matrix, rows in item order.

        Items whose lookback lies within the in-memory window are answered from it; only those
        that reach further back (a client-supplied past ``at``) are answered from the store,
        so one such item does not slow the others batched with it.
        """
        now = now or utcnow()
        self._check_fresh()
        lookback = self.params.lookback.to_pytimedelta()
        covered = self.window.covered_since
        if covered is not None and min(i.get("at") or now for i in items) - lookback >= covered:
            return self._from_window(items, now)
        if covered is None:
            return self._from_store(items, now)
        old = np.fromiter(((i.get("at") or now) - lookback < covered for i in items), dtype=bool, count=len(items))
        matrix = np.empty((len(items), len(FEATURE_NAMES)), dtype=np.float64)
        matrix[old] = self._from_store([i for i, o in zip(items, old, strict=True) if o], now)
        if not old.all():
            matrix[~old] = self._from_window([i for i, o in zip(items, old, strict=True) if not o], now)
        return matrix

    def _from_window(self, items: Sequence[dict[str, Any]], now: dt.datetime) -> np.ndarray:
        targets = self.targets_table(items, now)
        users, entities = _keys(items)
        # Each side from only what it needs: the user side from the index over the window,
        # the entity side from the requested entities' events.
        arrays = self._user_side(items, users, targets)
        arrays |= feature_arrays(self.window.history((), entities), targets, self.params, side="entity")
        return _matrix(arrays)

    def _from_store(self, items: Sequence[dict[str, Any]], now: dt.datetime) -> np.ndarray:
        users, entities = _keys(items)
        earliest = min(i.get("at") or now for i in items) - self.params.lookback.to_pytimedelta()
        history = load_events(self.engine, since=earliest, user_ids=users, entity_keys=entities)
        return _matrix(feature_arrays(history, self.targets_table(items, now), self.params))

    def _user_side(self, items: Sequence[dict[str, Any]], users: list[str], targets: pa.Table) -> dict[str, np.ndarray]:
        t_ms = targets.column("synced_at").combine_chunks().cast(pa.int64()).to_numpy()
        counts: UserCounts | None = None
        current = self._user_index
        if current is not None:
            index, generation = current
            indexed = index.counts([i["user_id"] for i in items], t_ms)
            added = None if indexed is None else self.window.added_since(users, index.rows, generation)
            if indexed is not None and added is not None:
                counts = indexed.plus(user_side_counts(added, targets, self.params)) if added.num_rows else indexed
        if counts is None:  # no index yet, or the targets or the rows moved past it
            return feature_arrays(self.window.history(users, ()), targets, self.params, side="user")
        return user_side_features(counts, t_ms, self.params)

    def compute_many(self, requests: Sequence[Sequence[dict[str, Any]]]) -> list[np.ndarray]:
        """:meth:`compute` over several requests at once; one matrix per request."""
        flat = [item for request in requests for item in request]
        matrix = self.compute(flat)
        bounds = np.cumsum([0, *(len(r) for r in requests)])
        return [matrix[bounds[i] : bounds[i + 1]] for i in range(len(requests))]

    def status(self) -> dict[str, Any]:
        loaded_at = self.window.loaded_at
        return {
            "rows": self.window.rows,
            "age_s": None if loaded_at is None else round(time.monotonic() - loaded_at, 3),
            "last_error": self.window.last_error,
        }
