"""Online features: the recent history of the requesting users and entities, then the shared
:func:`conflict_core.features.compute_features` with the request items as targets.

:class:`OnlineFeatureLookup` is plain Python (one store query per call, whatever the number
of items); the Serve deployment in :mod:`serve_app.deployments` batches concurrent requests
into one call. A short-TTL cache keeps each user's and entity's history for ``cache_ttl_s``
seconds: a history at most that stale only misses syncs of the last second, which the
5-minute and 30-day windows barely notice, and it saves a store round trip per burst.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from conflict_core.events_io import load_events
from conflict_core.features import ALL_FEATURES, FeatureParams, compute_features
from conflict_core.store import make_engine, utcnow

FEATURE_NAMES: tuple[str, ...] = ALL_FEATURES


class _TTLCache:
    """Per-key history frames, each valid for ``ttl_s`` and for windows starting at or after ``since``."""

    def __init__(self, ttl_s: float, max_keys: int = 50_000):
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self._entries: dict[Hashable, tuple[float, dt.datetime, pd.DataFrame]] = {}

    def get(self, key: Hashable, since: dt.datetime, now: float) -> pd.DataFrame | None:
        entry = self._entries.get(key)
        if entry is None or now - entry[0] > self.ttl_s or entry[1] > since:
            return None
        return entry[2]

    def put(self, key: Hashable, since: dt.datetime, frame: pd.DataFrame, now: float) -> None:
        if len(self._entries) >= self.max_keys:
            self._entries = {k: v for k, v in self._entries.items() if now - v[0] <= self.ttl_s}
            if len(self._entries) >= self.max_keys:
                self._entries.clear()
        self._entries[key] = (now, since, frame)


class OnlineFeatureLookup:
    """Features of prospective syncs, computed from the store's recent history."""

    def __init__(
        self,
        database_url: str | None = None,
        *,
        engine: Engine | None = None,
        params: FeatureParams = FeatureParams(),
        cache_ttl_s: float = 1.0,
    ):
        if engine is None:
            if database_url is None:
                raise ValueError("OnlineFeatureLookup needs a database_url or an engine")
            engine = make_engine(database_url)
        self.engine = engine
        self.params = params
        self._cache = _TTLCache(cache_ttl_s) if cache_ttl_s > 0 else None

    def targets_frame(self, items: Sequence[dict[str, Any]], now: dt.datetime) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "user_id": [i["user_id"] for i in items],
                "entity_type": [i["entity_type"] for i in items],
                "entity_id": [i["entity_id"] for i in items],
                "changed_fields": pd.Series([list(i["changed_fields"]) for i in items], dtype=object),
                "synced_at": pd.to_datetime([i.get("at") or now for i in items], utc=True),
            }
        )

    def history(self, users: Sequence[str], entities: Sequence[tuple[str, str]], since: dt.datetime) -> pd.DataFrame:
        """Every stored event of ``users`` and ``entities`` from ``since`` on (one query at most)."""
        now = time.monotonic()
        cached: list[pd.DataFrame] = []
        missing_users, missing_entities = [], []
        for user in users:
            hit = self._cache.get(("u", user), since, now) if self._cache else None
            (missing_users.append(user) if hit is None else cached.append(hit))
        for entity in entities:
            hit = self._cache.get(("e", *entity), since, now) if self._cache else None
            (missing_entities.append(entity) if hit is None else cached.append(hit))
        if missing_users or missing_entities:
            fresh = load_events(
                self.engine, since=since, user_ids=missing_users or None, entity_keys=missing_entities or None
            )
            if self._cache is not None:
                self._fill_cache(fresh, missing_users, missing_entities, since, now)
            if not cached:
                return fresh
            cached.append(fresh)
        history = pd.concat(cached, ignore_index=True)
        return history.drop_duplicates("event_id", ignore_index=True)

    def _fill_cache(
        self, fresh: pd.DataFrame, users: list[str], entities: list[tuple[str, str]], since: dt.datetime, now: float
    ) -> None:
        # ``fresh`` holds every event of each missing user, and every event of each missing
        # entity (by a missing user through the user branch, by anyone else through the entity one).
        assert self._cache is not None
        empty = fresh.iloc[0:0]
        by_user = dict(tuple(fresh.groupby("user_id", sort=False))) if len(fresh) else {}
        by_entity = dict(tuple(fresh.groupby(["entity_type", "entity_id"], sort=False))) if len(fresh) else {}
        for user in users:
            self._cache.put(("u", user), since, by_user.get(user, empty), now)
        for entity in entities:
            self._cache.put(("e", *entity), since, by_entity.get(entity, empty), now)

    def compute(self, items: Sequence[dict[str, Any]], now: dt.datetime | None = None) -> np.ndarray:
        """An ``(len(items), len(FEATURE_NAMES))`` float matrix, rows in item order."""
        now = now or utcnow()
        targets = self.targets_frame(items, now)
        since = (targets["synced_at"].min() - self.params.lookback).to_pydatetime()
        users = list(dict.fromkeys(targets["user_id"]))
        entities = list(dict.fromkeys(zip(targets["entity_type"], targets["entity_id"], strict=True)))
        history = self.history(users, entities, since)
        features = compute_features(history, targets, self.params)
        return features[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)

    def compute_many(self, requests: Sequence[Sequence[dict[str, Any]]]) -> list[np.ndarray]:
        """:meth:`compute` over several requests with one store query; one matrix per request."""
        flat = [item for request in requests for item in request]
        matrix = self.compute(flat)
        bounds = np.cumsum([0, *(len(r) for r in requests)])
        return [matrix[bounds[i] : bounds[i + 1]] for i in range(len(requests))]
