"""One training run: training set → sweep → calibrated model → report → registry → gate.

Called by the ``jobs.train`` Ray Job entrypoint and by ``conflictctl train``; everything here
is plain Python except the optional Ray Tune sweep. :func:`train_and_register` runs the
stages in order, each a function of its own: load the data, choose the model, evaluate it on
the holdout, score the active model, gate, write the artifact and the report, register.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.inspection import permutation_importance
from sqlalchemy.orm import Session, sessionmaker

from conflict_core import registry
from conflict_core.decision import cost_thresholds, policy_comparison
from conflict_core.errors import TrainingDataError
from conflict_core.features import ALL_FEATURES, SEED_FEATURES, FeatureParams
from conflict_core.settings import Settings
from conflict_core.store import session_scope
from training import selection, tune
from training.active_model import ActiveScore, holdout_features, score_active
from training.artifact import WrittenArtifact, write_artifact
from training.evaluate import classification_metrics
from training.extract import LABEL, features_of_rows, load_training_set
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
    # With ``defer_decision``: what :func:`carry_out_decision` is to do ("activate", "shadow",
    # "canary"), or None when the gate kept the active model; nothing was activated yet.
    pending: str | None = None

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
    defer_decision: bool = False,
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
    ``defer_decision`` registers the candidate without carrying out the gate's decision: the
    result's ``pending`` names it, and the caller carries it out with :func:`carry_out_decision`
    right before publishing (the retrain does, so that a run killed in between changed nothing
    that is served).
    """
    data = load_data(settings, training_set, seed_training_set)
    version = registry.new_version(now)
    out_dir = settings.models_dir / version
    out_dir.mkdir(parents=True, exist_ok=False)
    split = data.split
    progress(
        f"{len(data.frame)} samples: fit {len(split.fit)}, calibration {len(split.calibration)}, "
        f"holdout {len(split.holdout)}"
    )
    chosen = choose_model(settings, data, version, sweep=sweep, num_samples=num_samples, progress=progress)
    evaluation = evaluate(settings, version, data, chosen)
    active = score_active(session_factory, holdout_features_of(data), evaluation.threshold)
    evaluation.add_active(active)
    decision = gate(settings, evaluation, version, active)
    progress("writing artifact and report")
    artifact = write_model_artifact(out_dir, version, data, chosen, evaluation)
    report_path = write_run_report(out_dir, version, data, chosen, evaluation, decision.reason, feature_search)
    row = registry_row(version, data, chosen, evaluation, artifact, report_path, decision.reason, feature_search)
    # The first model (or one replacing an unscorable active model) is activated, never rolled out.
    rollout = rollout_mode if active.metrics is not None else "activate"
    decided = None if defer_decision else decision
    stage = register_and_decide(settings, session_factory, row, decided, rollout=rollout, activated_by=activated_by)
    pending = rollout if defer_decision and decision.activate else None
    return TrainingResult(
        version=version,
        algorithm=chosen.shipped.config["model"],
        activated=decided is not None and decided.activate and stage is None,
        rollout_stage=stage,
        pending=pending,
        gate_reason=decision.reason,
        holdout=_headline(evaluation.holdout_metrics[version]),
        seed_baseline_holdout=_headline(evaluation.holdout_metrics[SEED_BASELINE]),
        active_before=active.info[0] if active.info else None,
        active_before_holdout=_headline(active.metrics) if active.metrics else None,
        report_path=str(report_path),
        artifact_path=str(artifact.path.resolve()),
        artifact_sha256=artifact.sha256,
        notes=active.notes,
    )


# --------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingData:
    """The training set split in time, and the seed baseline's rows (the same events, cut at the
    same places, with the default feature parameters when a seed training set is given)."""

    frame: pd.DataFrame
    manifest: dict[str, Any]
    split: TimeSplit
    feature_params: dict[str, Any]
    seed_split: TimeSplit
    seed_feature_params: dict[str, Any]


def load_data(settings: Settings, training_set: Path, seed_training_set: Path | None) -> TrainingData:
    """Load and check the training set, split it in time; align the seed training set to it."""
    frame, manifest = load_training_set(training_set)
    check_training_data(frame, min_samples=settings.min_training_samples, min_positives=settings.min_training_positives)
    split = time_split(frame)
    feature_params = _params_of(manifest)
    if seed_training_set is None:
        return TrainingData(frame, manifest, split, feature_params, split, feature_params)
    seed_frame, seed_manifest = load_training_set(seed_training_set)
    return TrainingData(
        frame, manifest, split, feature_params, _aligned_split(seed_frame, split), _params_of(seed_manifest)
    )


def _params_of(manifest: dict[str, Any]) -> dict[str, Any]:
    return dict(manifest.get("feature_params") or asdict(FeatureParams()))


@dataclass
class Chosen:
    """The sweep, the configuration chosen on validation, and the model shipped after the holdout
    check against the seed baseline (fitted on the seed rows, ``baseline_proba`` on the holdout)."""

    sweep: list[tuple[dict[str, Any], dict[str, float]]]
    choice: selection.Choice
    baseline_proba: np.ndarray
    shipped: _Shipped


def choose_model(
    settings: Settings,
    data: TrainingData,
    version: str,
    *,
    sweep: str,
    num_samples: int | None,
    progress: Callable[[str], None],
) -> Chosen:
    """Sweep, choose on validation, and ship the choice unless it loses to the seed baseline."""
    n = num_samples or settings.sweep_num_samples
    progress(f"sweep: {n} configurations ({sweep})")
    results = _sweep(settings, sweep, n, list(ALL_FEATURES), data.split, name=version)
    seed_scores = fit_candidate(SEED_CONFIG, list(SEED_FEATURES), data.seed_split.fit, data.seed_split.calibration)[1]
    choice = selection.choose_on_validation(results, seed_scores)
    progress(f"chosen: {choice.config['model']} (validation PR-AUC {choice.scores[tune.METRIC]:.4f}); {choice.reason}")
    seed_split = data.seed_split
    baseline = seed_baseline().fit(seed_split.train[list(SEED_FEATURES)], seed_split.train[LABEL])
    baseline_proba = baseline.predict_proba(seed_split.holdout[list(SEED_FEATURES)])[:, 1]
    shipped = _never_worse_than_the_seed(
        choice.config,
        list(ALL_FEATURES),
        data.split,
        seed_split,
        baseline,
        baseline_proba,
        data.feature_params,
        data.seed_feature_params,
    )
    for note in shipped.notes:
        progress(note)
    return Chosen(results, choice, baseline_proba, shipped)


@dataclass
class Evaluation:
    """The shipped model and the seed baseline (and the active model, once scored) on the holdout,
    at the cost-aware operating threshold."""

    threshold: float
    decision_policy: dict[str, Any]
    holdout_metrics: dict[str, dict[str, Any]]
    intervals: dict[str, Any]
    scores_by_model: dict[str, np.ndarray]

    def add_active(self, active: ActiveScore) -> None:
        if active.info is not None and active.metrics is not None and active.proba is not None:
            self.holdout_metrics[f"active {active.info[0]}"] = active.metrics
            self.scores_by_model[f"active {active.info[0]}"] = active.proba


def evaluate(settings: Settings, version: str, data: TrainingData, chosen: Chosen) -> Evaluation:
    """Holdout metrics, bootstrap intervals and the cost of the cost-aware thresholds."""
    y_holdout = data.split.holdout[LABEL].to_numpy()
    proba, baseline_proba = chosen.shipped.proba, chosen.baseline_proba
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
    return Evaluation(
        threshold=threshold,
        decision_policy=decision_policy,
        holdout_metrics={
            version: classification_metrics(y_holdout, proba, threshold),
            SEED_BASELINE: classification_metrics(y_holdout, baseline_proba, threshold),
        },
        intervals={
            version: selection.bootstrap_intervals(y_holdout, proba),
            SEED_BASELINE: selection.bootstrap_intervals(y_holdout, baseline_proba),
        },
        scores_by_model={version: proba, "seed baseline": baseline_proba},
    )


def holdout_features_of(data: TrainingData) -> Callable[[FeatureParams], pd.DataFrame]:
    """The holdout rows for any feature parameters: the training or seed set's own when they
    match, else computed anew from the export both were extracted from."""
    computed = {
        FeatureParams(**data.seed_feature_params): data.seed_split.holdout,
        FeatureParams(**data.feature_params): data.split.holdout,
    }
    return holdout_features(computed, lambda params: features_of_rows(data.manifest, data.split.holdout, params))


def gate(settings: Settings, evaluation: Evaluation, version: str, active: ActiveScore) -> registry.GateDecision:
    """The registry's gate on the holdout ROC-AUC of the candidate and of the active model."""
    return registry.gate(
        candidate_roc_auc=evaluation.holdout_metrics[version]["roc_auc"],
        active_roc_auc=active.metrics["roc_auc"] if active.metrics else None,
        min_relative_improvement=settings.gate_min_relative_improvement,
        quality_floor=settings.gate_quality_floor_roc_auc,
        active_unscorable=active.unscorable,
    )


def write_model_artifact(
    out_dir: Path, version: str, data: TrainingData, chosen: Chosen, evaluation: Evaluation
) -> WrittenArtifact:
    """The shipped model's artifact, with the thresholds and feature parameters it serves with."""
    shipped = chosen.shipped
    return write_artifact(
        out_dir,
        version=version,
        model=shipped.model,
        config=shipped.config,
        features=shipped.features,
        train_rows=shipped.split.train,
        feature_params=shipped.feature_params,
        threshold=evaluation.threshold,
        decision_thresholds=evaluation.decision_policy["thresholds"],
        decision_costs=evaluation.decision_policy["costs"],
        training_set=data.manifest["snapshot"],
    )


def write_run_report(
    out_dir: Path,
    version: str,
    data: TrainingData,
    chosen: Chosen,
    evaluation: Evaluation,
    gate_reason: str,
    feature_search: Sequence[ParamsResult] | None,
) -> Path:
    """The report with its plots: holdout metrics, selection, recommendations, searched parameters."""
    shipped, split = chosen.shipped, data.split
    plots = plot_curves(out_dir, split.holdout[LABEL].to_numpy(), evaluation.scores_by_model)
    plots["importances"] = plot_importances(
        out_dir, _importances(shipped.model, shipped.split.holdout, shipped.features)
    )
    split_info = {
        "training set": data.manifest["snapshot"],
        "fit rows (oldest)": _rows_and_span(split.fit),
        "calibration rows": _rows_and_span(split.calibration),
        "holdout rows (newest)": _rows_and_span(split.holdout),
        "conflict rate": f"{data.frame[LABEL].mean():.4f}",
    }
    return write_report(
        out_dir,
        version=version,
        algorithm=shipped.config["model"],
        params=shipped.config,
        holdout_metrics=evaluation.holdout_metrics,
        extra_rows={
            "seed baseline on a stratified random split (leaks the future)": seed_random_split_baseline(data.frame)
        },
        sweep=chosen.sweep,
        plots=plots,
        gate_reason=gate_reason,
        split=split_info,
        sections={
            "Never worse than the seed baseline": selection_section(
                evaluation.holdout_metrics, evaluation.intervals, reason=chosen.choice.reason, notes=shipped.notes
            ),
            "Recommendations (cost-aware thresholds)": decision_section(evaluation.decision_policy),
            **({"Feature parameters (searched)": search_section(feature_search)} if feature_search else {}),
        },
    )


def register_and_decide(
    settings: Settings,
    session_factory: sessionmaker[Session],
    row: dict[str, Any],
    decision: registry.GateDecision | None,
    *,
    rollout: str,
    activated_by: str,
) -> str | None:
    """Register the candidate (``row``: its registry columns) and carry out the gate's decision in
    the same transaction: activate it, or begin its ``rollout`` (``"shadow"`` or ``"canary"``).
    Returns the rollout stage begun, if any. ``decision`` None: register only."""
    with session_scope(session_factory) as session:
        registry.register(session, **row)
        if decision is None or not decision.activate:
            return None
        return _decide(settings, session, row["version"], rollout, by=activated_by, reason=decision.reason)


def _decide(settings: Settings, session: Session, version: str, rollout: str, *, by: str, reason: str) -> str | None:
    """Activate ``version`` (``rollout`` "activate") or begin its rollout; the stage begun, if any."""
    if rollout != "activate":
        return begin_rollout(settings, session, version, mode=rollout, by=by, reason=reason)
    registry.activate(session, version, by=by)
    return None


@dataclass(frozen=True)
class CarriedOut:
    activated: bool
    rollout_stage: str | None
    skipped: str | None = None  # why the pending decision was not carried out


def carry_out_decision(
    settings: Settings,
    session_factory: sessionmaker[Session],
    version: str,
    pending: str,
    *,
    by: str,
    reason: str,
    active_at_gate: str | None,
) -> CarriedOut:
    """Carry out a decision :func:`train_and_register` deferred (``pending``: "activate", "shadow"
    or "canary"), in one transaction. The gate compared the candidate with ``active_at_gate``; if
    another model was activated since (an operator, a rollback), that comparison no longer holds and
    nothing is done."""
    with session_scope(session_factory) as session:
        current = registry.active(session)
        now_active = current.version if current else None
        if now_active != active_at_gate:
            return CarriedOut(
                False,
                None,
                f"the active model changed since the gate compared {version} with it "
                f"({active_at_gate or 'none'} -> {now_active or 'none'}); "
                f"{version} stays registered, its {pending} not done",
            )
        stage = _decide(settings, session, version, pending, by=by, reason=reason)
    return CarriedOut(stage is None, stage)


def registry_row(
    version: str,
    data: TrainingData,
    chosen: Chosen,
    evaluation: Evaluation,
    artifact: WrittenArtifact,
    report_path: Path,
    gate_reason: str,
    feature_search: Sequence[ParamsResult] | None,
) -> dict[str, Any]:
    """The candidate's registry columns: its parameters, holdout figures and files."""
    shipped, split, metrics = chosen.shipped, data.split, evaluation.holdout_metrics
    return {
        "version": version,
        "algorithm": shipped.config["model"],
        "params": {**shipped.config, "feature_params": shipped.feature_params},
        "metrics": {
            "holdout": _headline(metrics[version]),
            "seed_baseline_holdout": _headline(metrics[SEED_BASELINE]),
            "threshold": evaluation.threshold,
            "decision": evaluation.decision_policy,
            "holdout_intervals": evaluation.intervals,
            "holdout_positives": int(split.holdout[LABEL].sum()),
            "selection": {"reason": chosen.choice.reason, "notes": shipped.notes},
            "feature_search": [result.to_dict() for result in feature_search or ()],
            "validation": chosen.choice.scores,
            "feature_means": {c: float(shipped.split.train[c].mean()) for c in shipped.features},
        },
        "feature_columns": shipped.features,
        "train_samples": len(split.train),
        "holdout_samples": len(split.holdout),
        "training_window_start": split.fit["synced_at"].min().to_pydatetime(),
        "training_window_end": split.holdout["synced_at"].max().to_pydatetime(),
        "artifact_path": str(artifact.path.resolve()),
        "artifact_sha256": artifact.sha256,
        "report_path": str(report_path.resolve()),
        "gate_decision": gate_reason,
    }


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
