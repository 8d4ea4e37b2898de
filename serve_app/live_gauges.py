"""Live model quality per rollout variant, read from the store for the metrics endpoint.

Outcome tracking computes the live metrics (every 6 hours, on matured outcomes) and records
them: the champion's in ``monitoring_run``, both variants' in each rollout decision. The
ingress re-reads them every ``live_metrics_interval_s`` and sets the
``conflict_live_model_metric{variant, model_version, metric}`` gauge, so Prometheus and the
Ray dashboard show them beside the request metrics. Plain Python; one short read-only query
set per interval.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from conflict_core import registry, rollout
from conflict_core.store import MonitoringRun, RolloutDecision

METRICS = ("accuracy", "pr_auc", "roc_auc", "brier", "labelled")
Sample = tuple[dict[str, str], float]


def _samples(variant: str, version: str, quality: dict[str, Any]) -> list[Sample]:
    return [
        ({"variant": variant, "model_version": version, "metric": name}, float(quality[name]))
        for name in METRICS
        if isinstance(quality.get(name), int | float)
    ]


def live_metric_samples(session: Session) -> list[Sample]:
    """The latest live metrics of the champion and of the challenger, as gauge samples."""
    samples: list[Sample] = []
    champion, rival = registry.active(session), rollout.challenger(session)
    if rival is not None:
        decision = session.scalars(
            select(RolloutDecision)
            .where(RolloutDecision.version == rival.version, RolloutDecision.action == "stay")
            .order_by(RolloutDecision.decided_at.desc(), RolloutDecision.id.desc())
            .limit(1)
        ).first()
        if decision is not None:
            samples += _samples("challenger", rival.version, decision.numbers.get("challenger") or {})
            if decision.champion_version:
                samples += _samples("champion", decision.champion_version, decision.numbers.get("champion") or {})
            return samples
    if champion is not None:
        run = session.scalars(
            select(MonitoringRun)
            .where(MonitoringRun.model_version == champion.version)
            .order_by(MonitoringRun.ran_at.desc(), MonitoringRun.id.desc())
            .limit(1)
        ).first()
        if run is not None:
            quality = dict(run.metrics.get("model") or {})
            quality["accuracy"] = run.metrics.get("accuracy")
            samples += _samples("champion", champion.version, quality)
    return samples
