"""A small simulated history, exported and extracted once per test session."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from conflict_core import db
from conflict_core.events_io import export_events, insert_event_frame
from conflict_core.features import FeatureParams
from conflict_core.simulator import SimulationConfig, simulate
from conflict_core.store import make_engine, make_session_factory
from training.extract import ExtractionWindow, extract_local, latest_event_time, partition_files

END = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="session")
def simulated_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A SQLite store filled with 45 simulated days, and its date-partitioned export."""
    root = tmp_path_factory.mktemp("simulated")
    url = f"sqlite:///{root / 'store.db'}"
    db.upgrade(url)
    table = simulate(SimulationConfig(users=80, entities=600, days=45, seed=11, start=END - dt.timedelta(days=45)))
    engine = make_engine(url)
    with make_session_factory(engine).begin() as session:
        insert_event_frame(session, table)
    export_events(engine, root / "events")
    engine.dispose()
    return url, root / "events"


@pytest.fixture(scope="session")
def training_frame(simulated_store: tuple[str, Path]) -> tuple[pd.DataFrame, ExtractionWindow, list[Path]]:
    _, events_dir = simulated_store
    window = ExtractionWindow.days_back(45, end=latest_event_time(events_dir), params=FeatureParams())
    files = partition_files(events_dir, window)
    return extract_local(files, window), window, files
