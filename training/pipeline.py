"""One training run: training set → sweep → calibrated model → report → registry → gate.

Called by the ``jobs.train`` Ray Job entrypoint and by ``conflictctl train``; everything here
is plain Python except the optional Ray Tune sweep.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.inspection import permutation_importance
from sqlalchemy.orm import Session, sessionmaker

from conflict_core import registry
from conflict_core.decision import cost_thresholds, policy_comparison
from conflict_core.errors import ArtifactIntegrityError, TrainingDataError
from conflict_core.features import ALL_FEATURES, SEED_FEATURES, FeatureParams
from conflict_core.settings import Settings
from conflict_core.store import session_scope
from training import selection, tune
from training.evaluate import classification_metrics
from training.extract import LABEL, load_training_set
from training.feature_search import ParamsResult, search_section
from training.report import decision_section, plot_curves, plot_importances, selection_section, write_report
from training.selection import SEED_CONFIG
from training.train import (
    TimeSplit,
    calibrate,
    check_training_data,
    fit_candidate,
    seed_baseline,
    seed_random_split_baseline,
    time_split,
)

log = logging.getLogger(__name__)
SEED_BASELINE = "seed baseline (logreg, balanced, uncalibrated)"


@dataclass
class TrainingResult:
    version: str
    algorithm: str
    activated: bool
    gate_reason: str
    holdout: dict[str, float]
    seed_baseline_holdout: dict[str, float]
    active_before: str | None
    active_before_holdout: dict[str, float] | None
    report_path: str
    artifact_path: str
    artifact_sha256: str
    notes: list[str] = field(default_factory=list)
    rollout_stage: str | None = None  # shadow or canary: the gate passed and a rollout began instead

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _headline(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(metrics[k]) for k in ("roc_auc", "pr_auc", "brier", "ece", "precision", "recall", "accuracy")}


def train_and_register(
    settings: Settings,
    session_factory: sessionmaker[Session],
    *,
    training_set: Path,
    sweep: str = "ray",
    num_samples: int | None = None,
    activated_by: str = "gate",
    now: dt.datetime | None = None,
    progress: Callable[[str], None] = lambda message: None,
    rollout_mode: str = "activate",
    feature_search: Sequence[ParamsResult] | None = None,
    seed_training_set: Path | None = None,
) -> TrainingResult:
    """Train, evaluate, write the artifact and report, register, and let the gate decide.

    ``sweep`` is ``"ray"`` (Ray Tune) or ``"local"`` (the same configurations in-process).
    An activation is recorded in the registry only; publishing it to the serve config is the
    caller's next step (:func:`training.publishing.publish_active_model`).
    ``rollout_mode``: what a candidate that passes the gate becomes while a scorable model is
    active: ``"activate"`` (the active model at once), ``"shadow"`` or ``"canary"``
    (``rollout_canary_percent``) — see :func:`begin_rollout`. The first model is activated.
    ``feature_search`` (from :func:`training.feature_search.search`; ``training_set`` is its
    winner's) is reported and registered with the model. ``seed_training_set`` holds the same
    events with the fixed default feature parameters: the seed baseline, which the shipped model
    never loses to, is then the original system on its own features (and is shipped as such).
    """
    frame, manifest = load_training_set(training_set)
    check_training_data(frame, min_samples=settings.min_training_samples, min_positives=settings.min_training_positives)
    split = time_split(frame)
    all_features = list(ALL_FEATURES)
    feature_params = dict(manifest.get("feature_params") or asdict(FeatureParams()))
    selection_notes: list[str] = []
    version = registry.new_version(now)
    out_dir = settings.models_dir / version
    out_dir.mkdir(parents=True, exist_ok=False)
    progress(
        f"{len(frame)} samples: fit {len(split.fit)}, calibration {len(split.calibration)}, "
        f"holdout {len(split.holdout)}"
    )

    n = num_samples or settings.sweep_num_samples
    progress(f"sweep: {n} configurations ({sweep})")
    results = _sweep(settings, sweep, n, all_features, split, name=version)
    seed_split, seed_feature_params = split, feature_params
    if seed_training_set is not None:
        seed_frame, seed_manifest = load_training_set(seed_training_set)
        seed_split = _aligned_split(seed_frame, split)
        seed_feature_params = dict(seed_manifest.get("feature_params") or asdict(FeatureParams()))
    seed_scores = fit_candidate(SEED_CONFIG, list(SEED_FEATURES), seed_split.fit, seed_split.calibration)[1]
    choice = selection.choose_on_validation(results, seed_scores)
    config, scores = choice.config, choice.scores
    progress(f"chosen: {config['model']} (validation PR-AUC {scores[tune.METRIC]:.4f}); {choice.reason}")

    y_holdout = split.holdout[LABEL].to_numpy()
    baseline = seed_baseline().fit(seed_split.train[list(SEED_FEATURES)], seed_split.train[LABEL])
    baseline_proba = baseline.predict_proba(seed_split.holdout[list(SEED_FEATURES)])[:, 1]
    shipped = _never_worse_than_the_seed(
        config, all_features, split, seed_split, baseline, baseline_proba, feature_params, seed_feature_params
    )
    config, features, model, proba = shipped.config, shipped.features, shipped.model, shipped.proba
    model_split, feature_params = shipped.split, shipped.feature_params
    selection_notes += shipped.notes
    for note in shipped.notes:
        progress(note)

    costs = settings.decision_costs()
    thresholds = cost_thresholds(costs)
    threshold = thresholds.fetch_first  # from here on the model recommends acting on the sync
    decision_policy = {
        "thresholds": thresholds.to_dict(),
        "costs": costs.to_dict(),
        "holdout_cost_per_decision": policy_comparison(
            y_holdout, proba, thresholds=thresholds, fixed=settings.fixed_thresholds(), costs=costs
        ),
    }
    holdout_metrics = {
        version: classification_metrics(y_holdout, proba, threshold),
        SEED_BASELINE: classification_metrics(y_holdout, baseline_proba, threshold),
    }
    intervals = {
        version: selection.bootstrap_intervals(y_holdout, proba),
        SEED_BASELINE: selection.bootstrap_intervals(y_holdout, baseline_proba),
    }
    scores_by_model = {version: proba, "seed baseline": baseline_proba}

    active = _score_active(session_factory, split.holdout, threshold)
    current_info, active_metrics, unscorable, notes = active.info, active.metrics, active.unscorable, active.notes
    if current_info is not None and active_metrics is not None and active.proba is not None:
        holdout_metrics[f"active {current_info[0]}"] = active_metrics
        scores_by_model[f"active {current_info[0]}"] = active.proba

    decision = registry.gate(
        candidate_roc_auc=holdout_metrics[version]["roc_auc"],
        active_roc_auc=active_metrics["roc_auc"] if active_metrics else None,
        min_relative_improvement=settings.gate_min_relative_improvement,
        quality_floor=settings.gate_quality_floor_roc_auc,
        active_unscorable=unscorable,
    )

    progress("writing artifact and report")
    artifact_path = out_dir / "model.joblib"
    joblib.dump(
        {
            "estimator": model,
            "feature_columns": features,
            "version": version,
            "algorithm": config["model"],
            "params": config,
            "threshold": threshold,
            "decision_thresholds": thresholds.to_dict(),
            # What the served model's reasons compare against, and the windows its features use.
            "feature_reference": {c: float(model_split.train[c].median()) for c in features},
            "feature_params": feature_params,
            "decision_costs": costs.to_dict(),
            "training_set": manifest["snapshot"],
        },
        artifact_path,
    )
    sha = registry.sha256_file(artifact_path)
    plots = plot_curves(out_dir, y_holdout, scores_by_model)
    plots["importances"] = plot_importances(out_dir, _importances(model, model_split.holdout, features))
    split_info = {
        "training set": manifest["snapshot"],
        "fit rows (oldest)": _rows_and_span(split.fit),
        "calibration rows": _rows_and_span(split.calibration),
        "holdout rows (newest)": _rows_and_span(split.holdout),
        "conflict rate": f"{frame[LABEL].mean():.4f}",
    }
    random_split = seed_random_split_baseline(frame)
    report_path = write_report(
        out_dir,
        version=version,
        algorithm=config["model"],
        params=config,
        holdout_metrics=holdout_metrics,
        extra_rows={"seed baseline on a stratified random split (leaks the future)": random_split},
        sweep=results,
        plots=plots,
        gate_reason=decision.reason,
        split=split_info,
        sections={
            "Never worse than the seed baseline": selection_section(
                holdout_metrics, intervals, reason=choice.reason, notes=selection_notes
            ),
            "Recommendations (cost-aware thresholds)": decision_section(decision_policy),
            **({"Feature parameters (searched)": search_section(feature_search)} if feature_search else {}),
        },
    )

    with session_scope(session_factory) as session:
        registry.register(
            session,
            version=version,
            algorithm=config["model"],
            params={**config, "feature_params": feature_params},
            metrics={
                "holdout": _headline(holdout_metrics[version]),
                "seed_baseline_holdout": _headline(holdout_metrics[SEED_BASELINE]),
                "threshold": threshold,
                "decision": decision_policy,
                "holdout_intervals": intervals,
                "holdout_positives": int(y_holdout.sum()),
                "selection": {"reason": choice.reason, "notes": selection_notes},
                "feature_search": [result.to_dict() for result in feature_search or ()],
                "validation": scores,
                "feature_means": {c: float(model_split.train[c].mean()) for c in features},
            },
            feature_columns=features,
            train_samples=len(split.train),
            holdout_samples=len(split.holdout),
            training_window_start=split.fit["synced_at"].min().to_pydatetime(),
            training_window_end=split.holdout["synced_at"].max().to_pydatetime(),
            artifact_path=str(artifact_path.resolve()),
            artifact_sha256=sha,
            report_path=str(report_path.resolve()),
            gate_decision=decision.reason,
        )
        stage = None
        if decision.activate and rollout_mode != "activate" and active_metrics is not None:
            stage = begin_rollout(
                settings, session, version, mode=rollout_mode, by=activated_by, reason=decision.reason
            )
        elif decision.activate:
            registry.activate(session, version, by=activated_by)

    result = TrainingResult(
        version=version,
        algorithm=config["model"],
        activated=decision.activate and stage is None,
        rollout_stage=stage,
        gate_reason=decision.reason,
        holdout=_headline(holdout_metrics[version]),
        seed_baseline_holdout=_headline(holdout_metrics[SEED_BASELINE]),
        active_before=current_info[0] if current_info else None,
        active_before_holdout=_headline(active_metrics) if active_metrics else None,
        report_path=str(report_path),
        artifact_path=str(artifact_path.resolve()),
        artifact_sha256=sha,
        notes=notes,
    )
    return result


def _sweep(
    settings: Settings, sweep: str, n: int, features: list[str], split: TimeSplit, *, name: str
) -> list[tuple[dict[str, Any], dict[str, float]]]:
    """``n`` configurations fitted on the fit rows and scored on the calibration rows."""
    if sweep == "ray":
        return tune.sweep_with_ray(
            n,
            features,
            split.fit,
            split.calibration,
            storage_path=settings.data_dir / "tune",
            name=name,
            cpus_per_trial=settings.job_task_cpus,
        )
    if sweep == "local":
        return tune.sweep_local(tune.sample_configs(n), features, split.fit, split.calibration)
    raise ValueError(f"sweep must be 'ray' or 'local', got {sweep!r}")


@dataclass
class _Shipped:
    """The model a training run ships, with the rows and feature parameters it was made from."""

    config: dict[str, Any]
    features: list[str]
    model: Any
    proba: np.ndarray  # on the holdout
    split: TimeSplit
    feature_params: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _never_worse_than_the_seed(
    config: dict[str, Any],
    all_features: list[str],
    split: TimeSplit,
    seed_split: TimeSplit,
    baseline: Any,
    baseline_proba: np.ndarray,
    feature_params: dict[str, Any],
    seed_feature_params: dict[str, Any],
) -> _Shipped:
    """The chosen configuration, fitted and calibrated; the seed baseline instead when the
    choice is the seed's or loses to it on the holdout on either ROC-AUC or PR-AUC."""
    y_holdout = split.holdout[LABEL].to_numpy()
    if selection.is_seed(config):
        model, proba = _seed_model(baseline, seed_split)
        return _Shipped(
            config, selection.columns_for(config, all_features), model, proba, seed_split, seed_feature_params
        )
    features = selection.columns_for(config, all_features)
    estimator, _ = fit_candidate(config, features, split.fit, split.calibration)
    model = calibrate(estimator, split.calibration, features)
    proba = model.predict_proba(split.holdout[features])[:, 1]
    reference = selection.ranking_scores(y_holdout, baseline_proba)
    chosen = selection.ranking_scores(y_holdout, proba)
    if selection.not_worse(chosen, reference, roc="roc_auc", pr="pr_auc"):
        return _Shipped(config, features, model, proba, split, feature_params)
    note = (
        f"{config['model']} lost to the seed baseline on the holdout (ROC-AUC {chosen['roc_auc']:.4f} vs "
        f"{reference['roc_auc']:.4f}, PR-AUC {chosen['pr_auc']:.4f} vs {reference['pr_auc']:.4f}); "
        "the seed baseline is shipped instead"
    )
    model, proba = _seed_model(baseline, seed_split)
    return _Shipped(dict(SEED_CONFIG), list(SEED_FEATURES), model, proba, seed_split, seed_feature_params, [note])


@dataclass
class _ActiveScore:
    """The active model on the candidate's holdout: who it is, and its figures if it could be scored."""

    info: tuple[str, Path, str] | None = None
    metrics: dict[str, Any] | None = None
    proba: np.ndarray | None = None
    unscorable: str | None = None
    notes: list[str] = field(default_factory=list)


def _score_active(session_factory: sessionmaker[Session], holdout: pd.DataFrame, threshold: float) -> _ActiveScore:
    with session_scope(session_factory) as session:
        current = registry.active(session)
        info = (current.version, Path(current.artifact_path), current.artifact_sha256) if current else None
    if info is None:
        return _ActiveScore()
    try:
        artifact = registry.load_artifact(info[1], info[2])
        proba = artifact["estimator"].predict_proba(holdout[artifact["feature_columns"]])[:, 1]
    except (ArtifactIntegrityError, KeyError) as exc:
        return _ActiveScore(
            info, unscorable=f"{info[0]}: {exc}", notes=[f"active model {info[0]} could not be scored: {exc}"]
        )
    metrics = classification_metrics(holdout[LABEL].to_numpy(), proba, threshold)
    return _ActiveScore(info, metrics, proba)


def begin_rollout(settings: Settings, session: Session, version: str, *, mode: str, by: str, reason: str) -> str:
    """Put ``version``, which passed the gate, into shadow or canary; a challenger still in
    progress is aborted first (superseded: the new one was trained on newer data)."""
    from conflict_core import rollout

    other = rollout.challenger(session)
    if other is not None:
        rollout.abort(session, other.version, by=by, reason=f"superseded by {version}")
    gate = f"passed the gate: {reason}"
    if mode == "shadow":
        rollout.start_shadow(session, version, by=by, reason=gate)
    elif mode == "canary":
        rollout.start_canary(session, version, settings.rollout_canary_percent, by=by, reason=gate)
    else:
        raise ValueError(f"rollout mode must be 'activate', 'shadow' or 'canary', got {mode!r}")
    return mode


def _aligned_split(frame: pd.DataFrame, split: TimeSplit) -> TimeSplit:
    """``frame`` (the same events, other feature parameters) cut exactly where ``split`` was."""
    by_event = frame.set_index("event_id")
    parts = []
    for part in (split.fit, split.calibration, split.holdout):
        missing = part["event_id"][~part["event_id"].isin(by_event.index)]
        if len(missing):
            raise TrainingDataError(
                f"the seed training set lacks {len(missing)} events of the training set (e.g. {missing.iloc[0]!r}); "
                "both must be extracted from the same events and window"
            )
        parts.append(by_event.loc[part["event_id"]].reset_index())
    return TimeSplit(fit=parts[0], calibration=parts[1], holdout=parts[2])


def _seed_model(baseline: Any, split: Any) -> tuple[Any, np.ndarray]:
    """The seed baseline as a shippable model: Platt-calibrated, so its ranking is unchanged."""
    model = calibrate(baseline, split.calibration, list(SEED_FEATURES), method="sigmoid")
    return model, model.predict_proba(split.holdout[list(SEED_FEATURES)])[:, 1]


def _rows_and_span(part: pd.DataFrame) -> str:
    return f"{len(part)} ({part['synced_at'].min()} … {part['synced_at'].max()})"


def _importances(model: Any, holdout: pd.DataFrame, features: list[str], max_rows: int = 20_000) -> dict[str, float]:
    sample = holdout.sample(min(max_rows, len(holdout)), random_state=0)
    result = permutation_importance(
        model, sample[features], sample[LABEL], scoring="average_precision", n_repeats=3, random_state=0, n_jobs=1
    )
    return {name: float(value) for name, value in zip(features, result.importances_mean, strict=True)}
