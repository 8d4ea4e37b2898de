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
        return local[inverse] if len(inverse) else np.zeros(0, dtype=np.int32)

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


def compact_rows(table: pa.Table) -> pa.Table:
    """``table`` as the window keeps it: without the store's ``row_id``, strings dictionary-encoded.

    The same few thousand user ids, entity types and ids and field names repeat over millions of
    rows: as dictionary indices a row's keys and fields take ~17 bytes instead of ~60 (at 10 M
    events of the benchmark's tenant, ~0.4 GiB less). :func:`plain_rows` turns taken rows back
    into the store's types, so the feature code sees the same values either way.
    """
    fields = [field for field in table.schema if field.name != "row_id"]
    columns = [_encoded(table.column(field.name)) for field in fields]
    schema = pa.schema([field.with_type(column.type) for field, column in zip(fields, columns, strict=True)])
    return pa.Table.from_arrays(columns, schema=schema)


def _encoded(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_string(column.type):
        return column.dictionary_encode()
    if pa.types.is_list(column.type) and pa.types.is_string(column.type.value_type):
        # Offsets index the unsliced values, so a sliced chunk keeps its own lists.
        chunks = [
            pa.ListArray.from_arrays(
                chunk.offsets, chunk.values.dictionary_encode(), mask=chunk.is_null() if chunk.null_count else None
            )
            for chunk in column.chunks
        ]
        return pa.chunked_array(chunks, pa.list_(pa.dictionary(pa.int32(), column.type.value_type)))
    return column


def plain_rows(table: pa.Table) -> pa.Table:
    """Rows of :func:`compact_rows` with their dictionary columns decoded to the plain types."""
    fields = []
    for field in table.schema:
        type_ = field.type
        if pa.types.is_dictionary(type_):
            type_ = type_.value_type
        elif pa.types.is_list(type_) and pa.types.is_dictionary(type_.value_type):
            type_ = pa.list_(type_.value_type.value_type)
        fields.append(field.with_type(type_))
    return table.cast(pa.schema(fields))


def _distinct(column: pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
    """The distinct values of a string or dictionary column and each row's index into them."""
    encoded = column if pa.types.is_dictionary(column.type) else column.dictionary_encode()
    if not encoded.num_chunks:
        return [], np.zeros(0, dtype=np.int32)
    encoded = encoded.unify_dictionaries()  # every chunk indexes one dictionary
    rows = [chunk.indices.to_numpy(zero_copy_only=False) for chunk in encoded.chunks]
    return encoded.chunk(0).dictionary.to_pylist(), np.concatenate(rows)


def row_keys(table: pa.Table) -> tuple[tuple[list[str], np.ndarray], tuple[list[tuple[str, str]], np.ndarray]]:
    """Each row's user and (entity type, entity id) as distinct keys and one index into them per row.

    Distinct values come from Arrow's hashing in C++; Python sees each distinct key once, not
    each row (10 M rows: ~2 s, where a dict lookup per row and page took ~15 s).
    """
    users = _distinct(table.column("user_id"))
    type_names, types = _distinct(table.column("entity_type"))
    id_names, ids = _distinct(table.column("entity_id"))
    if len(type_names) == 1:  # one entity type: the ids are the entities
        return users, ([(type_names[0], i) for i in id_names], ids)
    pairs = types.astype(np.int64) * len(id_names) + ids
    distinct, inverse = np.unique(pairs, return_inverse=True)
    n_ids = len(id_names)
    entities = [(type_names[p // n_ids], id_names[p % n_ids]) for p in distinct.tolist()]
    return users, (entities, inverse)


def pack_tables(tables: list[pa.Table], max_chunks: int) -> pa.Table:
    """``tables`` (of one schema) end to end in at most ``max_chunks`` chunks, each row copied once.

    Consecutive tables whose first rows fall in the same ``1/max_chunks`` share of all the rows
    are combined. The list is emptied, so that each group's tables are freed once combined and
    a large first load is not held twice. Merging pages pairwise as they arrive instead copied
    each of 10 M rows ~4 times, unifying two chunks' dictionaries per merge (3.6 s).
    """
    share = max(-(-sum(t.num_rows for t in tables) // max(max_chunks, 1)), 1)
    groups: dict[int, list[pa.Table]] = {}
    start = 0
    for table in tables:
        groups.setdefault(start // share, []).append(table)
        start += table.num_rows
    tables.clear()
    chunks = []
    for k in sorted(groups):
        group = groups.pop(k)
        chunks.append(pa.concat_tables(group).combine_chunks() if len(group) > 1 else group[0])
    return pa.concat_tables(chunks)


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
