"""Online features: the recent history of the requesting users and entities, then the shared
:func:`conflict_core.features.feature_arrays` with the request items as targets.

:class:`~serve_app.event_window.EventWindow` keeps the store's events of the last
``FeatureParams.lookback`` in memory, indexed by user and by entity, refreshed by tailing the
store, so a prediction never waits for the store. The cost is staleness bounded by the refresh
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
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
from sqlalchemy.engine import Engine

from conflict_core.events.store_reads import load_events
from conflict_core.features import (
    ALL_FEATURES,
    FeatureParams,
    UserCounts,
    UserHistoryIndex,
    feature_arrays,
    user_side_counts,
    user_side_features,
)
from conflict_core.store import make_engine, utcnow
from serve_app.event_window import EventWindow, FeatureLookupUnavailable

log = logging.getLogger(__name__)

FEATURE_NAMES: tuple[str, ...] = ALL_FEATURES

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)
_TIME_MS = pa.timestamp("ms", tz="UTC")
_FIELDS = pa.list_(pa.string())
_INDEX_HORIZON_MS = 6 * 3_600_000  # the user index answers targets up to 6 h past its newest time


def _epoch_ms(moment: dt.datetime) -> int:
    return (moment - _EPOCH) // _MS


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

    The window holds ``params.lookback`` plus ``window_margin`` of history, so items asked
    about as of up to ``window_margin`` in the past (a device that was offline, a replay) are
    answered from memory too; only older ones read the store.

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
        window_margin: dt.timedelta = dt.timedelta(0),
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
        if window_margin < dt.timedelta(0):
            raise ValueError(f"window_margin must not be negative, got {window_margin}")
        self.window_margin = window_margin
        self.window = EventWindow(engine, params.lookback.to_pytimedelta() + window_margin)
        self.index_rebuild_rows = index_rebuild_rows
        # The index, the window generation it indexes and the parameters it counts with.
        self._user_index: tuple[UserHistoryIndex, int, FeatureParams] | None = None
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

    def use_params(self, params: FeatureParams) -> None:
        """Compute with ``params`` (the served model's) from now on.

        The window only ever grows: when ``params`` look further back than it holds, a window
        with their lookback is loaded and swapped in, so it covers every model served so far.
        """
        if params == self.params:
            return
        with self._refresh_lock:
            self._grow_window(params)
            self.params = params
            self._maybe_rebuild_index()
        log.info("feature parameters now %s (window lookback %s)", params, self.window.lookback)

    def cover(self, params: FeatureParams) -> None:
        """Make the window reach back as far as ``params`` need (a rollout challenger's), without
        computing with them by default: :meth:`compute_many_with_params` takes them per call."""
        with self._refresh_lock:
            self._grow_window(params)
            self._maybe_rebuild_index()

    def _grow_window(self, params: FeatureParams) -> None:
        lookback = params.lookback.to_pytimedelta() + self.window_margin
        if lookback > self.window.lookback:
            window = EventWindow(self.engine, lookback)
            window.refresh()
            # The index counts the old window's rows: drop it before readers can see the new
            # window (they compute from the window itself until it is rebuilt).
            self._user_index = None
            self.window = window  # one assignment: readers see the old or the new

    def _maybe_rebuild_index(self) -> None:
        """Rebuild the user index when it is missing, renumbered, too far behind or near its horizon."""
        table, generation = self.window.snapshot()
        if table is None:
            return
        current = self._user_index
        now_ms = _epoch_ms(utcnow())
        if current is not None:
            index, indexed_generation, indexed_params = current
            behind = table.num_rows - index.rows
            if (
                indexed_params == self.params
                and indexed_generation == generation
                and behind <= max(self.index_rebuild_rows, index.rows // 10)
                and now_ms < index.latest_ms - _INDEX_HORIZON_MS // 2
            ):
                return
        index = UserHistoryIndex(table, self.params, now_ms=now_ms, horizon_ms=_INDEX_HORIZON_MS)
        self._user_index = (index, generation, self.params)  # one assignment: readers see the old or the new

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
        return self.compute_with_params(items, now)[0]

    def compute_with_params(
        self, items: Sequence[dict[str, Any]], now: dt.datetime | None = None, params: FeatureParams | None = None
    ) -> tuple[np.ndarray, FeatureParams]:
        """:meth:`compute` and the parameters it used (one read: a concurrent switch does not mix
        them); ``params``: other parameters than the served model's, for a challenger's features
        (the window must :meth:`cover` them)."""
        now = now or utcnow()
        self._check_fresh()
        window = self.window
        params = params or self.params
        lookback = params.lookback.to_pytimedelta()
        covered = window.covered_since
        if covered is not None and min(i.get("at") or now for i in items) - lookback >= covered:
            return self._from_window(items, now, params, window), params
        if covered is None:
            return self._from_store(items, now, params), params
        old = np.fromiter(((i.get("at") or now) - lookback < covered for i in items), dtype=bool, count=len(items))
        matrix = np.empty((len(items), len(FEATURE_NAMES)), dtype=np.float64)
        matrix[old] = self._from_store([i for i, o in zip(items, old, strict=True) if o], now, params)
        if not old.all():
            rest = [i for i, o in zip(items, old, strict=True) if not o]
            matrix[~old] = self._from_window(rest, now, params, window)
        return matrix, params

    def _from_window(
        self, items: Sequence[dict[str, Any]], now: dt.datetime, params: FeatureParams, window: EventWindow
    ) -> np.ndarray:
        targets = self.targets_table(items, now)
        users, entities = _keys(items)
        # Each side from only what it needs: the user side from the index over the window,
        # the entity side from the requested entities' events.
        arrays = self._user_side(items, users, targets, params, window)
        arrays |= feature_arrays(window.history((), entities), targets, params, side="entity")
        return _matrix(arrays)

    def _from_store(self, items: Sequence[dict[str, Any]], now: dt.datetime, params: FeatureParams) -> np.ndarray:
        users, entities = _keys(items)
        earliest = min(i.get("at") or now for i in items) - params.lookback.to_pytimedelta()
        history = load_events(self.engine, since=earliest, user_ids=users, entity_keys=entities)
        return _matrix(feature_arrays(history, self.targets_table(items, now), params))

    def _user_side(
        self,
        items: Sequence[dict[str, Any]],
        users: list[str],
        targets: pa.Table,
        params: FeatureParams,
        window: EventWindow,
    ) -> dict[str, np.ndarray]:
        t_ms = targets.column("synced_at").combine_chunks().cast(pa.int64()).to_numpy()
        counts: UserCounts | None = None
        current = self._user_index
        if current is not None and current[2] == params and window is self.window:
            index, generation, _ = current
            indexed = index.counts([i["user_id"] for i in items], t_ms)
            added = None if indexed is None else window.added_since(users, index.rows, generation)
            if indexed is not None and added is not None:
                counts = indexed.plus(user_side_counts(added, targets, params)) if added.num_rows else indexed
        if counts is None:  # no index yet (or not for these parameters), or the targets or rows moved past it
            return feature_arrays(window.history(users, ()), targets, params, side="user")
        return user_side_features(counts, t_ms, params)

    def compute_many(self, requests: Sequence[Sequence[dict[str, Any]]]) -> list[np.ndarray]:
        """:meth:`compute` over several requests at once; one matrix per request."""
        return self.compute_many_with_params(requests)[0]

    def compute_many_with_params(
        self, requests: Sequence[Sequence[dict[str, Any]]], params: FeatureParams | None = None
    ) -> tuple[list[np.ndarray], FeatureParams]:
        flat = [item for request in requests for item in request]
        matrix, params = self.compute_with_params(flat, params=params)
        bounds = np.cumsum([0, *(len(r) for r in requests)])
        return [matrix[bounds[i] : bounds[i + 1]] for i in range(len(requests))], params

    def status(self) -> dict[str, Any]:
        loaded_at = self.window.loaded_at
        return {
            "rows": self.window.rows,
            "age_s": None if loaded_at is None else round(time.monotonic() - loaded_at, 3),
            "last_error": self.window.last_error,
            "lookback_s": self.window.lookback.total_seconds(),
            "feature_params": asdict(self.params),
        }
