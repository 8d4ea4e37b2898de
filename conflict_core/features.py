"""Point-in-time feature definitions, shared by the offline job and the online lookup.

Every feature of a *target* sync (user ``u`` on entity ``x`` changing fields ``F`` at time
``t``) is computed from a *history* of sync events using only facts known strictly before
``t``. A conflict becomes known when its resolution was recorded (``resolved_at``), not when
the conflicting sync happened, because outcomes arrive late.

There is exactly one implementation, :func:`compute_features`, vectorized over any number of
targets. The offline job passes the whole event table as both history and targets; the
online lookup passes the recent history of the requesting users and entities and the
request items as targets (:func:`features_for_request` for a single item). Both therefore
produce identical values for the same instant.

Each feature is a count over a time window, and every count is answered with sorted
composite ``(group code, time)`` keys and ``numpy.searchsorted``; no Python loop runs per
row. Times are compared at millisecond resolution.

Features (the five seed features first):

``concurrent_editors``
    distinct other users who synced ``x`` in the 5 minutes before ``t``.
``hours_since_last_sync``
    hours since ``u``'s previous sync of anything, capped at 168 (168 for a first sync).
``user_conflict_rate``
    share of ``u``'s syncs in the 30 days before ``t`` that conflicted, counting a conflict
    only once its resolution was recorded before ``t``; smoothed towards a prior rate so that
    a user with little history is not scored 0 or 1.
``entity_edit_frequency``
    syncs of ``x`` per day over the 30 days before ``t``.
``field_overlap_score``
    share of ``F`` that other users changed on ``x`` in the 30 days before ``t``.
``edits_since_own_last_sync``
    syncs of ``x`` by others since ``u``'s previous sync of ``x`` (at most 30 days back):
    how stale ``u``'s copy of ``x`` probably is.
``overlap_since_own_last_sync``
    share of ``F`` that other users changed on ``x`` since ``u``'s previous sync of ``x`` (at
    most 30 days back): the stale, overlapping edits that make a conflict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from conflict_core.errors import ConflictPredictorError

SEED_FEATURES: tuple[str, ...] = (
    "concurrent_editors",
    "hours_since_last_sync",
    "user_conflict_rate",
    "entity_edit_frequency",
    "field_overlap_score",
)
EXTRA_FEATURES: tuple[str, ...] = ("edits_since_own_last_sync", "overlap_since_own_last_sync")
ALL_FEATURES: tuple[str, ...] = SEED_FEATURES + EXTRA_FEATURES

# Direction of each feature's effect on conflict risk where it is known, as scikit-learn's
# monotonic_cst expects (+1 increasing, 0 unconstrained).
MONOTONIC_DIRECTION: Mapping[str, int] = {
    "concurrent_editors": 1,
    "hours_since_last_sync": 0,
    "user_conflict_rate": 1,
    "entity_edit_frequency": 0,
    "field_overlap_score": 1,
    "edits_since_own_last_sync": 0,
    "overlap_since_own_last_sync": 1,
}

HISTORY_COLUMNS: tuple[str, ...] = (
    "user_id",
    "entity_type",
    "entity_id",
    "changed_fields",
    "synced_at",
    "conflict",
    "resolved_at",
)
TARGET_COLUMNS: tuple[str, ...] = ("user_id", "entity_type", "entity_id", "changed_fields", "synced_at")

_MS_PER_HOUR = 3_600_000
_MS_PER_DAY = 24 * _MS_PER_HOUR
_NONE = np.int64(-1)  # "no such event"; below every window bound, which are all >= 1


Frame: TypeAlias = pd.DataFrame | pa.Table
"""History and targets are pandas frames or Arrow tables; both give identical features.

Arrow tables (UTC timestamps, ``list<string>`` fields) skip pandas' per-call overhead, which
dominates for the few hundred rows of an online request; the offline job passes pandas.
"""


class FeatureComputationError(ConflictPredictorError):
    """The inputs cannot be turned into features (missing columns, key space too large)."""


@dataclass(frozen=True)
class FeatureParams:
    """Windows and smoothing of the feature definitions."""

    concurrent_window_minutes: float = 5.0
    history_window_days: float = 30.0
    hours_since_cap: float = 168.0
    prior_conflict_rate: float = 0.05
    prior_strength: float = 5.0

    @property
    def concurrent_window_ms(self) -> int:
        return int(self.concurrent_window_minutes * 60_000)

    @property
    def history_window_ms(self) -> int:
        return int(self.history_window_days * _MS_PER_DAY)

    @property
    def lookback(self) -> pd.Timedelta:
        """How far back the history must reach for a target to be computed exactly."""
        return pd.Timedelta(milliseconds=max(self.history_window_ms, self.concurrent_window_ms))


# --------------------------------------------------------------------------------------
# Small building blocks
# --------------------------------------------------------------------------------------


def to_epoch_ms(values: pd.Series | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """UTC timestamps as int64 milliseconds since the epoch; missing values become ``-1``."""
    if isinstance(values, pa.Array | pa.ChunkedArray) and pa.types.is_timestamp(values.type):
        if values.type.tz is None:
            raise FeatureComputationError(f"expected UTC timestamps, got naive {values.type}")
        # Arrow stores instants as UTC counts whatever the zone, so only the unit changes.
        millis = pc.cast(values, pa.timestamp("ms", tz="UTC"), safe=False).cast(pa.int64())
        return np.asarray(pc.fill_null(millis, _NONE).to_numpy(), dtype=np.int64)
    series = values if isinstance(values, pd.Series) else pd.Series(values.to_pandas())
    if not isinstance(series.dtype, pd.DatetimeTZDtype):
        if isinstance(series.dtype, pd.ArrowDtype) or series.dtype == object:
            series = pd.to_datetime(series, utc=True)
        else:
            raise FeatureComputationError(f"expected UTC timestamps, got dtype {series.dtype}")
    naive = series.dt.tz_convert("UTC").dt.tz_localize(None)
    out = naive.to_numpy(dtype="datetime64[ms]", na_value=np.datetime64("NaT")).astype(np.int64)
    out[naive.isna().to_numpy()] = _NONE
    return out


def flatten_fields(values: Any) -> tuple[np.ndarray, pa.Array]:
    """``(parent row index, field name)`` for every element of a list-of-strings column."""
    if isinstance(values, pd.Series) and isinstance(values.dtype, pd.ArrowDtype):
        values = values.array._pa_array  # the underlying ChunkedArray, no copy
    if isinstance(values, pd.Series):
        values = pa.array(values.to_list(), type=pa.list_(pa.string()))
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.ListArray | pa.LargeListArray):
        raise FeatureComputationError(f"changed_fields must be a list of strings, got {type(values)}")
    parents = pa.compute.list_parent_indices(values).to_numpy().astype(np.int64)
    return parents, values.flatten()


def _codes(*columns: Any) -> np.ndarray:
    """Dense int64 codes for the combination of the given equal-length columns."""
    code: np.ndarray | None = None
    for column in columns:
        if isinstance(column, pa.Array):
            encoded = column.dictionary_encode(null_encoding="encode")
            part, n_unique = encoded.indices.to_numpy(zero_copy_only=False), len(encoded.dictionary)
        else:
            part, uniques = pd.factorize(column, use_na_sentinel=False)
            n_unique = len(uniques)
        part = np.asarray(part, dtype=np.int64)
        if code is None:
            code = part
        else:
            code, _ = pd.factorize(code * np.int64(n_unique) + part)
            code = np.asarray(code, dtype=np.int64)
    assert code is not None
    return code


class _Queries:
    """Query codes with the order that sorts their keys.

    ``searchsorted`` is several times faster on sorted needles, and a uniform time shift
    (``t - 30 days``) keeps the order, so one argsort serves every window of a group.
    """

    def __init__(self, codes: np.ndarray, times: np.ndarray, stride: np.int64):
        self.codes = codes
        self.order = np.argsort(codes * stride + times, kind="stable")
        self.sorted_codes = codes[self.order]


class _KeyedTimes:
    """Event times grouped by an integer code, sorted, answering window counts in bulk.

    Only the sorted ``code * stride + time`` keys are kept (8 bytes an event): every count and
    :meth:`last_time_before` read them alone, which matters for an index held over millions of
    events; :class:`_SortedEvents` also keeps the order, codes and times.
    """

    def __init__(self, codes: np.ndarray, times: np.ndarray, stride: np.int64, n_codes: int):
        self._sort(codes, times, stride, n_codes)

    def _sort(self, codes: np.ndarray, times: np.ndarray, stride: np.int64, n_codes: int) -> np.ndarray:
        """Sort the keys; returns the order (the events' positions in key order)."""
        self.stride = stride
        keys = codes * stride
        keys += times
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.group_start = np.searchsorted(self.keys, np.arange(n_codes, dtype=np.int64) * stride, "left")
        return order

    def _positions(self, queries: _Queries, times: np.ndarray) -> np.ndarray:
        """For each query, the sorted position of the first event of its code at or after ``time``."""
        needles = queries.sorted_codes * self.stride + np.maximum(times[queries.order], 0)
        found = np.empty(len(needles), dtype=np.int64)
        found[queries.order] = np.searchsorted(self.keys, needles, "left")
        return found

    def count_before(self, queries: _Queries, times: np.ndarray) -> np.ndarray:
        """How many events of each query's code happened strictly before each time."""
        return self._positions(queries, times) - self.group_start[queries.codes]

    def count_between(self, queries: _Queries, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Events of each query's code with ``start <= time < end``."""
        return np.maximum(self._positions(queries, end) - self._positions(queries, start), 0)

    def last_before(self, queries: _Queries, times: np.ndarray) -> np.ndarray:
        """Sorted position of each code's latest event strictly before each time, or -1."""
        pos = self._positions(queries, times) - 1
        return np.where(pos >= self.group_start[queries.codes], pos, -1)

    def last_time_before(self, queries: _Queries, times: np.ndarray) -> np.ndarray:
        """Time of each code's latest event strictly before each time, or -1."""
        pos = self.last_before(queries, times)
        # A found position lies in its query's group, so its key is code * stride + time.
        return _take(self.keys, pos) - np.where(pos >= 0, queries.codes * self.stride, 0)


class _SortedEvents(_KeyedTimes):
    """:class:`_KeyedTimes` that also keeps the sort order and the sorted codes and times, for
    walking the events in key order."""

    def __init__(self, codes: np.ndarray, times: np.ndarray, stride: np.int64, n_codes: int):
        self.order = self._sort(codes, times, stride, n_codes)
        self.codes = codes[self.order]
        self.times = times[self.order]


def _take(values: np.ndarray, positions: np.ndarray, missing: Any = _NONE) -> np.ndarray:
    """``values[positions]`` where a position is >= 0, ``missing`` where it is -1."""
    if len(values) == 0:
        return np.full(len(positions), missing)
    return np.where(positions >= 0, values[np.maximum(positions, 0)], missing)


class _Intervals:
    """Intervals ``(open, close]`` grouped by an integer code, answering coverage counts in bulk."""

    def __init__(self, codes: np.ndarray, opens: np.ndarray, closes: np.ndarray, stride: np.int64, n_codes: int):
        self.opened = _KeyedTimes(codes, opens, stride, n_codes)
        self.closed = _KeyedTimes(codes, closes, stride, n_codes)

    def covering(self, queries: _Queries, times: np.ndarray) -> np.ndarray:
        """For each query, how many intervals of its code contain its time."""
        return self.opened.count_before(queries, times) - self.closed.count_before(queries, times)


# --------------------------------------------------------------------------------------
# The definitions
# --------------------------------------------------------------------------------------


USER_SIDE: tuple[str, ...] = ("hours_since_last_sync", "user_conflict_rate")
ENTITY_SIDE: tuple[str, ...] = tuple(f for f in ALL_FEATURES if f not in USER_SIDE)
SIDES: Mapping[str, tuple[str, ...]] = {"all": ALL_FEATURES, "user": USER_SIDE, "entity": ENTITY_SIDE}


def compute_features(
    history: Frame,
    targets: Frame,
    params: FeatureParams = FeatureParams(),
    *,
    side: str = "all",
) -> pd.DataFrame:
    """Features of every row of ``targets``, from the events of ``history`` before it.

    ``history`` needs :data:`HISTORY_COLUMNS` and must hold every event of the targets' users
    and entities in the ``params.lookback`` before each target; it may hold more. ``targets``
    needs :data:`TARGET_COLUMNS`. Returns one row per target, same index (a range index for
    an Arrow table).

    ``side`` selects :data:`USER_SIDE` features (which need only the users' histories),
    :data:`ENTITY_SIDE` features (which need only the entities' histories) or ``"all"``; a
    job can therefore partition events by user for one side and by entity for the other.
    """
    index = targets.index if isinstance(targets, pd.DataFrame) else pd.RangeIndex(targets.num_rows)
    return pd.DataFrame(feature_arrays(history, targets, params, side=side), index=index)


def feature_arrays(
    history: Frame,
    targets: Frame,
    params: FeatureParams = FeatureParams(),
    *,
    side: str = "all",
) -> dict[str, np.ndarray]:
    """:func:`compute_features` as one array per feature, in :data:`SIDES` order, no frame built."""
    if side not in SIDES:
        raise FeatureComputationError(f"side must be one of {sorted(SIDES)}, got {side!r}")
    _require_columns(history, HISTORY_COLUMNS, "history")
    _require_columns(targets, TARGET_COLUMNS, "targets")
    columns = list(SIDES[side])
    frame = _Frame.build(history, targets, params)
    if frame is None:
        return {name: np.zeros(_num_rows(targets)) for name in columns}
    out: dict[str, np.ndarray] = {}
    if side in ("all", "entity"):
        out.update(_entity_side(frame, history, targets))
    if side in ("all", "user"):
        out.update(_user_side(frame))
    return {name: out[name] for name in columns}


@dataclass
class _Frame:
    """History and targets reduced to integer codes and shifted millisecond times."""

    params: FeatureParams
    origin: np.int64  # every time below is milliseconds since the epoch minus this
    stride: np.int64
    h_time: np.ndarray
    t_time: np.ndarray
    h_resolved: np.ndarray
    h_conflict: np.ndarray
    users: np.ndarray  # history codes first, then target codes
    entities: np.ndarray
    n_hist: int

    @classmethod
    def build(cls, history: Frame, targets: Frame, params: FeatureParams) -> _Frame | None:
        h_time = to_epoch_ms(_column(history, "synced_at"))
        t_time = to_epoch_ms(_column(targets, "synced_at"))
        if len(t_time) and (t_time < 0).any():
            raise FeatureComputationError("targets have a missing synced_at")
        h_resolved = to_epoch_ms(_column(history, "resolved_at"))
        w30, w5 = params.history_window_ms, params.concurrent_window_ms
        all_times = np.concatenate([h_time, t_time, h_resolved[h_resolved >= 0]])
        if len(t_time) == 0:
            return None
        # Shift times so that every window bound is >= 1 and every key fits in int64.
        origin = all_times.min() - w30 - w5 - 2
        stride = np.int64(all_times.max() - origin + w30 + w5 + 2)
        users = _codes(_stacked(history, targets, "user_id"))
        entities = _codes(_stacked(history, targets, "entity_type"), _stacked(history, targets, "entity_id"))
        return cls(
            params=params,
            origin=np.int64(origin),
            stride=stride,
            h_time=h_time - origin,
            t_time=t_time - origin,
            h_resolved=np.where(h_resolved >= 0, h_resolved - origin, _NONE),
            h_conflict=_bool_array(_column(history, "conflict")),
            users=users,
            entities=entities,
            n_hist=len(h_time),
        )

    def split(self, codes: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, int]:
        """History codes, target codes and the number of codes, refusing an int64 overflow."""
        n_codes = int(codes.max()) + 1
        if n_codes > np.iinfo(np.int64).max // self.stride:
            raise FeatureComputationError(f"too many distinct {name} keys for the time span; split the input")
        return codes[: self.n_hist], codes[self.n_hist :], n_codes

    @property
    def window_start(self) -> np.ndarray:
        return self.t_time - self.params.history_window_ms


class UserCounts(NamedTuple):
    """What the user-side features of each target are made of; additive over disjoint histories.

    ``last`` is the time (epoch ms) of the user's latest sync strictly before the target, or
    -1; ``syncs`` the user's syncs in the 30 days before it; ``conflicts`` those of them whose
    conflict was resolved (known) before it.
    """

    last: np.ndarray
    syncs: np.ndarray
    conflicts: np.ndarray

    def plus(self, other: UserCounts) -> UserCounts:
        """The counts over both histories (which must not share an event)."""
        return UserCounts(np.maximum(self.last, other.last), self.syncs + other.syncs, self.conflicts + other.conflicts)


class _UserTables:
    """The user side's sorted event tables over one history, in a frame's shifted times."""

    def __init__(
        self,
        h_user: np.ndarray,
        h_time: np.ndarray,
        h_resolved: np.ndarray,
        h_conflict: np.ndarray,
        stride: np.int64,
        n_users: int,
        params: FeatureParams,
    ):
        self.stride, self.params = stride, params
        self.by_user = _KeyedTimes(h_user, h_time, stride, n_users)
        # A conflict synced at s and resolved at r counts for targets at t with
        # r < t <= s + 30 days: its resolution is known and the sync is inside the window.
        known = h_conflict & (h_resolved >= 0)
        opens, closes = h_resolved[known], h_time[known] + params.history_window_ms
        valid = opens < closes
        self.conflicts = _Intervals(h_user[known][valid], opens[valid], closes[valid], stride, n_users)

    def counts(self, t_user: np.ndarray, t_time: np.ndarray, origin: np.int64) -> UserCounts:
        """Counts for targets given by user code and shifted time; ``last`` back in epoch ms."""
        queries = _Queries(t_user, t_time, self.stride)
        last = self.by_user.last_time_before(queries, t_time)
        return UserCounts(
            last=np.where(last >= 0, last + origin, _NONE),
            syncs=self.by_user.count_between(queries, t_time - self.params.history_window_ms, t_time),
            conflicts=self.conflicts.covering(queries, t_time),
        )


def user_side_features(counts: UserCounts, t_ms: np.ndarray, params: FeatureParams) -> dict[str, np.ndarray]:
    """:data:`USER_SIDE` features of targets at ``t_ms`` (epoch ms) from their counts."""
    hours = np.where(counts.last >= 0, (t_ms - counts.last) / _MS_PER_HOUR, params.hours_since_cap)
    rate = (counts.conflicts + params.prior_strength * params.prior_conflict_rate) / (
        counts.syncs + params.prior_strength
    )
    return {"hours_since_last_sync": np.minimum(hours, params.hours_since_cap), "user_conflict_rate": rate}


def user_side_counts(history: Frame, targets: Frame, params: FeatureParams = FeatureParams()) -> UserCounts:
    """:class:`UserCounts` of every target from the events of ``history`` (the generic path)."""
    _require_columns(history, HISTORY_COLUMNS, "history")
    _require_columns(targets, TARGET_COLUMNS, "targets")
    f = _Frame.build(history, targets, params)
    if f is None:
        empty = np.zeros(0, dtype=np.int64)
        return UserCounts(empty, empty, empty)
    return _user_counts(f)


def _user_counts(f: _Frame) -> UserCounts:
    h_user, t_user, n_users = f.split(f.users, "user")
    tables = _UserTables(h_user, f.h_time, f.h_resolved, f.h_conflict, f.stride, n_users, f.params)
    return tables.counts(t_user, f.t_time, f.origin)


def _user_side(f: _Frame) -> dict[str, np.ndarray]:
    return user_side_features(_user_counts(f), f.t_time + f.origin, f.params)


class UserHistoryIndex:
    """The user side over a fixed history, sorted once and then queried for any targets.

    The online lookup keeps one over its event window, so a batch of requests costs a few
    binary searches per target instead of sorting every requesting user's history again. The
    tables and the arithmetic are those of :func:`compute_features`; counts over events
    added later come from :func:`user_side_counts` on just those events and are combined
    with :meth:`UserCounts.plus`. Exact for target times in ``[earliest_ms, latest_ms]``;
    :meth:`counts` returns None for a batch reaching outside.
    """

    def __init__(self, history: Frame, params: FeatureParams = FeatureParams(), *, now_ms: int, horizon_ms: int):
        _require_columns(history, HISTORY_COLUMNS, "history")
        self.params = params
        h_time = to_epoch_ms(_column(history, "synced_at"))
        h_resolved = to_epoch_ms(_column(history, "resolved_at"))
        users = _column(history, "user_id")
        if isinstance(users, pa.ChunkedArray):
            # A dictionary column (the online window's) is used as it is: no copy of its strings.
            encoded = users if pa.types.is_dictionary(users.type) else users.cast(pa.string()).dictionary_encode()
            encoded = encoded.unify_dictionaries()  # one dictionary for every chunk
            indices = [chunk.indices.to_numpy(zero_copy_only=False) for chunk in encoded.chunks]
            codes = np.concatenate(indices).astype(np.int64) if indices else np.zeros(0, dtype=np.int64)
            names = encoded.chunk(0).dictionary.to_pylist() if encoded.num_chunks else []
        else:
            codes, uniques = pd.factorize(users.astype("str"))
            names = list(uniques)
        self.code: dict[str, int] = {name: i for i, name in enumerate(names)}
        self.unknown = len(names)  # the code of a user without history: an empty group
        w30, w5 = params.history_window_ms, params.concurrent_window_ms
        known = np.concatenate([h_time, h_resolved[h_resolved >= 0], [now_ms]])
        self.origin = np.int64(known.min() - w30 - w5 - 2)
        self.latest_ms = int(known.max()) + horizon_ms
        self.earliest_ms = int(self.origin) + w30 + w5 + 2
        self.rows = len(h_time)
        stride = np.int64(self.latest_ms - self.origin + w30 + w5 + 2)
        if self.unknown + 1 > np.iinfo(np.int64).max // stride:
            raise FeatureComputationError("too many distinct user keys for the time span; split the input")
        self._tables = _UserTables(
            np.asarray(codes, dtype=np.int64),
            h_time - self.origin,
            np.where(h_resolved >= 0, h_resolved - self.origin, _NONE),
            _bool_array(_column(history, "conflict")),
            stride,
            self.unknown + 1,
            params,
        )

    def counts(self, user_ids: Sequence[str], t_ms: np.ndarray) -> UserCounts | None:
        if len(t_ms) and (t_ms.min() < self.earliest_ms or t_ms.max() > self.latest_ms):
            return None
        code, unknown = self.code, self.unknown
        t_user = np.fromiter((code.get(u, unknown) for u in user_ids), dtype=np.int64, count=len(user_ids))
        return self._tables.counts(t_user, np.asarray(t_ms, dtype=np.int64) - self.origin, self.origin)


def _entity_side(f: _Frame, history: Frame, targets: Frame) -> dict[str, np.ndarray]:
    w5 = f.params.concurrent_window_ms
    h_ent, t_ent, n_entities = f.split(f.entities, "entity")
    h_user, t_user, _ = f.split(f.users, "user")
    h_pair, t_pair, n_pairs = f.split(_codes(f.entities, f.users), "user-entity")
    by_entity = _KeyedTimes(h_ent, f.h_time, f.stride, n_entities)
    by_pair = _SortedEvents(h_pair, f.h_time, f.stride, n_pairs)
    q_ent = _Queries(t_ent, f.t_time, f.stride)
    q_pair = _Queries(t_pair, f.t_time, f.stride)

    # concurrent_editors: each history event stands for its user "being on x" from its time
    # until 5 minutes later or the same user's next sync of x, whichever comes first.
    next_same = np.full(f.n_hist, np.iinfo(np.int64).max, dtype=np.int64)
    same_pair_next = by_pair.codes[1:] == by_pair.codes[:-1]
    next_same[by_pair.order[:-1][same_pair_next]] = by_pair.times[1:][same_pair_next]
    closes = np.minimum(next_same, f.h_time + w5 - 1)
    editors = _Intervals(h_ent, f.h_time, closes, f.stride, n_entities).covering(q_ent, f.t_time)
    own_last = by_pair.last_time_before(q_pair, f.t_time)
    editors -= (own_last >= 0) & (own_last > f.t_time - w5)

    window_start = f.window_start
    since_own = np.maximum(window_start, np.where(own_last >= 0, own_last + 1, window_start))
    overlap_30, overlap_own = _field_overlap(
        history, targets, h_ent, h_user, f.h_time, t_ent, t_user, f.t_time, window_start, since_own, f.stride
    )
    return {
        "concurrent_editors": editors.astype(np.int64),
        "entity_edit_frequency": by_entity.count_between(q_ent, window_start, f.t_time) / f.params.history_window_days,
        "field_overlap_score": overlap_30,
        "edits_since_own_last_sync": by_entity.count_between(q_ent, since_own, f.t_time).astype(np.int64),
        "overlap_since_own_last_sync": overlap_own,
    }


def _field_overlap(
    history: Frame,
    targets: Frame,
    h_ent: np.ndarray,
    h_user: np.ndarray,
    h_time: np.ndarray,
    t_ent: np.ndarray,
    t_user: np.ndarray,
    t_time: np.ndarray,
    window_start: np.ndarray,
    since_own: np.ndarray,
    stride: np.int64,
) -> tuple[np.ndarray, np.ndarray]:
    """Share of each target's fields that another user changed on the entity since a bound.

    Per (entity, field) the history is sorted by time and cut into runs of one user. The
    latest change by *another* user before ``t`` is the latest change before ``t`` if its
    user differs from the target's, and otherwise the change just before that run began.
    """
    h_parent, h_field = flatten_fields(_column(history, "changed_fields"))
    t_parent, t_field = flatten_fields(_column(targets, "changed_fields"))
    n_targ = _num_rows(targets)
    if len(t_parent) == 0:
        zeros = np.zeros(n_targ)
        return zeros, zeros
    fields = _codes(pa.concat_arrays([h_field, t_field.cast(h_field.type)]))
    n_hf = len(h_parent)
    slots = _codes(np.concatenate([h_ent[h_parent], t_ent[t_parent]]), fields)
    h_slot, t_slot = slots[:n_hf], slots[n_hf:]

    changes = _SortedEvents(h_slot, h_time[h_parent], stride, int(slots.max()) + 1)
    changed_by = h_user[h_parent][changes.order]
    new_run = np.ones(n_hf, dtype=bool)
    new_run[1:] = (changes.codes[1:] != changes.codes[:-1]) | (changed_by[1:] != changed_by[:-1])
    run_start = np.maximum.accumulate(np.where(new_run, np.arange(n_hf), 0))
    before_run = run_start - 1
    has_before = before_run >= 0
    has_before[has_before] = changes.codes[before_run[has_before]] == changes.codes[has_before]
    other_before_run = np.where(has_before, changes.times[np.maximum(before_run, 0)], _NONE)

    q_time = t_time[t_parent]
    pos = changes.last_before(_Queries(t_slot, q_time, stride), q_time)
    same_user = _take(changed_by, pos, -1) == t_user[t_parent]
    last_other = np.where(same_user, _take(other_before_run, pos), _take(changes.times, pos))

    n_fields = np.bincount(t_parent, minlength=n_targ).astype(float)
    denom = np.where(n_fields > 0, n_fields, 1.0)
    hit_30 = np.bincount(t_parent, weights=last_other >= window_start[t_parent], minlength=n_targ)
    hit_own = np.bincount(t_parent, weights=last_other >= since_own[t_parent], minlength=n_targ)
    return hit_30 / denom, hit_own / denom


def features_for_request(
    history: pd.DataFrame,
    *,
    user_id: str,
    entity_type: str,
    entity_id: str,
    changed_fields: Sequence[str],
    at: pd.Timestamp,
    params: FeatureParams = FeatureParams(),
) -> dict[str, float]:
    """The features of one prospective sync at instant ``at`` (one row of :func:`compute_features`)."""
    target = pd.DataFrame(
        {
            "user_id": [user_id],
            "entity_type": [entity_type],
            "entity_id": [entity_id],
            "changed_fields": [list(changed_fields)],
            "synced_at": [pd.Timestamp(at).tz_convert("UTC")],
        }
    )
    row = compute_features(history, target, params).iloc[0]
    return {name: float(row[name]) for name in ALL_FEATURES}


def _require_columns(frame: Frame, columns: Sequence[str], what: str) -> None:
    names = frame.column_names if isinstance(frame, pa.Table) else frame.columns
    missing = [c for c in columns if c not in names]
    if missing:
        raise FeatureComputationError(f"{what} lacks column(s) {missing}; expected {list(columns)}")


def _column(frame: Frame, name: str) -> pd.Series | pa.ChunkedArray:
    return frame.column(name) if isinstance(frame, pa.Table) else frame[name]


def _num_rows(frame: Frame) -> int:
    return frame.num_rows if isinstance(frame, pa.Table) else len(frame)


def _bool_array(values: pd.Series | pa.ChunkedArray) -> np.ndarray:
    """A boolean column as numpy, missing values as ``False``."""
    if isinstance(values, pa.ChunkedArray):
        return np.asarray(pc.fill_null(values, False).to_numpy(), dtype=bool)
    return values.to_numpy(dtype=bool, na_value=False)


def _stacked(history: Frame, targets: Frame, column: str) -> pd.Series | pa.Array:
    """One column of history and targets end to end, as strings, for shared codes."""
    h, t = _column(history, column), _column(targets, column)
    if isinstance(h, pa.ChunkedArray) and isinstance(t, pa.ChunkedArray):
        chunks = [c.cast(pa.string()) for c in (*h.chunks, *t.chunks)]
        return pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())
    h, t = (c.to_pandas() if isinstance(c, pa.ChunkedArray) else c for c in (h, t))
    return pd.concat([h, t], ignore_index=True).astype("str")
