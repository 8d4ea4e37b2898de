from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from conflict_core.errors import ConfigurationError
from conflict_core.schema import EVENT_SCHEMA
from conflict_core.simulator import (
    DEFAULT_ENTITY_TYPES,
    RESOLUTION_TYPES,
    EntityType,
    SimulationConfig,
    profile_config,
    simulate,
    simulation_size_for_events,
)

START = dt.datetime(2025, 3, 3, tzinfo=dt.UTC)
SMALL = SimulationConfig(users=40, entities=400, days=21, seed=7, start=START)


@pytest.fixture(scope="module")
def small_table() -> pa.Table:
    return simulate(SMALL)


def _replay(table: pa.Table) -> Counter[str]:
    """Replay the server from the output alone and check every row against the conflict rule.

    Entities start at version 1 with every field at version 1. A clean row bumps the entity
    version and stamps its fields; a conflicted row leaves the server untouched.
    """
    version: dict[str, int] = {}
    field_version: dict[str, dict[str, int]] = {}
    seen: Counter[str] = Counter()
    rows: list[dict[str, Any]] = table.select(
        ["entity_id", "changed_fields", "conflict", "base_version", "server_version"]
    ).to_pylist()
    for row in rows:
        entity = row["entity_id"]
        current = version.get(entity, 1)
        fields = field_version.setdefault(entity, {})
        base = row["base_version"]
        assert 1 <= base <= current, row
        stale = base < current
        overlap = any(fields.get(name, 1) > base for name in row["changed_fields"])
        assert row["conflict"] == (stale and overlap), row
        if row["conflict"]:
            assert row["server_version"] == current, row
            seen["conflict"] += 1
        else:
            assert row["server_version"] == current + 1, row
            version[entity] = current + 1
            for name in row["changed_fields"]:
                fields[name] = current + 1
            seen["stale_merge" if stale else "fresh"] += 1
    return seen


def test_conflicts_follow_exactly_from_stale_base_and_field_overlap(small_table: pa.Table) -> None:
    seen = _replay(small_table)
    # All three outcomes occur, so the rule is exercised both ways.
    assert seen["conflict"] > 0
    assert seen["stale_merge"] > 0
    assert seen["fresh"] > seen["conflict"]


def test_schema_order_and_timestamps(small_table: pa.Table) -> None:
    assert small_table.schema.equals(EVENT_SCHEMA)
    assert small_table.num_rows > 1000
    synced = small_table["synced_at"]
    assert synced.type.tz == "UTC"
    assert pc.all(pc.greater_equal(synced[1:], synced[:-1])).as_py()
    low, high = pc.min(synced).as_py(), pc.max(synced).as_py()
    assert low >= START and high < START + dt.timedelta(days=SMALL.days)
    for column in EVENT_SCHEMA.names:
        if not EVENT_SCHEMA.field(column).nullable:
            assert small_table[column].null_count == 0, column


def test_resolution_only_on_conflicts_and_after_the_sync(small_table: pa.Table) -> None:
    conflict = small_table["conflict"]
    resolved_at = small_table["resolved_at"]
    resolution = small_table["resolution_type"]
    assert pc.all(pc.equal(pc.is_valid(resolved_at), conflict)).as_py()
    assert pc.all(pc.equal(pc.is_valid(resolution), conflict)).as_py()
    conflicts = small_table.filter(conflict)
    lag = pc.subtract(conflicts["resolved_at"], conflicts["synced_at"]).cast(pa.int64())
    assert pc.min(lag).as_py() > 0
    assert pc.max(lag).as_py() < 30 * 24 * 3600 * 1_000_000
    assert set(conflicts["resolution_type"].to_pylist()) <= set(RESOLUTION_TYPES)


def test_identifiers_and_changed_fields(small_table: pa.Table) -> None:
    ids = small_table["event_id"]
    assert pc.count_distinct(ids).as_py() == small_table.num_rows
    fields_by_type = {spec.name: set(spec.fields) for spec in DEFAULT_ENTITY_TYPES}
    rows = small_table.select(["user_id", "device_id", "entity_type", "entity_id", "changed_fields"])
    for row in rows.to_pylist():
        assert row["user_id"].startswith("u") and row["user_id"][1:].isdigit()
        user, _, device = row["device_id"].rpartition("-d")
        assert user == row["user_id"] and device in {"1", "2", "3"}
        assert row["entity_id"].startswith(row["entity_type"] + "-")
        changed = row["changed_fields"]
        assert changed and len(set(changed)) == len(changed)
        assert set(changed) <= fields_by_type[row["entity_type"]]


def test_same_seed_same_table_and_other_seed_differs(small_table: pa.Table) -> None:
    assert simulate(SMALL).equals(small_table)
    other = simulate(SimulationConfig(users=40, entities=400, days=21, seed=8, start=START))
    assert not other.equals(small_table)


@pytest.mark.parametrize(
    ("users", "entities", "days", "seed"),
    [(200, 2000, 90, 0), (200, 2000, 90, 1), (80, 800, 60, 2)],
)
def test_conflict_rate_is_realistic(users: int, entities: int, days: int, seed: int) -> None:
    table = simulate(SimulationConfig(users=users, entities=entities, days=days, seed=seed, start=START))
    rate = pc.mean(table["conflict"].cast(pa.float64())).as_py()
    assert 0.03 <= rate <= 0.10, rate
    _replay(table)


def test_hot_entities_and_busy_users_exist(small_table: pa.Table) -> None:
    entity_counts = sorted(Counter(small_table["entity_id"].to_pylist()).values(), reverse=True)
    top = entity_counts[: max(1, len(entity_counts) // 20)]
    assert sum(top) > 0.25 * small_table.num_rows  # top 5% of entities take > 25% of edits
    user_counts = sorted(Counter(small_table["user_id"].to_pylist()).values())
    assert user_counts[-1] > 5 * user_counts[len(user_counts) // 2]


def test_progress_is_reported_in_steps_and_at_the_end() -> None:
    reported: list[int] = []
    table = simulate(SimulationConfig(users=60, entities=600, days=60, seed=3, start=START), reported.append)
    assert reported[-1] == table.num_rows
    assert reported == sorted(reported)
    assert len(reported) < table.num_rows // 10_000 + 2


def test_default_start_is_midnight_utc_days_ago() -> None:
    config = SimulationConfig(days=30)
    assert config.start_at.tzinfo is not None and config.start_at.utcoffset() == dt.timedelta(0)
    assert config.start_at.time() == dt.time(0)
    today = dt.datetime.now(dt.UTC).date()
    assert today - config.start_at.date() in {dt.timedelta(days=30), dt.timedelta(days=31)}


def test_size_for_events_scales_users_and_entities() -> None:
    config = simulation_size_for_events(1_000_000)
    assert config.days == 90 and config.entities == 10 * config.users
    assert 800 < config.users < 1300
    small = simulation_size_for_events(20_000, days=30)
    table = simulate(small)
    assert 10_000 < table.num_rows < 40_000


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"users": 0}, "users"),
        ({"entities": -5}, "entities"),
        ({"days": 2.5}, "days"),
        ({"seed": -1}, "seed"),
        ({"start": dt.datetime(2025, 1, 1)}, "start"),
        ({"edits_per_user_day": 0.0}, "edits_per_user_day"),
        ({"off_hours_share": 1.5}, "off_hours_share"),
        ({"device_count_weights": (0.0, 0.0, 0.0)}, "device_count_weights"),
        ({"offline_gap_median_hours": (1.0, 2.0)}, "offline_gap_median_hours"),
        ({"entity_types": ()}, "entity_types"),
        ({"team_size_pareto_shape": 0.0}, "team_size_pareto_shape"),
        ({"unknown_knob": 1}, "unknown_knob"),
    ],
)
def test_bad_config_names_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field) as raised:
        SimulationConfig(**changes)
    assert "expected" in str(raised.value) and "got" in str(raised.value)


def test_bad_entity_type_names_the_field() -> None:
    with pytest.raises(ConfigurationError, match=r"EntityType\('task'\).*distinct") as raised:
        EntityType("task", ("a", "a"), (1.0, 1.0), 1.0)
    assert "expected" in str(raised.value) and "got" in str(raised.value)


def test_size_for_events_rejects_non_positive() -> None:
    with pytest.raises(ConfigurationError, match="n_events"):
        simulation_size_for_events(0)


def test_syncing_after_a_long_gap_conflicts_far_more_often(small_table: pa.Table) -> None:
    """The gap is to the user's previous distinct sync: rows of one sync share ``synced_at``."""
    frame = small_table.select(["user_id", "synced_at", "conflict"]).to_pandas()
    frame["second"] = frame["synced_at"].astype("int64") // 1_000_000
    syncs = frame[["user_id", "second"]].drop_duplicates().sort_values(["user_id", "second"])
    syncs["gap_hours"] = syncs.groupby("user_id")["second"].diff() / 3600
    gap_hours = frame.merge(syncs, on=["user_id", "second"], how="left")["gap_hours"].to_numpy()
    after_long_gap = frame["conflict"][gap_hours > 8].mean()
    after_short_gap = frame["conflict"][gap_hours < 0.5].mean()
    assert after_long_gap > 5 * after_short_gap


def _tempo(table: pa.Table) -> dict[str, float]:
    frame = table.select(["device_id", "synced_at", "conflict", "user_id"]).to_pandas()
    syncs = frame.groupby(["device_id", "synced_at"]).size()
    gaps = frame.drop_duplicates(["device_id", "synced_at"]).sort_values(["device_id", "synced_at"])
    hours = gaps.groupby("device_id")["synced_at"].diff().dt.total_seconds() / 3600
    return {
        "gap_hours": float(hours.median()),
        "rows_per_sync": float(syncs.mean()),
        "conflict_rate": float(frame["conflict"].mean()),
    }


@pytest.fixture(scope="module")
def slow_table() -> pa.Table:
    return simulate(profile_config("slow", users=80, days=60, seed=5, start=START))


def test_slow_profile_syncs_days_apart_in_large_syncs(small_table: pa.Table, slow_table: pa.Table) -> None:
    fast, slow = _tempo(small_table), _tempo(slow_table)
    assert fast["gap_hours"] < 1.0
    assert slow["gap_hours"] > 24.0  # days apart
    assert slow["rows_per_sync"] > 4 * fast["rows_per_sync"]  # large multi-entity syncs
    assert 0.005 <= slow["conflict_rate"] <= 0.12, slow["conflict_rate"]
    _replay(slow_table)  # conflicts still follow from the protocol


def test_slow_profile_team_sizes_are_heavy_tailed() -> None:
    config = profile_config("slow", users=2000, days=1, seed=2, start=START)
    assert config.entities == 2000 * 1000
    import numpy as np

    from conflict_core.simulator import _build_population

    sizes = np.bincount(_build_population(config, np.random.default_rng(0)).user_team)
    equal = np.bincount(
        _build_population(profile_config("fast", users=2000, days=1, start=START), np.random.default_rng(0)).user_team
    )
    assert equal.max() - equal.min() <= 1
    assert sizes.max() > 8 * np.median(sizes[sizes > 0])


def test_fast_profile_is_todays_default() -> None:
    assert profile_config("fast", users=40, entities=400, days=21, seed=7, start=START) == SMALL


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="profile: expected one of"):
        profile_config("medium")
