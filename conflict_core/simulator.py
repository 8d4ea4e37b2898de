"""A sync-history simulator whose conflicts follow from the sync protocol, not from a coin.

The world
---------
* Users belong to teams; each team owns a set of entities whose popularity is Zipf-like,
  so a few hot entities take a large share of the team's edits. A small share of edits
  reaches into another team's entities.
* Every user has 1-3 devices, a timezone and a shift. Work comes in sessions, mostly
  inside the shift and on weekdays; per-user activity is log-normal (a few users are
  much busier than the rest).
* Devices drop offline for minutes, hours and occasionally days; how often depends on
  the user (some work in the field). Edits made offline queue on the device.

The protocol
------------
* A *sync* pushes every queued edit, coalesced into one change per entity (the union of
  the changed fields), then fetches. The fetched server state is the device's *base*
  for every edit it makes until its next sync. An online device syncs a few seconds
  after each edit and when the app is opened; an offline one syncs when it reconnects.
* The server keeps, per entity, a version and for each field the version that last
  changed it. Entities start at version 1 with every field at version 1.
* A pushed change conflicts exactly when some changed field was changed on the server
  after the device's base version (which implies the base is stale). A stale change
  touching only other fields merges cleanly.
* A clean change bumps the entity version and stamps its fields with the new version;
  ``server_version`` is that new version. A conflicted change is parked for resolution
  and leaves the server untouched; its ``server_version`` is the version it met. Its
  ``resolution_type`` and ``resolved_at`` say how and when it was settled later.

All rows of one sync carry the same device and ``synced_at``; a gap "since the previous
sync" should therefore be measured to the previous distinct ``synced_at``.

Hence replaying the output in ``synced_at`` order with ``base_version``,
``server_version`` and ``changed_fields`` reproduces every ``conflict`` flag.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from conflict_core.errors import ConfigurationError
from conflict_core.schema import EVENT_SCHEMA, TIMESTAMP

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

US_PER_SECOND = 1_000_000
US_PER_HOUR = 3_600 * US_PER_SECOND
US_PER_DAY = 24 * US_PER_HOUR
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_PROGRESS_EVERY = 50_000
# Coarse UTC offsets (hours) of the regions teams work from.
_REGION_OFFSETS = np.array([-8.0, -5.0, -3.0, 0.0, 1.0, 2.0, 5.5, 8.0, 9.0])


def _positive_sum(weights: tuple[float, ...]) -> tuple[float, ...]:
    if not sum(weights) > 0:
        raise ValueError("weights must have a positive sum")
    return weights


Weight = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Weights = Annotated[tuple[Weight, ...], Field(min_length=1), AfterValidator(_positive_sum)]
Weights3 = Annotated[tuple[Weight, Weight, Weight], AfterValidator(_positive_sum)]
_FROZEN = ConfigDict(frozen=True, extra="forbid", strict=True, arbitrary_types_allowed=True)


class EntityType(BaseModel):
    """An entity type: its name, its editable fields and how often each field is edited."""

    model_config = _FROZEN

    name: str = Field(min_length=1)
    fields: tuple[str, ...] = Field(min_length=1, max_length=16)
    field_weights: Weights
    share: Annotated[float, Field(ge=0, allow_inf_nan=False)]

    def __init__(self, name: str, fields: tuple[str, ...], field_weights: tuple[float, ...], share: float):
        try:
            super().__init__(name=name, fields=fields, field_weights=field_weights, share=share)
        except ValidationError as exc:
            raise _configuration_error(exc, f"EntityType({name!r})") from None

    @model_validator(mode="after")
    def _consistent(self) -> EntityType:
        if len(set(self.fields)) != len(self.fields):
            raise ValueError(f"fields of {self.name!r} must be distinct, got {self.fields}")
        if len(self.field_weights) != len(self.fields):
            raise ValueError(f"{len(self.fields)} field_weights are needed for {self.name!r}")
        return self


DEFAULT_ENTITY_TYPES: tuple[EntityType, ...] = (
    EntityType(
        "task",
        ("title", "description", "status", "assignee", "due_date", "priority", "tags", "checklist"),
        (0.10, 0.12, 0.28, 0.12, 0.10, 0.10, 0.08, 0.10),
        0.40,
    ),
    EntityType(
        "ticket",
        (
            "subject",
            "description",
            "status",
            "priority",
            "assignee",
            "category",
            "comments",
            "sla_due",
        ),
        (0.08, 0.10, 0.26, 0.12, 0.12, 0.07, 0.18, 0.07),
        0.30,
    ),
    EntityType(
        "form",
        ("title", "answers", "status", "signature", "attachments", "location", "reviewer"),
        (0.06, 0.40, 0.18, 0.08, 0.12, 0.08, 0.08),
        0.20,
    ),
    EntityType(
        "voice_note",
        ("title", "transcript", "audio_ref", "duration", "tags", "linked_entity"),
        (0.20, 0.35, 0.10, 0.05, 0.15, 0.15),
        0.10,
    ),
)

RESOLUTION_TYPES: tuple[str, ...] = ("server_wins", "client_wins", "manual_merge")
MAX_FIELDS_PER_TYPE = 16
_MAX_DAYS = 3_650
# Events per user per simulated day at the default knobs, measured; see simulation_size_for_events.
EVENTS_PER_USER_DAY = 10.7


def default_start(days: int, today: dt.date | None = None) -> dt.datetime:
    """Midnight UTC ``days`` days before ``today`` (the current UTC date by default)."""
    today = today or dt.datetime.now(dt.UTC).date()
    midnight = dt.datetime(today.year, today.month, today.day, tzinfo=dt.UTC)
    return midnight - dt.timedelta(days=days)


def _distinct_types(types: tuple[EntityType, ...]) -> tuple[EntityType, ...]:
    names = [t.name for t in types]
    if len(set(names)) != len(names):
        raise ValueError(f"entity type names must be distinct, got {names}")
    if not sum(t.share for t in types) > 0:
        raise ValueError("entity type shares must have a positive sum")
    return types


Share = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
GapHours = Annotated[float, Field(gt=0, le=720)]  # up to 30 days


class SimulationConfig(BaseModel):
    """What to simulate. Everything but the first five fields is a behavioural knob.

    ``start`` defaults to midnight UTC ``days`` days before today, fixed when the config
    is built; pass it explicitly for output that does not depend on the calendar. Every
    field is validated by its declared type and bounds; a bad value raises
    :class:`ConfigurationError` naming the field, what was expected and what was given.
    """

    model_config = _FROZEN

    users: int = Field(default=200, ge=1, le=1_000_000)
    entities: int = Field(default=2000, ge=1, le=100_000_000)
    days: int = Field(default=90, ge=1, le=_MAX_DAYS)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    start: dt.datetime | None = None

    # Mean users per team; a team's members share its entities and mostly its timezone.
    team_size: int = Field(default=8, ge=1, le=10_000)
    # None: equal teams. A Pareto shape: team sizes are heavy-tailed (a few very large teams),
    # the smaller the shape the heavier the tail.
    team_size_pareto_shape: Annotated[float, Field(gt=0.1, le=10)] | None = None
    device_count_weights: Weights3 = (0.45, 0.40, 0.15)
    primary_device_share: Share = 0.75
    # Mean edits per user on a working day; per-user rates are log-normal with this sigma.
    edits_per_user_day: Annotated[float, Field(gt=0, le=10_000, allow_inf_nan=False)] = 16.0
    activity_sigma: Annotated[float, Field(ge=0, le=3)] = 1.0
    weekend_activity: Share = 0.15
    shift_hours: Annotated[float, Field(ge=1, le=16)] = 8.5
    off_hours_share: Share = 0.10
    edits_per_session: Annotated[float, Field(ge=1, le=1_000)] = 4.0
    edit_spacing_seconds: Annotated[float, Field(gt=0, le=86_400)] = 90.0
    # Share of edits in a session that return to the entity of the previous edit.
    repeat_entity_share: Share = 0.35
    # Weights of changing 1, 2, 3, ... fields in one edit.
    fields_per_edit_weights: Weights = (0.65, 0.25, 0.10)
    # Popularity of the k-th entity of a team is proportional to k ** -exponent.
    entity_zipf_exponent: Annotated[float, Field(ge=0, le=5)] = 1.0
    cross_team_share: Share = 0.05
    entity_types: Annotated[tuple[EntityType, ...], Field(min_length=1), AfterValidator(_distinct_types)] = (
        DEFAULT_ENTITY_TYPES
    )

    # Mean offline episodes per device-day, scaled per user by a log-normal factor; each
    # episode is short, medium or long with these shares and median lengths.
    offline_episodes_per_day: Annotated[float, Field(ge=0, le=1_000)] = 2.5
    offline_sigma: Annotated[float, Field(ge=0, le=3)] = 1.0
    offline_gap_shares: Weights3 = (0.70, 0.25, 0.05)
    offline_gap_median_hours: tuple[
        Annotated[float, Field(gt=0, le=720)],
        Annotated[float, Field(gt=0, le=720)],
        Annotated[float, Field(gt=0, le=720)],
    ] = (0.25, 2.5, 30.0)
    # Mean delay from an online edit to its push, and from opening the app to the first edit.
    push_delay_seconds: Annotated[float, Field(gt=0, le=3_600)] = 4.0
    open_fetch_seconds: Annotated[float, Field(gt=0, le=3_600)] = 30.0

    # Weights of RESOLUTION_TYPES; manual merges take hours, the others minutes.
    resolution_weights: Weights3 = (0.45, 0.35, 0.20)
    auto_resolution_median_minutes: Annotated[float, Field(gt=0, le=24 * 60)] = 3.0
    manual_resolution_median_hours: Annotated[float, Field(gt=0, le=24 * 7)] = 3.0
    max_resolution_lag_hours: Annotated[float, Field(ge=1, le=24 * 29)] = 48.0

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _configuration_error(exc, "SimulationConfig") from None

    @field_validator("start")
    @classmethod
    def _aware_utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("a timezone-aware datetime is required")
        return value.astimezone(dt.UTC)

    @model_validator(mode="after")
    def _default_start(self) -> SimulationConfig:
        if self.start is None:
            object.__setattr__(self, "start", default_start(self.days))
        return self

    @property
    def start_at(self) -> dt.datetime:
        """``start`` as a UTC datetime (always set once the config is built)."""
        assert self.start is not None
        return self.start

    @property
    def end_at(self) -> dt.datetime:
        return self.start_at + dt.timedelta(days=self.days)


def _configuration_error(exc: ValidationError, owner: str) -> ConfigurationError:
    """The first problem pydantic found, as ``Owner.field: expected ..., got ...``."""
    first = exc.errors()[0]
    name = ".".join(str(part) for part in first["loc"])
    expected = first["msg"].removeprefix("Value error, ")
    expected = expected[0].lower() + expected[1:]
    where = f"{owner}.{name}" if name else owner
    return ConfigurationError(f"{where}: expected {expected}, got {first.get('input')!r}")


@dataclass(frozen=True)
class TempoProfile:
    """A kind of team's sync tempo: knob values and how many entities each user brings."""

    description: str
    entities_per_user: int
    knobs: dict[str, Any]


TEMPO_PROFILES: dict[str, TempoProfile] = {
    "fast": TempoProfile(
        "field-service crews: devices sync every few minutes, small single-entity syncs, equal teams",
        entities_per_user=10,
        knobs={},
    ),
    "slow": TempoProfile(
        "engineering-style teams: devices sync days apart (mostly offline, syncing when they reconnect), "
        "large multi-entity syncs, heavy-tailed team sizes, many more entities per person",
        entities_per_user=1000,
        knobs={
            "team_size": 10,
            "team_size_pareto_shape": 1.2,
            "edits_per_user_day": 5.0,
            "edits_per_session": 8.0,
            "edit_spacing_seconds": 600.0,
            "repeat_entity_share": 0.1,
            "entity_zipf_exponent": 0.3,
            "offline_episodes_per_day": 48.0,
            "offline_gap_shares": (0.05, 0.35, 0.6),
            "offline_gap_median_hours": (8.0, 36.0, 96.0),
            "manual_resolution_median_hours": 12.0,
            "max_resolution_lag_hours": 120.0,
        },
    ),
}


def profile_config(
    profile: str,
    *,
    users: int = 200,
    entities: int | None = None,
    days: int = 90,
    seed: int = 0,
    start: dt.datetime | None = None,
    **knobs: Any,
) -> SimulationConfig:
    """A config of the named tempo profile; ``entities`` defaults to the profile's per-user share."""
    if profile not in TEMPO_PROFILES:
        raise ConfigurationError(f"profile: expected one of {sorted(TEMPO_PROFILES)}, got {profile!r}")
    chosen = TEMPO_PROFILES[profile]
    if entities is None:
        entities = users * chosen.entities_per_user if isinstance(users, int) else 1
    return SimulationConfig(
        users=users, entities=entities, days=days, seed=seed, start=start, **{**chosen.knobs, **knobs}
    )


def simulation_size_for_events(n_events: int, *, days: int = 90, seed: int = 0) -> SimulationConfig:
    """A config (default knobs) expected to produce about ``n_events`` events.

    Events grow linearly with users x days; entities keep the default 10 per user so team
    sizes and entity hotness, and with them the conflict rate, stay as at the defaults.
    For example 1,000,000 events over 90 days takes about 1,040 users and 10,400 entities.
    """
    if isinstance(n_events, bool) or not isinstance(n_events, int) or n_events < 1:
        raise ConfigurationError(f"n_events: expected a positive integer, got {n_events!r}")
    users = max(1, round(n_events / (EVENTS_PER_USER_DAY * days)))
    return SimulationConfig(users=users, entities=10 * users, days=days, seed=seed)


# --------------------------------------------------------------------------------------
# Population: teams, users, devices, entities.


@dataclass(frozen=True)
class _Population:
    user_team: IntArray
    user_rate: FloatArray  # mean edits per working day
    user_tz_hours: FloatArray
    user_shift_start: FloatArray  # local hour
    user_offline_factor: FloatArray
    device_first: IntArray  # index of the user's first device
    device_count: IntArray
    device_user: IntArray
    device_slot: IntArray  # 1-based device number within the user
    entity_type: IntArray
    entity_number: IntArray  # 1-based number within its type
    team_cdf: FloatArray  # team id + cumulative popularity within the team, ascending
    team_entities: IntArray  # entity ids in team_cdf order
    n_teams: int


def _normalised(weights: Sequence[float]) -> FloatArray:
    array = np.asarray(weights, dtype=np.float64)
    normalised: FloatArray = array / float(array.sum())
    return normalised


def _mean_one_lognormal(rng: np.random.Generator, sigma: float, size: int) -> FloatArray:
    return rng.lognormal(-0.5 * sigma * sigma, sigma, size)


def _build_population(config: SimulationConfig, rng: np.random.Generator) -> _Population:
    n_users, n_entities = config.users, config.entities
    n_teams = max(1, min(round(n_users / config.team_size), n_entities))
    if config.team_size_pareto_shape is None:
        user_team = rng.permutation(n_users).astype(np.int64) % n_teams
    else:  # heavy-tailed team sizes: a few large teams, many small ones
        weights = rng.pareto(config.team_size_pareto_shape, n_teams) + 1.0
        user_team = rng.choice(n_teams, size=n_users, p=weights / weights.sum()).astype(np.int64)
    team_region = rng.integers(0, len(_REGION_OFFSETS), n_teams)
    own_region = rng.random(n_users) < 0.85
    user_region = np.where(own_region, team_region[user_team], rng.integers(0, len(_REGION_OFFSETS), n_users))
    user_rate = config.edits_per_user_day * _mean_one_lognormal(rng, config.activity_sigma, n_users)

    device_count = rng.choice(3, size=n_users, p=_normalised(config.device_count_weights)).astype(np.int64) + 1
    device_first = np.concatenate(([0], np.cumsum(device_count)[:-1])).astype(np.int64)
    device_user = np.repeat(np.arange(n_users, dtype=np.int64), device_count)
    device_slot = np.arange(len(device_user), dtype=np.int64) - device_first[device_user] + 1

    type_shares = _normalised([t.share for t in config.entity_types])
    entity_type = rng.choice(len(type_shares), size=n_entities, p=type_shares).astype(np.int64)
    entity_number = np.empty(n_entities, dtype=np.int64)
    for type_index in range(len(type_shares)):
        members = entity_type == type_index
        entity_number[members] = np.arange(1, int(members.sum()) + 1)

    entity_team = rng.permutation(n_entities).astype(np.int64) % n_teams
    popularity = rng.random(n_entities)  # rank within the team comes from this shuffle key
    order = np.lexsort((popularity, entity_team))
    team_sorted = entity_team[order]
    team_start = np.searchsorted(team_sorted, np.arange(n_teams))
    rank = np.arange(n_entities) - team_start[team_sorted] + 1
    weight = rank.astype(np.float64) ** -config.entity_zipf_exponent
    cumulative = np.cumsum(weight)
    before_team = np.concatenate(([0.0], cumulative))[team_start][team_sorted]
    team_total = np.add.reduceat(weight, team_start)[team_sorted]
    team_cdf = team_sorted + (cumulative - before_team) / team_total

    return _Population(
        user_team=user_team,
        user_rate=user_rate,
        user_tz_hours=_REGION_OFFSETS[user_region],
        user_shift_start=rng.uniform(7.0, 10.0, n_users),
        user_offline_factor=_mean_one_lognormal(rng, config.offline_sigma, n_users),
        device_first=device_first,
        device_count=device_count,
        device_user=device_user,
        device_slot=device_slot,
        entity_type=entity_type,
        entity_number=entity_number,
        team_cdf=team_cdf,
        team_entities=order.astype(np.int64),
        n_teams=n_teams,
    )


# --------------------------------------------------------------------------------------
# Edits: sessions of work on devices.


@dataclass(frozen=True)
class _Edits:
    time: IntArray  # µs since the epoch
    device: IntArray
    entity: IntArray
    fields: IntArray  # bit mask over the entity type's fields
    session_first: BoolArray


def _local_weekend(config: SimulationConfig, tz_hours: FloatArray, n_days: int) -> BoolArray:
    """users x days: whether the user's local calendar day is a Saturday or Sunday."""
    start = config.start_at
    local_start_weekday = np.array(
        [(start + dt.timedelta(hours=float(tz))).weekday() for tz in tz_hours], dtype=np.int64
    )
    return ((local_start_weekday[:, None] + np.arange(n_days)[None, :]) % 7) >= 5


def _group_cumsum(values: FloatArray, group_first: BoolArray) -> FloatArray:
    """Cumulative sum restarting at every True in ``group_first`` (the first is True)."""
    total = np.cumsum(values)
    starts = np.flatnonzero(group_first)
    offset = np.repeat(total[starts] - values[starts], np.diff(np.append(starts, len(values))))
    return total - offset


def _generate_edits(config: SimulationConfig, pop: _Population, rng: np.random.Generator) -> _Edits:
    n_users, n_days = config.users, config.days
    # Days before and after the window let shifts in far timezones reach into it.
    day_index = np.arange(-1, n_days + 1)
    weekend = _local_weekend(config, pop.user_tz_hours, n_days + 2)
    activity = np.where(weekend, config.weekend_activity, 1.0)
    sessions_mean = pop.user_rate[:, None] * activity / config.edits_per_session
    n_sessions = rng.poisson(sessions_mean).ravel()
    session_user = np.repeat(np.repeat(np.arange(n_users), len(day_index)), n_sessions)
    session_day = np.repeat(np.tile(day_index, n_users), n_sessions)
    n = len(session_user)

    off_hours = rng.random(n) < config.off_hours_share
    shift_start = pop.user_shift_start[session_user]
    local_hour = np.where(
        off_hours,
        shift_start + config.shift_hours + rng.uniform(0.0, 4.5, n),
        shift_start + rng.uniform(0.0, config.shift_hours, n),
    )
    start_us = int((config.start_at - _EPOCH) // dt.timedelta(microseconds=1))
    utc_hours = session_day * 24.0 + local_hour - pop.user_tz_hours[session_user]
    session_time = start_us + np.round(utc_hours * US_PER_HOUR).astype(np.int64)

    count = pop.device_count[session_user]
    other = rng.integers(0, 1 << 30, n) % np.maximum(count - 1, 1) + 1
    slot = np.where((rng.random(n) < config.primary_device_share) | (count == 1), 0, other)
    session_device = pop.device_first[session_user] + slot

    edits_in_session = rng.geometric(1.0 / config.edits_per_session, n)
    m = int(edits_in_session.sum())
    edit_session = np.repeat(np.arange(n), edits_in_session)
    first = np.ones(m, dtype=np.bool_)
    first[1:] = edit_session[1:] != edit_session[:-1]
    gaps = rng.exponential(config.edit_spacing_seconds * US_PER_SECOND, m)
    gaps[first] = 0.0
    time = session_time[edit_session] + np.round(_group_cumsum(gaps, first)).astype(np.int64)

    user = session_user[edit_session]
    team = pop.user_team[user]
    cross = rng.random(m) < config.cross_team_share
    team = np.where(cross, rng.integers(0, pop.n_teams, m), team)
    position = np.searchsorted(pop.team_cdf, team + rng.random(m), side="left")
    fresh = pop.team_entities[np.minimum(position, len(pop.team_entities) - 1)]
    repeat = (rng.random(m) < config.repeat_entity_share) & ~first
    source = np.maximum.accumulate(np.where(repeat, 0, np.arange(m)))
    entity = fresh[source]

    fields = _draw_fields(config, pop.entity_type[entity], rng)
    return _Edits(
        time=time,
        device=session_device[edit_session],
        entity=entity,
        fields=fields,
        session_first=first,
    )


def _draw_fields(config: SimulationConfig, entity_type: IntArray, rng: np.random.Generator) -> IntArray:
    """A non-empty set of field indices per edit, as a bit mask, by field popularity."""
    m = len(entity_type)
    k_weights = _normalised(config.fields_per_edit_weights)
    wanted = rng.choice(len(k_weights), size=m, p=k_weights) + 1
    masks = np.zeros(m, dtype=np.int64)
    for type_index, spec in enumerate(config.entity_types):
        rows = np.flatnonzero(entity_type == type_index)
        if len(rows) == 0:
            continue
        n_fields = len(spec.fields)
        with np.errstate(divide="ignore"):
            log_weights = np.log(_normalised(spec.field_weights))
        # Gumbel top-k: the k largest perturbed log-weights are a weighted draw without replacement.
        keys = log_weights[None, :] + rng.gumbel(size=(len(rows), n_fields))
        order = np.argsort(-keys, axis=1, kind="stable")
        cumulative_bits = np.cumsum(np.left_shift(1, order), axis=1)
        available = int((np.asarray(spec.field_weights) > 0).sum())
        k = np.minimum(wanted[rows], available)
        masks[rows] = cumulative_bits[np.arange(len(rows)), k - 1]
    return masks


# --------------------------------------------------------------------------------------
# Connectivity and syncs.


def _offline_intervals(
    config: SimulationConfig, rate_per_day: float, window: tuple[int, int], rng: np.random.Generator
) -> tuple[IntArray, IntArray]:
    """Offline periods [begin, end) of one device as an alternating renewal process."""
    lo, hi = window
    if rate_per_day <= 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    expected = (hi - lo) / US_PER_DAY * rate_per_day
    n = int(expected * 1.5 + 10)
    online = rng.exponential(US_PER_DAY / rate_per_day, n)
    kind = rng.choice(3, size=n, p=_normalised(config.offline_gap_shares))
    medians = np.asarray(config.offline_gap_median_hours)[kind] * US_PER_HOUR
    offline = np.minimum(rng.lognormal(0.0, 0.7, n) * medians, 6.0 * US_PER_DAY)
    begin = lo + np.cumsum(online + np.concatenate(([0.0], offline[:-1])))
    end = begin + offline
    keep = begin < hi
    return np.round(begin[keep]).astype(np.int64), np.round(end[keep]).astype(np.int64)


def _offline_end(time: IntArray, begin: IntArray, end: IntArray) -> IntArray:
    """For each time, the end of the offline period containing it, or -1 if online."""
    if len(begin) == 0:
        return np.full(len(time), -1, dtype=np.int64)
    j = np.searchsorted(begin, time, side="right") - 1
    inside = (j >= 0) & (time < end[np.maximum(j, 0)])
    return np.where(inside, end[np.maximum(j, 0)], -1)


@dataclass(frozen=True)
class _Syncs:
    """Rows to push and syncs that push nothing, per device, before global ordering."""

    push_time: IntArray
    push_device: IntArray
    push_entity: IntArray
    push_fields: IntArray
    fetch_time: IntArray  # syncs without pushed changes
    fetch_device: IntArray


def _plan_syncs(config: SimulationConfig, pop: _Population, edits: _Edits, rng: np.random.Generator) -> _Syncs:
    """When each edit reaches the server, and which syncs only fetch.

    An online edit is pushed ``push_delay`` after it is made; an offline one when the
    device reconnects. Opening the app on an online device syncs too. A sync pushes all
    edits queued before it, so an edit goes out with the first sync at or after it.
    """
    window = (
        int((config.start_at - _EPOCH) // dt.timedelta(microseconds=1)) - US_PER_DAY,
        int((config.end_at - _EPOCH) // dt.timedelta(microseconds=1)),
    )
    order = np.lexsort((edits.time, edits.device))
    time, device = edits.time[order], edits.device[order]
    entity, fields, first = edits.entity[order], edits.fields[order], edits.session_first[order]
    n_devices = len(pop.device_user)
    bounds = np.searchsorted(device, np.arange(n_devices + 1))
    push_delay = np.round(rng.exponential(config.push_delay_seconds * US_PER_SECOND, len(time))).astype(np.int64)
    open_lead = np.round(rng.exponential(config.open_fetch_seconds * US_PER_SECOND, len(time))).astype(np.int64)

    push_time = np.empty(len(time), dtype=np.int64)
    fetch_times: list[IntArray] = []
    fetch_devices: list[IntArray] = []
    for d in range(n_devices):
        lo, hi = int(bounds[d]), int(bounds[d + 1])
        rate = config.offline_episodes_per_day * float(pop.user_offline_factor[pop.device_user[d]])
        begin, end = _offline_intervals(config, rate, window, rng)
        if lo == hi:
            continue
        t = time[lo:hi]
        back_online = _offline_end(t, begin, end)
        candidate = np.where(back_online >= 0, back_online + push_delay[lo:hi], t + push_delay[lo:hi])
        opened = t[first[lo:hi]] - open_lead[lo:hi][first[lo:hi]]
        opened = opened[_offline_end(opened, begin, end) < 0]
        syncs = np.unique(np.concatenate((candidate, opened)))
        pushed_at = syncs[np.searchsorted(syncs, t, side="left")]
        push_time[lo:hi] = pushed_at
        idle = np.setdiff1d(syncs, pushed_at, assume_unique=False)
        fetch_times.append(idle)
        fetch_devices.append(np.full(len(idle), d, dtype=np.int64))

    in_window = (push_time >= window[0] + US_PER_DAY) & (push_time < window[1])
    push_time, device, entity, fields = (
        push_time[in_window],
        device[in_window],
        entity[in_window],
        fields[in_window],
    )
    # Coalesce: one change per (device, sync, entity), with the union of the changed fields.
    group_order = np.lexsort((entity, push_time, device))
    push_time, device, entity, fields = (a[group_order] for a in (push_time, device, entity, fields))
    new_group = np.ones(len(entity), dtype=np.bool_)
    new_group[1:] = (entity[1:] != entity[:-1]) | (push_time[1:] != push_time[:-1]) | (device[1:] != device[:-1])
    starts = np.flatnonzero(new_group)
    merged = np.bitwise_or.reduceat(fields, starts) if len(starts) else fields[:0]

    fetch_time = np.concatenate(fetch_times) if fetch_times else np.empty(0, dtype=np.int64)
    fetch_device = np.concatenate(fetch_devices) if fetch_devices else np.empty(0, dtype=np.int64)
    keep = (fetch_time >= window[0]) & (fetch_time < window[1])
    return _Syncs(
        push_time=push_time[starts],
        push_device=device[starts],
        push_entity=entity[starts],
        push_fields=merged,
        fetch_time=fetch_time[keep],
        fetch_device=fetch_device[keep],
    )


# --------------------------------------------------------------------------------------
# The server.


@dataclass(frozen=True)
class _Applied:
    order: IntArray  # rows of _Syncs.push_* in server order
    base_version: IntArray
    server_version: IntArray
    conflict: BoolArray


def _run_server(
    syncs: _Syncs,
    n_devices: int,
    n_entities: int,
    field_lists: list[list[tuple[int, ...]]],
    entity_type: IntArray,
    progress: Callable[[int], None] | None,
) -> _Applied:
    """Apply every push in sync order; see the module docstring for the rule."""
    n_push = len(syncs.push_time)
    time = np.concatenate((syncs.push_time, syncs.fetch_time))
    device = np.concatenate((syncs.push_device, syncs.fetch_device))
    entity = np.concatenate((syncs.push_entity, np.full(len(syncs.fetch_time), -1, dtype=np.int64)))
    order = np.lexsort((entity, device, time))
    time, device, entity = time[order], device[order], entity[order]
    # A sync fetches after its last push: the last item of each (time, device) run.
    fetch_after = np.ones(len(order), dtype=np.bool_)
    fetch_after[:-1] = (time[1:] != time[:-1]) | (device[1:] != device[:-1])

    kinds = [field_lists[t] for t in entity_type.tolist()]
    masks = np.zeros(len(order), dtype=np.int64)
    is_push = order < n_push
    masks[is_push] = syncs.push_fields[order[is_push]]

    version = [1] * n_entities
    field_version: list[list[int] | None] = [None] * n_entities
    history: list[list[int]] = [[] for _ in range(n_entities)]
    fetched = [0] * n_devices  # applied-change counter at the device's last fetch
    applied = 0
    bases: list[int] = []
    versions: list[int] = []
    conflicts: list[bool] = []
    bisect_right = bisect.bisect_right

    for d, e, mask, fetch in zip(device.tolist(), entity.tolist(), masks.tolist(), fetch_after.tolist(), strict=True):
        if e >= 0:
            fv = field_version[e]
            if fv is None:
                fv = field_version[e] = [1] * MAX_FIELDS_PER_TYPE
            base = 1 + bisect_right(history[e], fetched[d])
            changed = kinds[e][mask]
            conflict = False
            for f in changed:
                if fv[f] > base:
                    conflict = True
                    break
            if conflict:
                versions.append(version[e])
            else:
                applied += 1
                v = version[e] + 1
                version[e] = v
                history[e].append(applied)
                for f in changed:
                    fv[f] = v
                versions.append(v)
            bases.append(base)
            conflicts.append(conflict)
            if progress is not None and len(bases) % _PROGRESS_EVERY == 0:
                progress(len(bases))
        if fetch:
            fetched[d] = applied

    return _Applied(
        order=order[is_push],
        base_version=np.asarray(bases, dtype=np.int64),
        server_version=np.asarray(versions, dtype=np.int64),
        conflict=np.asarray(conflicts, dtype=np.bool_),
    )


def _field_lists(entity_types: Sequence[EntityType]) -> list[list[tuple[int, ...]]]:
    """Per entity type, the field indices of every bit mask that type can produce."""
    lists = []
    for spec in entity_types:
        n = len(spec.fields)
        lists.append([tuple(i for i in range(n) if mask >> i & 1) for mask in range(1 << n)])
    return lists


# --------------------------------------------------------------------------------------
# Output.


def _resolutions(config: SimulationConfig, n_conflicts: int, rng: np.random.Generator) -> tuple[IntArray, IntArray]:
    """Resolution type index and lag (µs) of each conflict."""
    kind = rng.choice(len(RESOLUTION_TYPES), size=n_conflicts, p=_normalised(config.resolution_weights))
    manual = kind == RESOLUTION_TYPES.index("manual_merge")
    median = np.where(
        manual,
        config.manual_resolution_median_hours * US_PER_HOUR,
        config.auto_resolution_median_minutes * 60 * US_PER_SECOND,
    )
    lag = rng.lognormal(0.0, 1.0, n_conflicts) * median
    lag = np.clip(lag, US_PER_SECOND, config.max_resolution_lag_hours * US_PER_HOUR)
    return kind.astype(np.int64), np.round(lag).astype(np.int64)


def _changed_fields_array(config: SimulationConfig, entity_type: IntArray, masks: IntArray) -> pa.ListArray:
    names: list[str] = []
    name_index = np.full((len(config.entity_types), MAX_FIELDS_PER_TYPE), -1, dtype=np.int64)
    for t, spec in enumerate(config.entity_types):
        for i, name in enumerate(spec.fields):
            name_index[t, i] = len(names)
            names.append(name)
    width = max(len(spec.fields) for spec in config.entity_types)
    bits = ((masks[:, None] >> np.arange(width)[None, :]) & 1).astype(np.bool_)
    values = np.where(bits, name_index[entity_type, :width], -1).ravel()
    values = values[values >= 0]
    offsets = np.concatenate(([0], np.cumsum(bits.sum(axis=1)))).astype(np.int32)
    flat = pa.array(names, type=pa.string()).take(pa.array(values))
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), flat)


def _labels(labels: list[str], index: IntArray) -> pa.Array:
    return pa.array(labels, type=pa.string()).take(pa.array(index))


def _build_table(
    config: SimulationConfig,
    pop: _Population,
    syncs: _Syncs,
    result: _Applied,
    rng: np.random.Generator,
) -> pa.Table:
    rows = result.order
    time = syncs.push_time[rows]
    device = syncs.push_device[rows]
    entity = syncs.push_entity[rows]
    entity_type = pop.entity_type[entity]
    n = len(rows)

    width = max(4, len(str(config.users)))
    user_labels = [f"u{u + 1:0{width}d}" for u in range(config.users)]
    device_labels = [
        f"{user_labels[u]}-d{s}" for u, s in zip(pop.device_user.tolist(), pop.device_slot.tolist(), strict=True)
    ]
    type_names = [t.name for t in config.entity_types]
    entity_labels = [
        f"{type_names[t]}-{k:06d}" for t, k in zip(pop.entity_type.tolist(), pop.entity_number.tolist(), strict=True)
    ]
    event_ids = [f"s{config.seed}-{i:09d}" for i in range(n)]

    conflict = result.conflict
    kind, lag = _resolutions(config, int(conflict.sum()), rng)
    resolution_index = np.zeros(n, dtype=np.int64)
    resolution_index[conflict] = kind
    resolved = np.zeros(n, dtype=np.int64)
    resolved[conflict] = time[conflict] + lag

    columns = {
        "event_id": pa.array(event_ids, type=pa.string()),
        "user_id": _labels(user_labels, pop.device_user[device]),
        "device_id": _labels(device_labels, device),
        "entity_type": pa.array(type_names, type=pa.string()).take(pa.array(entity_type)),
        "entity_id": _labels(entity_labels, entity),
        "changed_fields": _changed_fields_array(config, entity_type, syncs.push_fields[rows]),
        "synced_at": pa.array(time, type=TIMESTAMP),
        "conflict": pa.array(conflict, type=pa.bool_()),
        "resolution_type": pa.array(list(RESOLUTION_TYPES), type=pa.string()).take(
            pa.array(resolution_index, mask=~conflict)
        ),
        "resolved_at": pa.array(resolved, type=TIMESTAMP, mask=~conflict),
        "base_version": pa.array(result.base_version, type=pa.int64()),
        "server_version": pa.array(result.server_version, type=pa.int64()),
    }
    return pa.Table.from_arrays([columns[f.name] for f in EVENT_SCHEMA], schema=EVENT_SCHEMA)


def simulate(config: SimulationConfig, progress: Callable[[int], None] | None = None) -> pa.Table:
    """Simulate ``config`` and return its sync events (``EVENT_SCHEMA``, sorted by ``synced_at``).

    ``progress`` is called with the number of events produced so far every 50,000 events
    and once at the end. The same config always gives the same table.
    """
    rng = np.random.default_rng(config.seed)
    pop = _build_population(config, rng)
    edits = _generate_edits(config, pop, rng)
    syncs = _plan_syncs(config, pop, edits, rng)
    result = _run_server(
        syncs,
        n_devices=len(pop.device_user),
        n_entities=config.entities,
        field_lists=_field_lists(config.entity_types),
        entity_type=pop.entity_type,
        progress=progress,
    )
    table = _build_table(config, pop, syncs, result, rng)
    if progress is not None:
        progress(table.num_rows)
    return table


__all__ = [
    "DEFAULT_ENTITY_TYPES",
    "EntityType",
    "RESOLUTION_TYPES",
    "SimulationConfig",
    "default_start",
    "TEMPO_PROFILES",
    "TempoProfile",
    "profile_config",
    "simulate",
    "simulation_size_for_events",
]
