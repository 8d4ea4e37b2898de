"""The online feature lookup without Ray: its features against the whole store's, the user
index, targets older than the window, new events, staleness and each model's feature
parameters. The event window itself: test_event_window.py."""

from __future__ import annotations

import datetime as dt
import random
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest

from conflict_core import db
from conflict_core.events.store_reads import load_events
from conflict_core.events.store_writes import insert_event_frame
from conflict_core.features import ALL_FEATURES, FeatureParams, compute_features, feature_arrays
from conflict_core.store import make_engine, session_scope
from serve_app import event_window, feature_lookup
from serve_app.event_window import FeatureLookupUnavailable
from serve_app.feature_lookup import OnlineFeatureLookup
from tests.serve_app.sync_history import NOW, events, store_with


def _items(n: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "user_id": f"u{rng.randrange(7)}",
            "entity_type": rng.choice(["task", "form"]),
            "entity_id": f"e{rng.randrange(9)}",
            "changed_fields": rng.sample(["a", "b", "c", "x"], 2),
            "at": NOW - dt.timedelta(seconds=rng.uniform(0, 3 * 86400)),
        }
        for _ in range(n)
    ]


def _from_store(url: str, items: list[dict[str, Any]], params: FeatureParams = FeatureParams()) -> np.ndarray:
    """The reference: the whole store as history, pandas targets, the shared definitions."""
    targets = pd.DataFrame(
        {
            "user_id": [i["user_id"] for i in items],
            "entity_type": [i["entity_type"] for i in items],
            "entity_id": [i["entity_id"] for i in items],
            "changed_fields": pd.Series([list(i["changed_fields"]) for i in items], dtype=object),
            "synced_at": pd.to_datetime([i["at"] for i in items], utc=True),
        }
    )
    return compute_features(load_events(make_engine(url)), targets, params)[list(ALL_FEATURES)].to_numpy(np.float64)


def test_window_features_equal_the_whole_store_computation(sqlite_url: str) -> None:
    store_with(sqlite_url, events(600))
    lookup = OnlineFeatureLookup(sqlite_url, refresh_interval_s=0)
    items = _items(80)
    np.testing.assert_allclose(lookup.compute(items), _from_store(sqlite_url, items), rtol=0, atol=1e-12)
    parts = lookup.compute_many([items[:1], items[1:30], items[30:]])
    np.testing.assert_allclose(np.concatenate(parts), lookup.compute(items), rtol=0, atol=0)


def test_user_index_with_rows_added_after_it_equals_the_whole_store(sqlite_url: str) -> None:
    factory = store_with(sqlite_url, events(400))
    lookup = OnlineFeatureLookup(sqlite_url, refresh_interval_s=0, index_rebuild_rows=10_000)
    items = _items(60, seed=3)
    np.testing.assert_allclose(lookup.compute(items), _from_store(sqlite_url, items), rtol=0, atol=1e-12)
    assert lookup._user_index is not None
    index, _, _ = lookup._user_index
    assert index.rows == 400
    # New syncs and conflicts of known and new users, below the rebuild threshold: the index
    # stays, the rows after it are counted from the window.
    late = events(120, seed=5, prefix="late", span_days=4)
    late.loc[late.index[:10], "user_id"] = "u-new"
    with session_scope(factory) as session:
        insert_event_frame(session, late)
    items += [dict(i, user_id="u-new") for i in _items(5, seed=4)]
    np.testing.assert_allclose(lookup.compute(items), _from_store(sqlite_url, items), rtol=0, atol=1e-12)
    assert lookup._user_index[0] is index and lookup.window.rows == 520

    lookup.index_rebuild_rows = 50  # past the threshold: the next refresh rebuilds it
    np.testing.assert_allclose(lookup.compute(items), _from_store(sqlite_url, items), rtol=0, atol=1e-12)
    assert lookup._user_index[0].rows == 520


def test_user_index_is_not_used_across_a_compaction(sqlite_url: str) -> None:
    store_with(sqlite_url, events(400, span_days=20))
    lookup = OnlineFeatureLookup(sqlite_url, refresh_interval_s=0)
    items = _items(30, seed=6)
    lookup.compute(items)
    assert lookup._user_index is not None
    index, generation, params = lookup._user_index
    lookup.window.compact_min_rows = 0
    lookup.window.lookback = dt.timedelta(days=10)  # as if twenty days had passed
    lookup.window.refresh()
    assert lookup.window.generation == generation + 1
    # The index's row positions no longer hold: the window is read instead.
    assert lookup.window.added_since(["u1"], index.rows, generation) is None
    expected = feature_arrays(
        lookup.window.history(sorted({i["user_id"] for i in items}), ()), lookup.targets_table(items, NOW), side="user"
    )
    got = lookup._user_side(
        items, sorted({i["user_id"] for i in items}), lookup.targets_table(items, NOW), params, lookup.window
    )
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


def test_a_target_older_than_the_window_reads_the_store(sqlite_url: str) -> None:
    store_with(sqlite_url, events(300, span_days=70))
    lookup = OnlineFeatureLookup(sqlite_url, refresh_interval_s=0)
    items = [dict(i, at=NOW - dt.timedelta(days=40)) for i in _items(20)]
    np.testing.assert_allclose(lookup.compute(items), _from_store(sqlite_url, items), rtol=0, atol=1e-12)


def test_only_the_items_older_than_the_window_read_the_store(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store_with(sqlite_url, events(300, span_days=70))
    lookup = OnlineFeatureLookup(sqlite_url, refresh_interval_s=0)
    lookup.compute(_items(2))  # loads the window: it answers targets from now on
    now = dt.datetime.now(dt.UTC)
    items = [dict(i, at=now) for i in _items(30)]
    for position in (3, 17, 29):  # a few clients asking about the past, batched with the rest
        items[position] = dict(items[position], at=NOW - dt.timedelta(days=40 + position))
    from_store: list[int] = []
    real = feature_lookup.load_events

    def counting_load_events(*args: Any, **kwargs: Any) -> Any:
        history = real(*args, **kwargs)
        from_store.append(len(kwargs["user_ids"]))
        return history

    monkeypatch.setattr(feature_lookup, "load_events", counting_load_events)
    np.testing.assert_allclose(lookup.compute(items), _from_store(sqlite_url, items), rtol=0, atol=1e-12)
    assert len(from_store) == 1 and from_store[0] <= 3  # one store query, for the old items' users only


def test_items_within_the_window_margin_are_answered_from_memory(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device asking as of its edit's time, up to the margin ago, costs no store query; one
    asking further back does, and both get the store's own features."""
    store_with(sqlite_url, events(300, span_days=70))
    lookup = OnlineFeatureLookup(sqlite_url, refresh_interval_s=0, window_margin=dt.timedelta(days=2))
    now = dt.datetime.now(dt.UTC)
    from_store: list[int] = []
    real = feature_lookup.load_events

    def counting_load_events(*args: Any, **kwargs: Any) -> Any:
        from_store.append(len(kwargs["user_ids"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(feature_lookup, "load_events", counting_load_events)
    recent = [dict(i, at=now - dt.timedelta(hours=40)) for i in _items(20)]
    np.testing.assert_allclose(lookup.compute(recent), _from_store(sqlite_url, recent), rtol=0, atol=1e-12)
    assert from_store == []
    older = [dict(i, at=now - dt.timedelta(hours=50)) for i in _items(5, seed=2)]
    np.testing.assert_allclose(lookup.compute(older), _from_store(sqlite_url, older), rtol=0, atol=1e-12)
    assert len(from_store) == 1
    assert lookup.window.lookback == FeatureParams().lookback.to_pytimedelta() + dt.timedelta(days=2)
    with pytest.raises(ValueError, match="window_margin"):
        OnlineFeatureLookup(sqlite_url, refresh_interval_s=0, window_margin=dt.timedelta(hours=-1))


def test_new_events_are_seen_after_the_next_refresh(sqlite_url: str) -> None:
    factory = store_with(sqlite_url, events(50))
    lookup = OnlineFeatureLookup(sqlite_url, refresh_interval_s=0.05, max_staleness_s=2)
    try:
        item = {"user_id": "new-user", "entity_type": "task", "entity_id": "new-entity", "changed_fields": ["a"]}
        before = lookup.compute([item])[0]
        assert before[ALL_FEATURES.index("entity_edit_frequency")] == 0
        extra = events(5, seed=9, prefix="late", span_days=1).assign(entity_type="task", entity_id="new-entity")
        with session_scope(factory) as session:
            insert_event_frame(session, extra)
        time.sleep(0.3)
        after = lookup.compute([item])[0]
        assert after[ALL_FEATURES.index("entity_edit_frequency")] == pytest.approx(5 / 30)
        assert lookup.status()["rows"] == 55
    finally:
        lookup.close()


def test_a_stale_window_fails_the_lookup_until_the_store_answers(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_with(sqlite_url, events(50))
    lookup = OnlineFeatureLookup(sqlite_url, refresh_interval_s=0.05, max_staleness_s=0.3)
    try:
        assert lookup.compute(_items(3)).shape == (3, len(ALL_FEATURES))
        real_tail = event_window.tail_events

        def unreachable(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("store unreachable")

        monkeypatch.setattr(event_window, "tail_events", unreachable)
        time.sleep(0.6)
        with pytest.raises(FeatureLookupUnavailable, match="store unreachable"):
            lookup.compute(_items(3))
        monkeypatch.setattr(event_window, "tail_events", real_tail)
        time.sleep(0.3)
        assert lookup.compute(_items(3)).shape == (3, len(ALL_FEATURES))
    finally:
        lookup.close()


def test_synchronous_mode_fails_with_the_store(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store_with(sqlite_url, events(20))
    lookup = OnlineFeatureLookup(sqlite_url, refresh_interval_s=0)

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("store unreachable")

    monkeypatch.setattr(event_window, "tail_events", unreachable)
    with pytest.raises(ConnectionError):
        lookup.compute(_items(1))


def test_an_empty_store_gives_zero_history_features(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    db.upgrade(url)
    lookup = OnlineFeatureLookup(url, refresh_interval_s=0.5)
    try:
        item = {"user_id": "u1", "entity_type": "task", "entity_id": "t1", "changed_fields": ["title"]}
        matrix = lookup.compute([item, dict(item, user_id="u2")])
        assert matrix.shape == (2, len(ALL_FEATURES)) and np.isfinite(matrix).all()
        assert lookup.window.rows == 0
    finally:
        lookup.close()


SLOW_TEMPO = FeatureParams(
    concurrent_window_minutes=3 * 24 * 60, history_window_days=45.0, hours_since_cap=1440.0, prior_strength=2.0
)


def test_non_default_parameters_online_equal_offline(sqlite_url: str) -> None:
    store_with(sqlite_url, events(500, span_days=60))
    lookup = OnlineFeatureLookup(sqlite_url, params=SLOW_TEMPO, refresh_interval_s=0)
    items = _items(60, seed=8)
    online = lookup.compute(items)
    np.testing.assert_allclose(online, _from_store(sqlite_url, items, SLOW_TEMPO), rtol=0, atol=1e-12)
    assert not np.allclose(online, _from_store(sqlite_url, items))  # the parameters matter


def test_switching_to_a_models_longer_parameters_grows_the_window_and_stays_exact(sqlite_url: str) -> None:
    store_with(sqlite_url, events(500, span_days=60))
    lookup = OnlineFeatureLookup(sqlite_url, refresh_interval_s=0)
    items = _items(40, seed=9)
    np.testing.assert_allclose(lookup.compute(items), _from_store(sqlite_url, items), rtol=0, atol=1e-12)
    rows_before = lookup.window.rows

    lookup.use_params(SLOW_TEMPO)

    assert lookup.window.lookback == SLOW_TEMPO.lookback.to_pytimedelta() and lookup.window.rows > rows_before
    matrix, used = lookup.compute_with_params(items)
    assert used == SLOW_TEMPO
    np.testing.assert_allclose(matrix, _from_store(sqlite_url, items, SLOW_TEMPO), rtol=0, atol=1e-12)
    assert lookup._user_index is not None and lookup._user_index[2] == SLOW_TEMPO
    # Back to a shorter model: the window keeps covering the longest lookback served.
    lookup.use_params(FeatureParams())
    assert lookup.window.lookback == SLOW_TEMPO.lookback.to_pytimedelta()
    np.testing.assert_allclose(lookup.compute(items), _from_store(sqlite_url, items), rtol=0, atol=1e-12)
