"""Row positions of each key of an append-only table, in flat numpy arrays.

The event window asks, per batch, for every row of a few hundred users and entities among
millions of rows. A dict of Python lists costs ~70 bytes per row and key side and a Python
loop per appended row; this index costs 8 bytes per row (a 32-bit key code and a 32-bit
position in the key's sorted run) and numpy work per appended page:

- each distinct key gets a dense code (a dict over the *distinct* keys only);
- ``order`` lists the positions ``0 .. indexed`` grouped by code, ascending within a code,
  and ``starts`` says where each code's run begins (compressed sparse rows);
- rows appended since are a short ``tail`` of codes scanned with ``np.isin``, merged into
  ``order`` after each refresh — a merge is ``np.insert`` at each code's run end, one pass
  over memory and no sort, since every tail position is after every indexed one.

A run's positions ascend, so the rows of a set of keys come back in table (ingest) order.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import pyarrow as pa

_EMPTY = np.zeros(0, dtype=np.int64)


class KeyPositions:
    """Which rows hold each key, for a table that only grows (or is rebuilt whole).

    :meth:`append` records rows in table order; :meth:`merge` (the window calls it after each
    refresh) folds them into the sorted runs. Not thread-safe: the window calls it under its lock.
    """

    def __init__(self, keys: Sequence[Hashable] = (), inverse: np.ndarray = _EMPTY):
        """An index over rows whose keys are ``keys[inverse[i]]``, sorted at once."""
        self._code: dict[Hashable, int] = {}
        codes = self._codes(keys, inverse)
        self._order = np.argsort(codes, kind="stable").astype(np.int32)  # positions grouped by code
        self._starts = np.zeros(len(self._code) + 1, dtype=np.int64)  # run of c: order[starts[c]:starts[c + 1]]
        np.cumsum(np.bincount(codes, minlength=len(self._code)), out=self._starts[1:])
        self.indexed = len(codes)
        self._tail: list[np.ndarray] = []  # codes of the rows after ``indexed``, one array per append
        self.tail_rows = 0

    @property
    def rows(self) -> int:
        return self.indexed + self.tail_rows

    def _codes(self, keys: Sequence[Hashable], inverse: np.ndarray) -> np.ndarray:
        code = self._code
        local = np.fromiter((code.setdefault(k, len(code)) for k in keys), dtype=np.int32, count=len(keys))
        return local[np.asarray(inverse, dtype=np.int64)] if len(inverse) else np.zeros(0, dtype=np.int32)

    def append(self, keys: Sequence[Hashable], inverse: np.ndarray) -> None:
        """Add rows whose keys are ``keys[inverse[i]]`` (``keys`` distinct, e.g. from ``np.unique``)."""
        if len(inverse):
            self._tail.append(self._codes(keys, inverse))
            self.tail_rows += len(inverse)

    def merge(self) -> None:
        """Fold the appended rows into the sorted runs: one pass over memory, no sort of the indexed rows."""
        if not self.tail_rows:
            return
        tail = np.concatenate(self._tail)
        n_codes = len(self._code)
        by_code = np.argsort(tail, kind="stable")
        starts = np.full(n_codes + 1, self._starts[-1], dtype=np.int64)  # codes new in the tail: empty runs
        starts[: len(self._starts)] = self._starts
        # Every tail position follows every indexed one, so each goes at the end of its code's run.
        self._order = np.insert(self._order, starts[tail[by_code] + 1], (by_code + self.indexed).astype(np.int32))
        starts[1:] += np.cumsum(np.bincount(tail, minlength=n_codes))
        self._starts = starts
        self.indexed += self.tail_rows
        self._tail, self.tail_rows = [], 0

    def positions(self, keys: Sequence[Hashable], since_row: int = 0) -> np.ndarray:
        """Sorted positions ``>= since_row`` of the rows holding any of ``keys`` (unknown keys: none).

        A row holds one key, so the runs of distinct keys never share a position.
        """
        known = list(dict.fromkeys(c for c in (self._code.get(k) for k in keys) if c is not None))
        if not known:
            return _EMPTY
        runs = len(self._starts) - 1  # codes first seen in the tail have no run yet
        parts = []
        for c in known:
            if c < runs:
                run = self._order[self._starts[c] : self._starts[c + 1]]
                if since_row and len(run):
                    run = run[np.searchsorted(run, since_row) :]
                if len(run):
                    parts.append(run)
        if self.tail_rows and self.rows > since_row:
            tail = np.concatenate(self._tail) if len(self._tail) > 1 else self._tail[0]
            hits = np.flatnonzero(np.isin(tail, np.asarray(known, dtype=np.int32))) + self.indexed
            parts.append(hits[hits >= since_row].astype(np.int32))
        if not parts:
            return _EMPTY
        # Each run ascends: the stable sort (timsort) merges runs rather than sorting from scratch.
        return np.sort(np.concatenate(parts).astype(np.int64), kind="stable")


def take_rows(table: pa.Table, positions: np.ndarray) -> pa.Table:
    """``table.take(positions)`` for sorted positions, at a cost that follows the rows taken.

    ``Table.take`` on a table of several chunks concatenates each column first (pyarrow 2x),
    a copy of the whole window per call; taking from each record batch does not.
    """
    batches = table.to_batches()
    if len(batches) <= 1:
        return table.take(pa.array(positions, pa.int64()))
    offsets = np.cumsum([0, *(b.num_rows for b in batches)])
    cuts = np.searchsorted(positions, offsets)
    parts = [
        batch.take(pa.array(positions[cuts[k] : cuts[k + 1]] - offsets[k], pa.int64()))
        for k, batch in enumerate(batches)
        if cuts[k + 1] > cuts[k]
    ]
    return pa.Table.from_batches(parts, schema=table.schema) if parts else table.slice(0, 0)


def row_keys(table: pa.Table) -> tuple[tuple[list[str], np.ndarray], tuple[list[tuple[str, str]], np.ndarray]]:
    """Each row's user and (entity type, entity id) as distinct keys and one index into them per row."""
    users = table.column("user_id").combine_chunks().dictionary_encode()
    types = table.column("entity_type").combine_chunks().dictionary_encode()
    ids = table.column("entity_id").combine_chunks().dictionary_encode()
    n_ids = len(ids.dictionary)
    pairs = types.indices.to_numpy().astype(np.int64) * n_ids + ids.indices.to_numpy()
    distinct, inverse = np.unique(pairs, return_inverse=True)
    type_names, id_names = types.dictionary.to_pylist(), ids.dictionary.to_pylist()
    entities = [(type_names[p // n_ids], id_names[p % n_ids]) for p in distinct.tolist()]
    return (users.dictionary.to_pylist(), users.indices.to_numpy()), (entities, inverse)


def coalesce_chunks(table: pa.Table, max_chunks: int) -> pa.Table:
    """``table`` with at most ``max_chunks`` chunks, merging the adjacent pair with the fewest rows first.

    Combining every chunk copies the whole window (twice its memory for a moment, each time
    the chunk count passes the limit); merging the smallest adjacent pair copies two small
    chunks, so sizes stay balanced and no merge copies more than a few chunks' worth.
    """
    batches = table.to_batches()
    if len(batches) <= max_chunks:
        return table
    while len(batches) > max(max_chunks, 1):
        sizes = np.array([b.num_rows for b in batches])
        k = int(np.argmin(sizes[:-1] + sizes[1:]))
        batches[k : k + 2] = pa.Table.from_batches(batches[k : k + 2]).combine_chunks().to_batches()
    return pa.Table.from_batches(batches, schema=table.schema)
