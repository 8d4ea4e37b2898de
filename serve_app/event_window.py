"""The store's recent events in memory, indexed by user and entity: what online features read.

:class:`EventWindow` is loaded once and then refreshed by tailing new ``sync_log`` rows in
ingest order (:func:`conflict_core.events.store_reads.tail_events`), so a prediction never waits for the
store. Rows older than the lookback are dropped in compactions, once enough of them piled up.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy.engine import Engine

from conflict_core.errors import ConflictPredictorError
from conflict_core.events.store_reads import tail_events
from conflict_core.features import HISTORY_COLUMNS
from conflict_core.store import utcnow
from serve_app.window_index import (
    KeyPositions,
    Names,
    coalesce_chunks,
    coded_rows,
    compact_rows,
    decoded_rows,
    field_codes,
    history_view,
    pack_tables,
    row_keys,
    take_rows,
)

log = logging.getLogger(__name__)

_MAX_GAPS = 1_000  # ids re-asked for at most; more gaps than that are mostly old imports


class FeatureLookupUnavailable(ConflictPredictorError):
    """The in-memory history is not loaded, or older than the allowed staleness."""


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
        max_chunks: int = 16,  # each lookup takes from every chunk holding its rows
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
        self._by_user = KeyPositions()
        self._by_entity = KeyPositions()
        self._names = Names()  # what the table's user, entity and field codes stand for
        self._field_code: dict[str, int] = {}
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
        """Load the rows stored since the last refresh; returns how many. Raises if the store fails.

        Pages are gathered in the window's own form (:func:`compact_rows`) and published with
        their index entries once, at the end: a large first load keys and packs its rows in
        one pass over them instead of one per page, and readers never see rows the index
        lacks. Rows read before a store failure are published too (their ids count as loaded).
        """
        now = now or utcnow()
        cutoff = now - self.lookback
        pending: list[pa.Table] = []
        added = 0
        try:
            while True:
                expired = [i for i, first in self._gaps.items() if time.monotonic() - first > self.gap_recheck_s]
                for i in expired:
                    del self._gaps[i]
                page = tail_events(
                    self.engine,
                    after_id=self._last_id,
                    since=cutoff,
                    recheck_ids=list(self._gaps),
                    limit=self.page_rows,
                    columns=HISTORY_COLUMNS,
                )
                fresh = compact_rows(self._fresh(page))
                if fresh.num_rows or (self._table is None and not pending):  # an empty store's table
                    pending.append(fresh)
                added += fresh.num_rows
                if page.num_rows < self.page_rows:
                    break
        finally:
            if pending:
                self._publish(pending)
            if added > self.page_rows:
                # A large load's transient Arrow buffers, held by the allocator for reuse: back to
                # the system, so that the replica's resident memory is what the window holds
                # (10 M events: peak 1.9 -> 1.5 GiB during the first load).
                pa.default_memory_pool().release_unused()
        if self.covered_since is None:
            self.covered_since = cutoff
        self.loaded_at = time.monotonic()
        self.last_error = None
        self._compact_if_worth_it(cutoff)
        return added

    def _fresh(self, page: pa.Table) -> pa.Table:
        """The rows of ``page`` not loaded yet; records their ids and the gaps between them."""
        ids = page.column("row_id").to_numpy()
        # New rows: past the newest id loaded, or a gap re-asked for (ids at or below it were
        # loaded already, or skipped and recorded in _gaps until they expire).
        fresh = ids > self._last_id
        if self._gaps:
            fresh |= np.isin(ids, np.fromiter(self._gaps, dtype=np.int64, count=len(self._gaps)))
        if not fresh.all():
            page = page.filter(pa.array(fresh))
            ids = ids[fresh]
        top = max(int(ids.max()) if len(ids) else self._last_id, self._last_id)
        for i in ids[ids <= self._last_id].tolist():
            self._gaps.pop(i, None)
        if self.loaded_at is not None and top - self._last_id <= _MAX_GAPS:
            # Ids skipped after the first load: rolled back, or not committed yet (PostgreSQL).
            skipped = set(range(self._last_id + 1, top + 1)).difference(ids.tolist())
            self._gaps.update(dict.fromkeys(skipped, time.monotonic()))
            while len(self._gaps) > _MAX_GAPS:
                del self._gaps[next(iter(self._gaps))]
        self._last_id = max(self._last_id, top)
        return page

    def _publish(self, pages: list[pa.Table]) -> None:
        """Add ``pages`` (rows of :func:`compact_rows`; the list is emptied) to the window.

        Their keys are coded once over all of them (Arrow's hashing, then Python once per
        distinct key), each page's strings are replaced by the codes, and the pages are packed
        into the window's chunks.
        """
        users, entities = row_keys(pa.concat_tables(pages))
        user_codes = self._by_user.encode(*users)
        entity_codes = self._by_entity.encode(*entities)
        names = self._names
        new_users = self._by_user.keys[len(names.users) :]
        new_entities = self._by_entity.keys[len(names.entity_ids) :]
        new_fields: list[str] = []
        coded, start = [], 0
        while pages:  # each page's strings freed as it is coded
            page = pages.pop(0)
            end = start + page.num_rows
            fields, added = field_codes(page.column("changed_fields"), self._field_code)
            new_fields += added
            coded.append(coded_rows(page, user_codes[start:end], entity_codes[start:end], fields))
            start = end
        new = pack_tables(coded, self.max_chunks)
        table = new if self._table is None else pa.concat_tables([self._table, new])
        if table.column(0).num_chunks > self.max_chunks:
            table = coalesce_chunks(table, self.max_chunks)
        names = names.extended(new_users, new_entities, new_fields)
        with self._lock:
            self._by_user.append_codes(user_codes)
            self._by_entity.append_codes(entity_codes)
            self._by_user.merge()
            self._by_entity.merge()
            self._table, self._names = table, names

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
        # Keys renumbered to those still in the window, so the names do not keep every key ever seen.
        used_users, users = np.unique(kept.column("user").to_numpy(), return_inverse=True)
        used_entities, entities = np.unique(kept.column("entity").to_numpy(), return_inverse=True)
        by_user = KeyPositions([self._by_user.keys[c] for c in used_users.tolist()], users)
        by_entity = KeyPositions([self._by_entity.keys[c] for c in used_entities.tolist()], entities)
        names = self._names.taken(used_users, used_entities)
        kept = kept.set_column(0, kept.schema.field(0), pa.array(users.astype(np.int32)))
        kept = kept.set_column(1, kept.schema.field(1), pa.array(entities.astype(np.int32)))
        with self._lock:
            self._table, self._names, self._by_user, self._by_entity = kept, names, by_user, by_entity
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
            names = self._names
            by_user = self._by_user.positions(users, since_row)
            by_entity = self._by_entity.positions(entities, since_row)
        # Sorted and distinct: each row once, in ingest order; the cost follows the rows taken,
        # not the window's size.
        positions = by_entity if not len(by_user) else np.union1d(by_user, by_entity) if len(by_entity) else by_user
        return decoded_rows(take_rows(table, positions), names)

    def snapshot(self) -> tuple[pa.Table | None, int]:
        """The window's rows as of now (an immutable table, its string columns dictionary arrays
        over the window's names) and their generation."""
        with self._lock:
            table, names, generation = self._table, self._names, self.generation
        return (None if table is None else history_view(table, names)), generation
