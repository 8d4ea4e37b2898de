"""KeyPositions answers what a dict of position lists answers, through appends and merges."""

from __future__ import annotations

import numpy as np

from serve_app.window_index import KeyPositions


def _unique(keys: list[object]) -> tuple[list[object], np.ndarray]:
    distinct = list(dict.fromkeys(keys))
    where = {k: i for i, k in enumerate(distinct)}
    return distinct, np.array([where[k] for k in keys], dtype=np.int64)


def test_positions_match_a_dict_of_lists_through_appends_and_merges() -> None:
    rng = np.random.default_rng(3)
    universe = [f"user-{k}" for k in range(40)] + [("task", f"t{k}") for k in range(40)]
    first = [universe[k] for k in rng.integers(0, 60, 500)]  # some keys only arrive later
    index = KeyPositions(*_unique(first))
    oracle: dict[object, list[int]] = {}
    for position, key in enumerate(first):
        oracle.setdefault(key, []).append(position)
    for step in range(12):
        page = [universe[k] for k in rng.integers(0, len(universe), int(rng.integers(0, 90)))]
        index.append(*_unique(page))
        for key in page:
            oracle.setdefault(key, []).append(len(sum(oracle.values(), [])))
        if step % 3 == 2:
            index.merge()
        asked = [universe[k] for k in rng.integers(0, len(universe), 7)] + ["nobody"]
        since = int(rng.integers(0, index.rows))
        expected = sorted({p for key in asked for p in oracle.get(key, []) if p >= since})
        assert index.positions(asked, since_row=since).tolist() == expected
        assert index.positions(asked).tolist() == sorted({p for key in asked for p in oracle.get(key, [])})
    assert index.rows == sum(len(v) for v in oracle.values())


def test_an_empty_index_answers_nothing() -> None:
    index = KeyPositions()
    assert index.positions(["u"]).tolist() == []
    index.append(["u"], np.array([0, 0]))
    assert index.positions(["u"]).tolist() == [0, 1]
    index.merge()
    assert index.positions(["u"], since_row=1).tolist() == [1]


def test_take_rows_from_a_chunked_table_equals_table_take() -> None:
    import pyarrow as pa

    from serve_app.window_index import take_rows

    pages = [
        pa.table({"k": pa.array(range(start, start + 7)), "s": [f"v{i}" for i in range(7)]}) for start in (0, 7, 14)
    ]
    table = pa.concat_tables(pages)
    for positions in ([], [0], [3, 6, 7, 13, 20], list(range(21))):
        chosen = np.array(positions, dtype=np.int64)
        assert take_rows(table, chosen).equals(table.combine_chunks().take(pa.array(chosen, pa.int64())))


def test_coalescing_chunks_keeps_rows_and_order_within_the_limit() -> None:
    import pyarrow as pa

    from serve_app.window_index import coalesce_chunks

    sizes = [50, 50, 3, 1, 1, 40, 2, 2, 1]
    start, pages = 0, []
    for size in sizes:
        pages.append(pa.table({"k": pa.array(range(start, start + size), pa.int64())}))
        start += size
    table = pa.concat_tables(pages)
    coalesced = coalesce_chunks(table, 4)
    assert coalesced.column("k").num_chunks <= 4
    assert coalesced.column("k").to_pylist() == list(range(sum(sizes)))
    assert [len(c) for c in coalesced.column("k").chunks][:2] == [50, 50]  # the big chunks were not copied
    assert coalesce_chunks(table, 20) is table
