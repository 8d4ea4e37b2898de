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

The window's table itself holds those codes in place of the strings (:func:`coded_rows`):
a user, an entity and each changed field name cost 4 bytes a row instead of their text, and
rows handed out get their strings back from :class:`Names` in one ``take`` per column
(:func:`decoded_rows`). At 10 M events of the benchmark's tenant the window's Arrow memory
is ~350 MiB instead of ~800 MiB.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_EMPTY = np.zeros(0, dtype=np.int64)


class KeyPositions:
    """Which rows hold each key, for a table that only grows (or is rebuilt whole).

    :meth:`append` records rows in table order; :meth:`merge` (the window calls it after each
    refresh) folds them into the sorted runs. Not thread-safe: the window calls it under its lock.
    """

    def __init__(self, keys: Sequence[Hashable] = (), inverse: np.ndarray = _EMPTY):
        """An index over rows whose keys are ``keys[inverse[i]]``, sorted at once."""
        self._code: dict[Hashable, int] = {}
        self.keys: list[Hashable] = []  # by code
        codes = self.encode(keys, inverse)
        self._order = np.argsort(codes, kind="stable").astype(np.int32)  # positions grouped by code
        self._starts = np.zeros(len(self._code) + 1, dtype=np.int64)  # run of c: order[starts[c]:starts[c + 1]]
        np.cumsum(np.bincount(codes, minlength=len(self._code)), out=self._starts[1:])
        self.indexed = len(codes)
        self._tail: list[np.ndarray] = []  # codes of the rows after ``indexed``, one array per append
        self.tail_rows = 0

    @property
    def rows(self) -> int:
        return self.indexed + self.tail_rows

    def encode(self, keys: Sequence[Hashable], inverse: np.ndarray) -> np.ndarray:
        """Each row's key code (int32), for rows whose keys are ``keys[inverse[i]]`` (``keys``
        distinct); keys not seen before get the next codes. Adds no rows: a key's code without
        rows answers no positions."""
        code = self._code
        new = [k for k in keys if k not in code]
        code.update(zip(new, range(len(code), len(code) + len(new)), strict=True))
        self.keys.extend(new)
        local = np.fromiter((code[k] for k in keys), dtype=np.int32, count=len(keys))
        return local[inverse] if len(inverse) else np.zeros(0, dtype=np.int32)

    def append(self, keys: Sequence[Hashable], inverse: np.ndarray) -> None:
        """Add rows whose keys are ``keys[inverse[i]]`` (``keys`` distinct, e.g. from ``np.unique``)."""
        self.append_codes(self.encode(keys, inverse))

    def append_codes(self, codes: np.ndarray) -> None:
        """Add rows by their codes from :meth:`encode`."""
        if len(codes):
            self._tail.append(codes)
            self.tail_rows += len(codes)

    def merge(self) -> None:
        """Fold the appended rows into the sorted runs: one pass over memory, no sort of the indexed rows."""
        if not self.tail_rows:
            return
        tail = np.concatenate(self._tail)
        n_codes = len(self._code)
        by_code = np.argsort(tail, kind="stable")
        if not self.indexed:  # a first load: the sorted tail is the whole order
            self._order = by_code.astype(np.int32)
            self._starts = np.zeros(n_codes + 1, dtype=np.int64)
            np.cumsum(np.bincount(tail, minlength=n_codes), out=self._starts[1:])
            self.indexed, self._tail, self.tail_rows = len(tail), [], 0
            return
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
    """A page of the store's rows as the window holds it until publication: without the store's
    ``row_id``, strings and field names dictionary-encoded per page (Arrow's hashing, no Python
    per row). At publication :func:`coded_rows` replaces the keys and field names by the
    window's own integer codes.
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


KEY_COLUMNS = ("user_id", "entity_type", "entity_id", "changed_fields")


@dataclass(frozen=True)
class Names:
    """What the window's integer codes stand for, by code: users, entities (type and id) and
    field names. Immutable, replaced whole when keys are added, so a reader's copy matches the
    table it took with it."""

    users: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    entity_types: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    entity_ids: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    fields: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))

    def extended(self, users: Sequence[Hashable], entities: Sequence[Hashable], fields: Sequence[str]) -> Names:
        """These names with ``users``, ``entities`` and ``fields`` (new ones, in code order) appended."""

        def grown(current: pa.Array, more: Sequence[Any]) -> pa.Array:
            return pa.concat_arrays([current, pa.array(more, pa.string())]) if len(more) else current

        pairs = cast(Sequence[tuple[str, str]], entities)
        return Names(
            grown(self.users, users),
            grown(self.entity_types, [t for t, _ in pairs]),
            grown(self.entity_ids, [i for _, i in pairs]),
            grown(self.fields, fields),
        )

    def taken(self, users: np.ndarray, entities: np.ndarray) -> Names:
        """Names of only the ``users`` and ``entities`` codes given, renumbered in their order."""
        return Names(
            self.users.take(pa.array(users)),
            self.entity_types.take(pa.array(entities)),
            self.entity_ids.take(pa.array(entities)),
            self.fields,
        )


def field_codes(column: pa.ChunkedArray, code: dict[str, int]) -> tuple[pa.ChunkedArray, list[str]]:
    """A ``list<dictionary<string>>`` column (of :func:`compact_rows`) as ``list<int32>`` codes of
    ``code``, to which unseen names are added; returns the column and the names added, in order."""
    added: list[str] = []
    chunks = []
    for chunk in column.chunks:
        values = chunk.values
        names = values.dictionary.to_pylist()
        for name in names:
            if name not in code:
                code[name] = len(code)
                added.append(name)
        mapping = np.fromiter((code[n] for n in names), dtype=np.int32, count=len(names))
        indices = values.indices
        if len(mapping):
            rows = mapping[pc.fill_null(indices, 0).to_numpy(zero_copy_only=False)]
            codes = pa.array(
                rows, mask=indices.is_null().to_numpy(zero_copy_only=False) if indices.null_count else None
            )
        else:  # no names: every element is null
            codes = pa.nulls(len(indices), pa.int32())
        mask = chunk.is_null() if chunk.null_count else None
        chunks.append(pa.ListArray.from_arrays(chunk.offsets, codes, mask=mask))
    return pa.chunked_array(chunks, pa.list_(pa.int32())), added


def coded_rows(page: pa.Table, users: np.ndarray, entities: np.ndarray, fields: pa.ChunkedArray) -> pa.Table:
    """A page of :func:`compact_rows` as the window stores it: ``user`` and ``entity`` codes and
    field-name codes in place of the strings, the other columns as they are."""
    rest = [f for f in page.schema if f.name not in KEY_COLUMNS]
    schema = pa.schema(
        [
            pa.field("user", pa.int32(), nullable=False),
            pa.field("entity", pa.int32(), nullable=False),
            page.schema.field("changed_fields").with_type(fields.type),
            *rest,
        ]
    )
    columns = [
        pa.array(users, pa.int32()),
        pa.array(entities, pa.int32()),
        fields,
        *(page.column(f.name) for f in rest),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def decoded_rows(table: pa.Table, names: Names) -> pa.Table:
    """Rows of the window's coded table with the store's columns and types back: one ``take``
    from the names per column, whatever the number of chunks the rows came from."""
    users = table.column("user").combine_chunks()
    entities = table.column("entity").combine_chunks()
    lists = table.column("changed_fields").combine_chunks()
    fields = pa.ListArray.from_arrays(
        lists.offsets, names.fields.take(lists.values), mask=lists.is_null() if lists.null_count else None
    )
    rest = [f for f in table.schema if f.name not in ("user", "entity", "changed_fields")]
    schema = pa.schema(
        [
            pa.field("user_id", pa.string(), nullable=False),
            pa.field("entity_type", pa.string(), nullable=False),
            pa.field("entity_id", pa.string(), nullable=False),
            table.schema.field("changed_fields").with_type(fields.type),
            *rest,
        ]
    )
    columns = [
        names.users.take(users),
        names.entity_types.take(entities),
        names.entity_ids.take(entities),
        fields,
        *(table.column(f.name).combine_chunks() for f in rest),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def history_view(table: pa.Table, names: Names) -> pa.Table:
    """The window's coded table with the store's columns as dictionary arrays over ``names``:
    no string is copied (for an index over the whole window)."""

    def over(codes: pa.ChunkedArray, dictionary: pa.Array) -> pa.ChunkedArray:
        type_ = pa.dictionary(pa.int32(), dictionary.type)
        return pa.chunked_array(
            [pa.DictionaryArray.from_arrays(chunk, dictionary, safe=False) for chunk in codes.chunks], type_
        )

    lists = table.column("changed_fields")
    field_type = pa.dictionary(pa.int32(), pa.string())
    fields = pa.chunked_array(
        [
            pa.ListArray.from_arrays(
                chunk.offsets,
                pa.DictionaryArray.from_arrays(chunk.values, names.fields, safe=False),
                mask=chunk.is_null() if chunk.null_count else None,
            )
            for chunk in lists.chunks
        ],
        pa.list_(field_type),
    )
    rest = [f.name for f in table.schema if f.name not in ("user", "entity", "changed_fields")]
    columns = {
        "user_id": over(table.column("user"), names.users),
        "entity_type": over(table.column("entity"), names.entity_types),
        "entity_id": over(table.column("entity"), names.entity_ids),
        "changed_fields": fields,
        **{name: table.column(name) for name in rest},
    }
    return pa.table(columns)


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
