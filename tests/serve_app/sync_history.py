"""Random sync events around now, and a migrated SQLite store holding them: the history the
event window and the online feature lookup are tested on."""

from __future__ import annotations

import datetime as dt
import random

import pandas as pd
from sqlalchemy.orm import Session, sessionmaker

from conflict_core import db
from conflict_core.events.store_writes import insert_event_frame
from conflict_core.store import make_engine, make_session_factory, session_scope

NOW = dt.datetime.now(dt.UTC).replace(microsecond=123456)


def events(n: int, *, seed: int = 0, prefix: str = "ev", span_days: float = 20) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        t = NOW - dt.timedelta(seconds=rng.uniform(0, span_days * 86400))
        conflict = rng.random() < 0.2
        rows.append(
            {
                "event_id": f"{prefix}-{i}",
                "user_id": f"u{rng.randrange(6)}",
                "device_id": "d",
                "entity_type": rng.choice(["task", "form"]),
                "entity_id": f"e{rng.randrange(8)}",
                "changed_fields": rng.sample(["a", "b", "c", "d"], rng.randint(1, 3)),
                "synced_at": t,
                "conflict": conflict,
                "resolution_type": "manual" if conflict else None,
                "resolved_at": t + dt.timedelta(hours=rng.uniform(0, 48)) if conflict else None,
            }
        )
    return pd.DataFrame(rows)


def store_with(url: str, frame: pd.DataFrame) -> sessionmaker[Session]:
    db.upgrade(url)
    factory = make_session_factory(make_engine(url))
    with session_scope(factory) as session:
        insert_event_frame(session, frame)
    return factory
