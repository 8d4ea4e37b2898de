from __future__ import annotations

import json
from pathlib import Path

import pytest

from conflict_core import db, registry
from conflict_core.features import FeatureParams
from conflict_core.settings import Settings
from conflict_core.store import make_engine, make_session_factory
from training import feature_search
from training.extract import latest_event_time
from training.pipeline import train_and_register

CANDIDATES = (
    FeatureParams(),
    FeatureParams(concurrent_window_minutes=120.0, history_window_days=14.0, hours_since_cap=336.0),
)


def _search(events_dir: Path, out: Path, *, use_ray: bool) -> list[feature_search.ParamsResult]:
    return feature_search.search(
        events_dir,
        out,
        end=latest_event_time(events_dir),
        days_back=20,
        candidates=CANDIDATES,
        num_samples=1,  # one logistic regression per candidate: the test is about the search
        use_ray=use_ray,
    )


@pytest.mark.slow
def test_each_candidate_is_extracted_once_and_the_best_validation_pr_auc_wins(
    simulated_store: tuple[str, Path], tmp_path: Path
) -> None:
    _, events_dir = simulated_store
    results = _search(events_dir, tmp_path / "search", use_ray=False)

    assert sorted(r.label for r in results) == sorted(feature_search.label(p) for p in CANDIDATES)
    assert results[0].val_pr_auc == max(r.val_pr_auc for r in results)
    for result in results:
        manifest = json.loads((Path(result.training_set) / "manifest.json").read_text())
        assert manifest["feature_params"] == result.params  # the set was extracted with its own params
        assert result.val_roc_auc >= result.seed_val_roc_auc or result.config == {"model": "seed"}

    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'store.db'}", data_dir=tmp_path, serve_config_path=tmp_path / "none.yaml"
    )
    db.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    trained = train_and_register(
        settings,
        make_session_factory(engine),
        training_set=Path(results[0].training_set),
        sweep="local",
        num_samples=1,
        feature_search=results,
        seed_training_set=feature_search.default_training_set(results),
    )
    # Never worse than the original system: the seed baseline on the fixed-parameter features.
    assert trained.holdout["roc_auc"] >= trained.seed_baseline_holdout["roc_auc"]
    assert trained.holdout["pr_auc"] >= trained.seed_baseline_holdout["pr_auc"]
    with make_session_factory(engine)() as session:
        row = registry.get(session, trained.version)
        assert [r["label"] for r in row.metrics["feature_search"]] == [r.label for r in results]
    engine.dispose()
    artifact = registry.load_artifact(Path(trained.artifact_path), trained.artifact_sha256)
    shipped_seed = trained.algorithm == "seed"  # then it serves the seed features with the fixed parameters
    expected = (
        next(r for r in results if r.label == feature_search.label(FeatureParams())) if shipped_seed else results[0]
    )
    assert artifact["feature_params"] == expected.params
    assert "## Feature parameters (searched)" in Path(trained.report_path).read_text()


@pytest.mark.ray
@pytest.mark.slow
def test_the_search_runs_its_extractions_as_ray_tasks(simulated_store: tuple[str, Path], tmp_path: Path) -> None:
    import ray

    _, events_dir = simulated_store
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = _search(events_dir, tmp_path / "search", use_ray=True)
    finally:
        ray.shutdown()
    assert len(results) == len(CANDIDATES) and results[0].val_pr_auc == max(r.val_pr_auc for r in results)


def _result(
    params: FeatureParams, pr: float, roc: float, seed_pr: float, seed_roc: float
) -> feature_search.ParamsResult:
    return feature_search.ParamsResult(
        label=feature_search.label(params),
        params={},
        training_set="",
        config={"model": "hgb"},
        val_pr_auc=pr,
        val_roc_auc=roc,
        seed_val_pr_auc=seed_pr,
        seed_val_roc_auc=seed_roc,
        reason="",
    )


def test_a_candidate_losing_to_the_original_seed_on_roc_auc_cannot_win() -> None:
    default = _result(FeatureParams(), pr=0.35, roc=0.91, seed_pr=0.31, seed_roc=0.90)
    slow_windows = _result(CANDIDATES[1], pr=0.40, roc=0.88, seed_pr=0.36, seed_roc=0.87)  # better PR, worse ROC
    hourly = _result(FeatureParams(concurrent_window_minutes=60.0), pr=0.36, roc=0.91, seed_pr=0.31, seed_roc=0.9)
    ranked = feature_search.rank([slow_windows, default, hourly])
    assert [r.label for r in ranked] == [hourly.label, default.label, slow_windows.label]
    assert [r.matches_seed for r in ranked] == [True, True, False]
