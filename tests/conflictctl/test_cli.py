"""The command line: the run's feature-parity check and serve-up's argument checks."""

from __future__ import annotations

from typing import Any

import pytest


def _logged_prediction(prediction_id: str, event: Any, features: dict[str, float]) -> Any:
    from conflict_core.store import PredictionLog

    return PredictionLog(
        prediction_id=prediction_id,
        model_type="hgb",
        model_version="v1",
        sync_id=event.event_id,
        user_id=event.user_id,
        device_id=event.device_id,
        entity_type=event.entity_type,
        entity_id=event.entity_id,
        predicted_conflict=False,
        probability=0.1,
        risk_level="low",
        recommendation="sync_now",
        features=features,
        created_at=event.synced_at.to_pydatetime(),
    )


def test_logged_feature_parity_counts_predictions_served_the_offline_features(
    simulated_store: tuple[str, Any], tmp_path: Any
) -> None:
    import shutil

    from conflict_core.events.store_reads import load_events
    from conflict_core.features import ALL_FEATURES, TARGET_COLUMNS, compute_features
    from conflict_core.store import make_engine, make_session_factory
    from conflictctl.pipeline_commands import logged_feature_parity

    shutil.copy(simulated_store[0].removeprefix("sqlite:///"), tmp_path / "store.db")
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    events = load_events(engine).sample(3, random_state=0)
    offline = compute_features(load_events(engine), events[list(TARGET_COLUMNS)])
    served = [{name: float(row[name]) for name in ALL_FEATURES} for _, row in offline.iterrows()]
    served[2]["hours_since_last_sync"] += 0.5  # one prediction saw a stale history
    with make_session_factory(engine).begin() as session:
        for i, (event, features) in enumerate(zip(events.itertuples(), served, strict=True)):
            session.add(_logged_prediction(f"p{i}", event, features))
    assert logged_feature_parity(engine) == (2, 3)
    with make_session_factory(engine).begin() as session:  # a re-run predicts the same sync again
        session.add(_logged_prediction("p-again", next(events.itertuples()), served[0]))
    assert logged_feature_parity(engine) == (3, 4)
    engine.dispose()


def test_serve_up_refuses_no_wait_without_a_cluster_to_deploy_onto(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray instance started by the command would stop with it: say so instead of serving for a moment."""
    from click.testing import CliRunner

    from conflictctl.main import main

    monkeypatch.delenv("CONFLICT_RAY_ADDRESS", raising=False)
    result = CliRunner().invoke(main, ["serve-up", "--no-wait"])
    assert result.exit_code == 2
    assert "--no-wait needs a running Ray cluster" in result.output


def test_simulate_slow_profile_writes_slow_tempo_events(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from conflictctl.main import main

    monkeypatch.setenv("CONFLICT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    out = tmp_path / "slow.parquet"
    args = ["simulate", "--profile", "slow", "--users", "30", "--days", "20", "--end", "2026-01-01", "--no-store"]
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "(slow tempo)" in result.output
    table = pq.read_table(out)
    assert table.num_rows > 0 and pc.count_distinct(table["entity_id"]).as_py() > 30 * 10
