"""Feature definitions on tiny hand-built histories, and against a row-by-row oracle."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from conflict_core.features import (
    ALL_FEATURES,
    FeatureComputationError,
    FeatureParams,
    UserHistoryIndex,
    compute_features,
    features_for_request,
    user_side_counts,
    user_side_features,
)

T0 = pd.Timestamp("2026-03-02 12:00:00", tz="UTC")
MIN = pd.Timedelta(minutes=1)
HOUR = pd.Timedelta(hours=1)
DAY = pd.Timedelta(days=1)


def events(*rows: tuple) -> pd.DataFrame:
    """rows: (user, entity, fields, synced_at, conflict, resolved_at or None)."""
    return pd.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "entity_type": ["task"] * len(rows),
            "entity_id": [r[1] for r in rows],
            "changed_fields": [list(r[2]) for r in rows],
            "synced_at": pd.to_datetime([r[3] for r in rows], utc=True),
            "conflict": [bool(r[4]) for r in rows],
            "resolved_at": pd.to_datetime([r[5] for r in rows], utc=True),
        }
    )


def at(history: pd.DataFrame, user: str, entity: str, fields: list[str], when: pd.Timestamp) -> dict[str, float]:
    return features_for_request(
        history, user_id=user, entity_type="task", entity_id=entity, changed_fields=fields, at=when
    )


def test_first_sync_has_neutral_features() -> None:
    f = at(events(), "u1", "x", ["status"], T0)
    assert f["concurrent_editors"] == 0
    assert f["hours_since_last_sync"] == 168.0
    assert f["user_conflict_rate"] == pytest.approx(0.05)  # the prior
    assert f["entity_edit_frequency"] == 0
    assert f["field_overlap_score"] == 0
    assert f["edits_since_own_last_sync"] == 0


def test_concurrent_editors_window_is_five_minutes_before_and_excludes_self() -> None:
    history = events(
        ("u2", "x", ["a"], T0 - 4 * MIN, False, None),
        ("u2", "x", ["a"], T0 - 3 * MIN, False, None),  # same user twice counts once
        ("u3", "x", ["a"], T0 - 5 * MIN, False, None),  # exactly 5 min before: outside
        ("u4", "x", ["a"], T0, False, None),  # at t itself: not known before t
        ("u5", "y", ["a"], T0 - MIN, False, None),  # other entity
        ("u1", "x", ["a"], T0 - MIN, False, None),  # the requester itself
        ("u6", "x", ["a"], T0 + MIN, False, None),  # the future
    )
    assert at(history, "u1", "x", ["a"], T0)["concurrent_editors"] == 1


def test_hours_since_last_sync_uses_any_entity_and_caps_at_a_week() -> None:
    history = events(("u1", "y", ["a"], T0 - 5 * HOUR, False, None), ("u1", "z", ["a"], T0 - 2 * HOUR, False, None))
    assert at(history, "u1", "x", ["a"], T0)["hours_since_last_sync"] == pytest.approx(2.0)
    old = events(("u1", "y", ["a"], T0 - 10 * DAY, False, None))
    assert at(old, "u1", "x", ["a"], T0)["hours_since_last_sync"] == 168.0


def test_conflict_counts_only_once_its_resolution_is_recorded() -> None:
    history = events(
        ("u1", "y", ["a"], T0 - 2 * DAY, True, T0 - 1 * HOUR),
        ("u1", "y", ["a"], T0 - 1 * DAY, True, T0 + 1 * HOUR),  # resolved after t: unknown at t
        ("u1", "y", ["a"], T0 - 3 * HOUR, False, None),
    )
    params = FeatureParams(prior_strength=0.0)
    f = features_for_request(
        history, user_id="u1", entity_type="task", entity_id="x", changed_fields=["a"], at=T0, params=params
    )
    assert f["user_conflict_rate"] == pytest.approx(1 / 3)
    later = features_for_request(
        history,
        user_id="u1",
        entity_type="task",
        entity_id="x",
        changed_fields=["a"],
        at=T0 + 2 * HOUR,
        params=params,
    )
    assert later["user_conflict_rate"] == pytest.approx(2 / 3)


def test_user_conflict_rate_window_is_thirty_days() -> None:
    params = FeatureParams(prior_strength=0.0)
    history = events(
        ("u1", "y", ["a"], T0 - 30 * DAY, True, T0 - 29 * DAY),  # exactly 30 days: inside
        ("u1", "y", ["a"], T0 - 30 * DAY - MIN, True, T0 - 29 * DAY),  # just outside
    )
    f = features_for_request(
        history, user_id="u1", entity_type="task", entity_id="x", changed_fields=["a"], at=T0, params=params
    )
    assert f["user_conflict_rate"] == pytest.approx(1.0)


def test_entity_edit_frequency_is_syncs_per_day_over_thirty_days() -> None:
    history = events(*[("u2", "x", ["a"], T0 - i * DAY - MIN, False, None) for i in range(31)])
    # syncs at t-1min, t-1d-1min, ..., t-29d-1min are inside; t-30d-1min is not
    assert at(history, "u1", "x", ["a"], T0)["entity_edit_frequency"] == pytest.approx(30 / 30)


def test_field_overlap_counts_other_users_changes_of_the_same_fields() -> None:
    history = events(
        ("u2", "x", ["status", "notes"], T0 - 2 * DAY, False, None),
        ("u1", "x", ["title"], T0 - 1 * DAY, False, None),  # own change: does not count
        ("u3", "y", ["title"], T0 - 1 * DAY, False, None),  # other entity
        ("u4", "x", ["due"], T0 - 31 * DAY, False, None),  # too old
    )
    f = at(history, "u1", "x", ["status", "title", "due", "owner"], T0)
    assert f["field_overlap_score"] == pytest.approx(1 / 4)
    # only u2's status change happened before u1's previous sync of x
    assert f["overlap_since_own_last_sync"] == 0
    assert f["edits_since_own_last_sync"] == 0


def test_other_user_change_hidden_behind_own_run_is_found() -> None:
    history = events(
        ("u2", "x", ["status"], T0 - 3 * HOUR, False, None),
        ("u1", "x", ["status"], T0 - 2 * HOUR, False, None),
        ("u1", "x", ["status"], T0 - 1 * HOUR, False, None),
    )
    f = at(history, "u1", "x", ["status"], T0)
    assert f["field_overlap_score"] == 1.0
    assert f["overlap_since_own_last_sync"] == 0.0


def test_edits_since_own_last_sync_counts_others_after_own_previous_sync() -> None:
    history = events(
        ("u2", "x", ["a"], T0 - 5 * HOUR, False, None),
        ("u1", "x", ["a"], T0 - 4 * HOUR, False, None),
        ("u2", "x", ["b"], T0 - 3 * HOUR, False, None),
        ("u3", "x", ["a"], T0 - 2 * HOUR, False, None),
    )
    f = at(history, "u1", "x", ["a", "c"], T0)
    assert f["edits_since_own_last_sync"] == 2
    assert f["overlap_since_own_last_sync"] == pytest.approx(0.5)


def test_missing_column_is_named() -> None:
    with pytest.raises(FeatureComputationError, match="changed_fields"):
        compute_features(events().drop(columns=["changed_fields"]), events())


# ---- a row-by-row oracle on random histories -----------------------------------------


def oracle(history: pd.DataFrame, target: pd.Series, p: FeatureParams) -> dict[str, float]:
    t = target.synced_at
    before = history[history.synced_at < t]
    w30 = t - pd.Timedelta(days=p.history_window_days)
    ent = before[(before.entity_type == target.entity_type) & (before.entity_id == target.entity_id)]
    mine = before[before.user_id == target.user_id]
    others_ent = ent[ent.user_id != target.user_id]
    recent = others_ent[others_ent.synced_at > t - pd.Timedelta(minutes=p.concurrent_window_minutes)]
    last = mine.synced_at.max() if len(mine) else None
    window = mine[mine.synced_at >= w30]
    known = window[window.conflict & window.resolved_at.notna() & (window.resolved_at < t)]
    own_x = ent[ent.user_id == target.user_id].synced_at
    since = max(w30, own_x.max() + pd.Timedelta(milliseconds=1)) if len(own_x) else w30
    fields = list(target.changed_fields)

    def overlap(lower: pd.Timestamp) -> float:
        changed = others_ent[others_ent.synced_at >= lower].changed_fields
        seen = {f for fs in changed for f in fs}
        return sum(f in seen for f in fields) / len(fields) if fields else 0.0

    return {
        "concurrent_editors": recent.user_id.nunique(),
        "hours_since_last_sync": 168.0 if last is None else min((t - last) / HOUR, 168.0),
        "user_conflict_rate": (len(known) + p.prior_strength * p.prior_conflict_rate)
        / (len(window) + p.prior_strength),
        "entity_edit_frequency": (ent.synced_at >= w30).sum() / 30.0,
        "field_overlap_score": overlap(w30),
        "edits_since_own_last_sync": (ent.synced_at >= since).sum(),
        "overlap_since_own_last_sync": overlap(since),
    }


def random_history(seed: int, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    times = T0 + pd.to_timedelta(np.sort(rng.integers(0, 40 * 24 * 3600, n)), unit="s")
    # cluster some syncs within minutes of each other
    times = times.where(rng.random(n) > 0.3, times - pd.to_timedelta(rng.integers(0, 300, n), unit="s"))
    conflict = rng.random(n) < 0.2
    resolved = [
        t + pd.Timedelta(hours=float(h)) if c else None
        for t, c, h in zip(times, conflict, rng.exponential(30, n), strict=True)
    ]
    names = np.array(["a", "b", "c", "d"])
    return pd.DataFrame(
        {
            "user_id": rng.choice(["u1", "u2", "u3", "u4"], n),
            "entity_type": rng.choice(["task", "form"], n),
            "entity_id": rng.choice(["1", "2", "3"], n),
            "changed_fields": [list(rng.choice(names, rng.integers(1, 4), replace=False)) for _ in range(n)],
            "synced_at": times,
            "conflict": conflict,
            "resolved_at": pd.to_datetime(resolved, utc=True),
        }
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_vectorized_features_equal_the_row_by_row_definition(seed: int) -> None:
    history = random_history(seed)
    params = FeatureParams()
    got = compute_features(history, history, params)
    sample = history.sample(60, random_state=seed)
    for idx, target in sample.iterrows():
        expected = oracle(history, target, params)
        for name in ALL_FEATURES:
            assert got.loc[idx, name] == pytest.approx(expected[name]), (name, idx)


def test_sides_partition_the_features_and_agree_with_all() -> None:
    history = random_history(7)
    both = compute_features(history, history)
    user = compute_features(history, history, side="user")
    entity = compute_features(history, history, side="entity")
    assert set(user.columns).isdisjoint(entity.columns)
    assert set(user.columns) | set(entity.columns) == set(ALL_FEATURES)
    pd.testing.assert_frame_equal(pd.concat([user, entity], axis=1)[list(ALL_FEATURES)], both)


def _as_arrow(frame: pd.DataFrame) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array(frame.user_id.tolist(), pa.string()),
            "entity_type": pa.array(frame.entity_type.tolist(), pa.string()),
            "entity_id": pa.array(frame.entity_id.tolist(), pa.string()),
            "changed_fields": pa.array([list(f) for f in frame.changed_fields], pa.list_(pa.string())),
            "synced_at": pa.Array.from_pandas(frame.synced_at),
            "conflict": pa.array(frame.conflict.tolist(), pa.bool_()),
            "resolved_at": pa.Array.from_pandas(frame.resolved_at),
        }
    )


@pytest.mark.parametrize("seed", [1, 4])
def test_arrow_inputs_give_exactly_the_pandas_features(seed: int) -> None:
    history = random_history(seed)
    targets = history.sample(80, random_state=seed).reset_index(drop=True)
    targets["synced_at"] = targets.synced_at + pd.to_timedelta(np.arange(80) * 7, unit="s")
    expected = compute_features(history, targets)
    # a slice of a larger table (non-zero offsets), as the online window's take() yields
    padded = pa.concat_tables([_as_arrow(history.iloc[:5]), _as_arrow(history)]).slice(5)
    got = compute_features(padded, _as_arrow(targets).drop_columns(["conflict", "resolved_at"]))
    pd.testing.assert_frame_equal(got, expected)
    mixed = compute_features(history, _as_arrow(targets).drop_columns(["conflict", "resolved_at"]))
    pd.testing.assert_frame_equal(mixed, expected)


def test_arrow_naive_timestamps_are_refused() -> None:
    history = _as_arrow(random_history(1))
    naive = history.set_column(4, "synced_at", history.column("synced_at").cast(pa.timestamp("ns")))
    with pytest.raises(FeatureComputationError, match="naive"):
        compute_features(naive, history)


@pytest.mark.parametrize("as_arrow", [False, True])
def test_user_index_plus_later_events_equals_the_user_side(as_arrow: bool) -> None:
    history = random_history(11, n=500)
    targets = history.sample(90, random_state=2).reset_index(drop=True)
    targets.loc[:4, "user_id"] = "never-seen"
    targets["synced_at"] = targets.synced_at + pd.to_timedelta(np.arange(90) * 11, unit="s")
    expected = compute_features(history, targets, side="user")
    # The index over the first 400 events, the rest counted separately and added.
    base, later = history.iloc[:400], history.iloc[400:]
    t_ms = targets.synced_at.to_numpy(dtype="datetime64[ms]").astype(np.int64)
    index = UserHistoryIndex(_as_arrow(base) if as_arrow else base, now_ms=int(t_ms.max()), horizon_ms=0)
    counts = index.counts(targets.user_id.tolist(), t_ms)
    assert counts is not None
    counts = counts.plus(user_side_counts(later, targets))
    got = user_side_features(counts, t_ms, FeatureParams())
    for name in expected.columns:
        np.testing.assert_array_equal(got[name], expected[name].to_numpy(), err_msg=name)


def test_user_index_refuses_targets_outside_its_span() -> None:
    history = random_history(12, n=50)
    newest = int(max(history.synced_at.max(), history.resolved_at.max()).value // 1_000_000)
    index = UserHistoryIndex(history, now_ms=newest, horizon_ms=3_600_000)
    assert index.counts(["u1"], np.array([newest + 3_600_000])) is not None
    assert index.counts(["u1"], np.array([newest + 3_600_001])) is None
    assert index.counts(["u1"], np.array([index.earliest_ms - 1])) is None
