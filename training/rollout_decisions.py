"""Rollout decisions on live outcomes: promote or abort the challenger, roll back a bad champion.

Run after each outcome-tracking pass (:func:`training.outcomes.track_outcomes`), so every
decision sees the outcomes matured so far (a prediction is labelled 24–30 h after it was made).

**Challenger** (in shadow or canary). Its live quality is measured against the champion's on
the labelled predictions made since the challenger entered its current stage:

* *shadow*: both models scored the same rows (``prediction_log.probability`` is the champion's,
  ``challenger_probability`` the challenger's), so the comparison is **paired**: a bootstrap
  resamples rows and recomputes both PR-AUCs on the same resample. Pairing removes the
  row-to-row variation both models share, so the interval is much narrower for the same data.
* *canary*: each row was answered by one model only, for disjoint sets of users, so the
  comparison is **unpaired**: each variant's rows are resampled independently (same window,
  same maturity). A shadow phase before the canary therefore decides faster.

It is promoted when each variant has at least ``rollout_min_labelled`` labelled outcomes (and
``rollout_min_positives`` conflicts), its live PR-AUC beats the champion's by more than the
margin (relative, like the activation gate), the bootstrap interval of the PR-AUC difference
lies above zero, and it is not worse on ROC-AUC or Brier score (by more than
:data:`NOT_WORSE_TOLERANCE`). It is aborted at once when the interval lies entirely below
zero (significantly worse), or when it was not promoted within ``rollout_abort_after_hours``;
otherwise it stays.

**Champion**. Within ``rollback_window_hours`` of its activation, the predictions it made in
that window are judged as their outcomes mature: when its live accuracy (at its operating
threshold) or PR-AUC falls more than ``rollback_max_relative_drop`` below its holdout value or
below the previous version's live value (its predictions in the week before the switch), the
previous version is restored, a critical alert fires (log and webhook) and the rollback is
recorded.

Every decision, "stay" and "keep" included, is a ``rollout_decision`` row with its numbers.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from conflict_core import registry, rollout
from conflict_core.settings import Settings
from conflict_core.store import ModelVersion, PredictionLog, utcnow
from training import monitoring

log = logging.getLogger(__name__)

NOT_WORSE_TOLERANCE = {"roc_auc": 0.01, "brier": 0.005}  # absolute slack for "not worse"
PREVIOUS_LIVE_WINDOW = dt.timedelta(days=7)
BY = "rollout-decisions"


# --------------------------------------------------------------------------- live metrics


def live_quality(actual: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, Any]:
    """Accuracy (at ``threshold``), PR-AUC, ROC-AUC and Brier score of one variant's labelled rows."""
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    y = np.asarray(actual, dtype=int)
    p = np.asarray(proba, dtype=float)
    n, positives = len(y), int(y.sum())
    quality: dict[str, Any] = {"labelled": n, "positives": positives, "threshold": threshold}
    if n == 0:
        return quality
    both = 0 < positives < n
    quality.update(
        accuracy=float(((p >= threshold) == (y == 1)).mean()),
        pr_auc=float(average_precision_score(y, p)) if both else None,
        roc_auc=float(roc_auc_score(y, p)) if both else None,
        brier=float(brier_score_loss(y, p)),
    )
    return quality


def _average_precision(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    positives = y.sum()
    if positives == 0 or positives == len(y):
        return float("nan")
    return float(average_precision_score(y, p))


def bootstrap_pr_auc_difference(
    champion: tuple[np.ndarray, np.ndarray],
    challenger: tuple[np.ndarray, np.ndarray],
    *,
    paired: bool,
    resamples: int,
    confidence: float,
    seed: int = 0,
) -> dict[str, float]:
    """PR-AUC(challenger) − PR-AUC(champion) and its percentile bootstrap interval.

    Each side is ``(actual, probability)``. ``paired``: both sides are the same rows (their
    ``actual`` arrays equal), and one resample of row indices serves both; otherwise each side
    is resampled on its own. Resamples with a single class are skipped.
    """
    rng = np.random.default_rng(seed)
    y_a, p_a = (np.asarray(v) for v in champion)
    y_b, p_b = (np.asarray(v) for v in challenger)
    if paired and not np.array_equal(y_a, y_b):
        raise ValueError("a paired bootstrap needs the same rows (identical outcomes) on both sides")
    observed = _average_precision(y_b, p_b) - _average_precision(y_a, p_a)
    differences = []
    for _ in range(resamples):
        rows_a = rng.integers(0, len(y_a), len(y_a))
        rows_b = rows_a if paired else rng.integers(0, len(y_b), len(y_b))
        difference = _average_precision(y_b[rows_b], p_b[rows_b]) - _average_precision(y_a[rows_a], p_a[rows_a])
        if np.isfinite(difference):
            differences.append(difference)
    if not differences:
        return {"difference": observed, "low": float("nan"), "high": float("nan"), "resamples": 0}
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(differences, [tail, 100 - tail])
    return {"difference": observed, "low": float(low), "high": float(high), "resamples": len(differences)}


@dataclass(frozen=True)
class VariantRows:
    """Labelled live rows of both variants of a rollout, over the same window."""

    mode: str
    since: dt.datetime
    champion: pd.DataFrame  # columns: actual, probability
    challenger: pd.DataFrame

    @property
    def paired(self) -> bool:
        return self.mode == rollout.SHADOW


def variant_rows(
    session: Session, *, champion: str, challenger: str, mode: str, since: dt.datetime, until: dt.datetime
) -> VariantRows:
    """The labelled predictions since ``since`` of each variant (see the module doc for the two modes)."""
    p = PredictionLog
    labelled = (p.created_at >= since, p.created_at <= until, p.actual_conflict_occurred.is_not(None))
    columns = ["actual", "probability"]
    if mode == rollout.SHADOW:
        rows = session.execute(
            select(p.actual_conflict_occurred, p.probability, p.challenger_probability).where(
                *labelled,
                p.model_version == champion,
                p.fallback_reason.is_(None),
                p.challenger_version == challenger,
                p.challenger_probability.is_not(None),
            )
        ).all()
        frame = pd.DataFrame(rows, columns=[*columns, "challenger_probability"])
        frame["actual"] = frame["actual"].astype(bool)
        return VariantRows(
            mode,
            since,
            frame[columns],
            frame[["actual", "challenger_probability"]].set_axis(columns, axis=1),
        )

    def answered_by(version: str, variant: str) -> pd.DataFrame:
        rows = session.execute(
            select(p.actual_conflict_occurred, p.probability).where(
                *labelled, p.model_version == version, p.variant == variant, p.fallback_reason.is_(None)
            )
        ).all()
        frame = pd.DataFrame(rows, columns=columns)
        frame["actual"] = frame["actual"].astype(bool)
        return frame

    return VariantRows(mode, since, answered_by(champion, "champion"), answered_by(challenger, "challenger"))


# --------------------------------------------------------------------------- the decisions


@dataclass
class Decision:
    version: str
    action: str  # promote, stay, abort (challenger); rollback, keep (champion)
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)
    serving_changed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _threshold(row: ModelVersion, settings: Settings) -> float:
    return float(row.metrics.get("threshold", settings.risk_medium_threshold))


def judge_challenger(
    settings: Settings, rows: VariantRows, *, threshold: float, started: dt.datetime, now: dt.datetime
) -> tuple[str, str, dict[str, Any]]:
    """``(action, reason, numbers)`` for a challenger, from its rows and the champion's (pure)."""
    champion_q = live_quality(rows.champion["actual"].to_numpy(), rows.champion["probability"].to_numpy(), threshold)
    challenger_q = live_quality(
        rows.challenger["actual"].to_numpy(), rows.challenger["probability"].to_numpy(), threshold
    )
    age_h = (now - started) / dt.timedelta(hours=1)
    numbers: dict[str, Any] = {
        "mode": rows.mode,
        "paired": rows.paired,
        "since": rows.since.isoformat(),
        "hours_in_rollout": round(age_h, 2),
        "champion": champion_q,
        "challenger": challenger_q,
        "margin": settings.rollout_relative_margin,
        "min_labelled": settings.rollout_min_labelled,
    }
    expired = age_h > settings.rollout_abort_after_hours
    expiry = f"not promoted within {settings.rollout_abort_after_hours:g} h of its rollout"
    enough = all(
        q["labelled"] >= settings.rollout_min_labelled and q["positives"] >= settings.rollout_min_positives
        for q in (champion_q, challenger_q)
    ) and all(q.get("pr_auc") is not None for q in (champion_q, challenger_q))
    if not enough:
        counts = (
            f"{challenger_q['labelled']} labelled ({challenger_q['positives']} conflicts) for the challenger, "
            f"{champion_q['labelled']} ({champion_q['positives']}) for the champion; each needs "
            f"{settings.rollout_min_labelled} ({settings.rollout_min_positives})"
        )
        return ("abort", f"{expiry}; {counts}", numbers) if expired else ("stay", counts, numbers)

    interval = bootstrap_pr_auc_difference(
        (rows.champion["actual"].to_numpy(), rows.champion["probability"].to_numpy()),
        (rows.challenger["actual"].to_numpy(), rows.challenger["probability"].to_numpy()),
        paired=rows.paired,
        resamples=settings.rollout_bootstrap_resamples,
        confidence=settings.rollout_confidence,
    )
    numbers["pr_auc_difference"] = interval
    a, b = champion_q["pr_auc"], challenger_q["pr_auc"]
    relative = (b - a) / a if a else float("inf")
    numbers["pr_auc_relative_improvement"] = relative
    worse_roc = (
        challenger_q["roc_auc"] is not None
        and champion_q["roc_auc"] is not None
        and challenger_q["roc_auc"] < champion_q["roc_auc"] - NOT_WORSE_TOLERANCE["roc_auc"]
    )
    worse_brier = challenger_q["brier"] > champion_q["brier"] + NOT_WORSE_TOLERANCE["brier"]
    ci = f"{settings.rollout_confidence:.0%} CI [{interval['low']:+.4f}, {interval['high']:+.4f}]"
    verdict = (
        f"live PR-AUC {b:.4f} vs champion {a:.4f} ({relative:+.1%}, needs more than "
        f"{settings.rollout_relative_margin:+.1%}); difference {interval['difference']:+.4f}, {ci} "
        f"({'paired' if rows.paired else 'unpaired'}, {challenger_q['labelled']}/{champion_q['labelled']} labelled)"
    )
    if interval["high"] < 0:
        return "abort", f"significantly worse: {verdict}", numbers
    if relative > settings.rollout_relative_margin and interval["low"] > 0 and not worse_roc and not worse_brier:
        return "promote", f"better: {verdict}", numbers
    if worse_roc or worse_brier:
        verdict += (
            f"; worse on {'ROC-AUC' if worse_roc else 'Brier'} "
            f"(ROC-AUC {challenger_q['roc_auc']} vs {champion_q['roc_auc']}, "
            f"Brier {challenger_q['brier']:.4f} vs {champion_q['brier']:.4f})"
        )
    return ("abort", f"{expiry}; {verdict}", numbers) if expired else ("stay", f"not yet: {verdict}", numbers)


def judge_champion(
    settings: Settings, live: Mapping[str, Any], references: Mapping[str, Mapping[str, float | None]]
) -> tuple[str, str, dict[str, Any]]:
    """``(action, reason, numbers)``: ``rollback`` when a live metric fell too far below a reference (pure).

    ``references`` maps a source ("holdout", "previous live") to its ``accuracy``/``pr_auc``.
    """
    drop = settings.rollback_max_relative_drop
    numbers: dict[str, Any] = {"live": dict(live), "references": dict(references), "max_relative_drop": drop}
    if live["labelled"] < settings.rollback_min_labelled:
        return (
            "keep",
            f"{live['labelled']} labelled outcomes, {settings.rollback_min_labelled} needed to judge",
            numbers,
        )
    breaches = []
    for source, reference in references.items():
        for metric in ("accuracy", "pr_auc"):
            value, base = live.get(metric), reference.get(metric)
            if value is None or base is None or not np.isfinite(base) or base <= 0:
                continue
            if value < base * (1 - drop):
                breaches.append(f"live {metric} {value:.4f} is {1 - value / base:.1%} below its {source} {base:.4f}")
    numbers["breaches"] = breaches
    if breaches:
        return "rollback", "; ".join(breaches) + f" (limit {drop:.0%})", numbers
    return "keep", f"within {drop:.0%} of its references", numbers


def _champion_live(
    session: Session, row: ModelVersion, *, since: dt.datetime, until: dt.datetime, threshold: float
) -> dict[str, Any]:
    p = PredictionLog
    rows = session.execute(
        select(p.actual_conflict_occurred, p.probability).where(
            p.created_at >= since,
            p.created_at < until,
            p.actual_conflict_occurred.is_not(None),
            p.model_version == row.version,
            p.fallback_reason.is_(None),
            p.variant.is_distinct_from("challenger"),
        )
    ).all()
    frame = pd.DataFrame(rows, columns=["actual", "probability"])
    return live_quality(frame["actual"].astype(bool).to_numpy(), frame["probability"].to_numpy(dtype=float), threshold)


def _record(session: Session, decision: Decision, *, champion: str | None, stage: str, now: dt.datetime) -> None:
    if decision.action in ("stay", "keep"):
        rollout.record(
            session,
            version=decision.version,
            action=decision.action,
            reason=decision.reason,
            by=BY,
            now=now,
            champion_version=champion,
            stage_before=stage,
            stage_after=stage,
            numbers=decision.numbers,
            automatic=True,
        )


def decide_challenger(settings: Settings, session: Session, *, now: dt.datetime) -> Decision | None:
    """Judge the challenger, if any, and carry out the decision (in the caller's transaction)."""
    rival, champion = rollout.challenger(session), registry.active(session)
    if rival is None or champion is None:
        return None
    started = rival.canary_started_at if rival.rollout_stage == rollout.CANARY else rival.shadow_started_at
    started = started or now
    first = min(t for t in (rival.shadow_started_at, rival.canary_started_at, started) if t is not None)
    rows = variant_rows(
        session, champion=champion.version, challenger=rival.version, mode=rival.rollout_stage, since=started, until=now
    )
    action, reason, numbers = judge_challenger(
        settings, rows, threshold=_threshold(rival, settings), started=first, now=now
    )
    decision = Decision(rival.version, action, reason, numbers)
    if action in ("promote", "abort"):
        step = rollout.promote if action == "promote" else rollout.abort
        step(session, rival.version, by=BY, now=now, reason=reason, numbers=numbers, automatic=True)
        decision.serving_changed = True
    else:
        _record(session, decision, champion=champion.version, stage=rival.rollout_stage, now=now)
    log.info("rollout: %s %s: %s", action, rival.version, reason)
    return decision


def decide_champion(
    settings: Settings, session: Session, *, now: dt.datetime, notify: monitoring.Notifier | None = None
) -> Decision | None:
    """Within the rollback window after an activation, judge the active model; roll back if it fell."""
    current = registry.active(session)
    if current is None or current.activated_at is None:
        return None
    window = dt.timedelta(hours=settings.rollback_window_hours)
    judged_until = current.activated_at + window + dt.timedelta(hours=settings.outcome_max_age_hours)
    if now > judged_until:
        return None  # its first day's outcomes have all matured and been judged
    previous = rollout.previous_version(session, current)
    if previous is None:
        return None  # nothing to roll back to
    threshold = _threshold(current, settings)
    live = _champion_live(
        session, current, since=current.activated_at, until=min(now, current.activated_at + window), threshold=threshold
    )
    holdout = current.metrics.get("holdout", {})
    references: dict[str, dict[str, float | None]] = {
        "holdout value": {"accuracy": holdout.get("accuracy"), "pr_auc": holdout.get("pr_auc")}
    }
    previous_live = _champion_live(
        session,
        previous,
        since=current.activated_at - PREVIOUS_LIVE_WINDOW,
        until=current.activated_at,
        threshold=_threshold(previous, settings),
    )
    if previous_live["labelled"] >= settings.rollback_min_labelled:
        references[f"previous version {previous.version}'s live value"] = {
            "accuracy": previous_live.get("accuracy"),
            "pr_auc": previous_live.get("pr_auc"),
        }
    action, reason, numbers = judge_champion(settings, live, references)
    numbers["previous_version"] = previous.version
    numbers["activated_at"] = current.activated_at.isoformat()
    decision = Decision(current.version, action, reason, numbers)
    if action == "rollback":
        bad, restored = rollout.rollback(
            session,
            by=BY,
            now=now,
            reason=f"rolled back to {previous.version}: {reason}",
            numbers=numbers,
            automatic=True,
        )
        decision.serving_changed = True
        message = f"CRITICAL: model {bad.version} rolled back to {restored.version}: {reason}"
        log.critical("%s", message)
        event = monitoring.AlertEvent("model_rolled_back", "firing", live.get("pr_auc"), message, now)
        (notify or monitoring.log_notifier)(event)
    else:
        _record(session, decision, champion=current.version, stage=rollout.ACTIVE, now=now)
    return decision


@dataclass
class RolloutSummary:
    decisions: list[Decision] = field(default_factory=list)

    @property
    def serving_changed(self) -> bool:
        return any(d.serving_changed for d in self.decisions)

    def to_dict(self) -> dict[str, Any]:
        return {"decisions": [d.to_dict() for d in self.decisions], "serving_changed": self.serving_changed}


def decide(
    settings: Settings,
    session_factory: sessionmaker[Session],
    *,
    now: dt.datetime | None = None,
    notify: monitoring.Notifier | None = None,
) -> RolloutSummary:
    """One pass: judge the champion (rollback) first, then the challenger; each in its own transaction.

    Serving is not changed here: when ``serving_changed``, the caller publishes the registry's
    champion and challenger (:func:`training.publishing.publish_registry`).
    """
    now = now or utcnow()
    summary = RolloutSummary()
    with session_factory.begin() as session:
        champion = decide_champion(settings, session, now=now, notify=notify or monitoring.make_notifier(settings))
        if champion is not None:
            summary.decisions.append(champion)
    with session_factory.begin() as session:
        challenger = decide_challenger(settings, session, now=now)
        if challenger is not None:
            summary.decisions.append(challenger)
    return summary
