"""``conflictctl models rollout-simulate``: a rollout on simulated time, in one process, no Ray.

A scratch store, three synthetic models and an hourly stream of traffic. Each hour the app's
serving code (:class:`serve_app.inference.Variants`, configured from the registry as the
serve config would be) scores the traffic, every prediction is logged with its variant as the
ingress logs it, and the syncs that follow are recorded; every 6 hours outcome tracking links
the matured outcomes and the rollout decisions run (:func:`training.outcomes.track_outcomes`).

1. a deliberately worse candidate answers 30 % of users (canary) and is aborted on its live
   outcomes;
2. a better candidate is scored in shadow and promoted on paired live outcomes;
3. the world changes (another feature drives conflicts), the new champion falls more than
   10 % below its holdout within 24 h of its activation, and it is rolled back with a
   critical alert.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from conflict_core import registry, rollout
from conflict_core.settings import Settings
from conflict_core.store import PredictionLog, RolloutDecision, SyncLog

CHAMPION, WORSE, BETTER = "v_sim_champion", "v_sim_worse", "v_sim_better"
PER_HOUR = 60
USERS = [f"user-{i}" for i in range(400)]
THRESHOLD = 0.3


def world(rng: np.random.Generator, n: int, *, changed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows and whether each sync conflicts: the first feature drives it (changed: the second)."""
    from serve_app.feature_lookup import FEATURE_NAMES

    x = rng.random((n, len(FEATURE_NAMES)))
    driver = x[:, 1] if changed else x[:, 0]
    return x, driver + rng.normal(0, 0.25, n) > 0.85


def synthetic_model(directory: Path, version: str, *, wrong: float, seed: int) -> dict[str, Any]:
    """A logistic regression fitted on labels driven by the first feature mixed, in share ``wrong``,
    with an irrelevant one (0: the truth; 1: only the irrelevant feature). Returns its registry fields."""
    import joblib
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from serve_app.feature_lookup import FEATURE_NAMES

    rng = np.random.default_rng(seed)
    x, _ = world(rng, 3000)
    driver = (1 - wrong) * x[:, 0] + wrong * x[:, 3] + rng.normal(0, 0.1, len(x))
    y = driver > np.quantile(driver, 0.7)
    model = LogisticRegression().fit(pd.DataFrame(x, columns=list(FEATURE_NAMES)), y)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{version}.joblib"
    joblib.dump({"estimator": model, "feature_columns": list(FEATURE_NAMES), "version": version}, path)
    return {"version": version, "artifact_path": str(path), "artifact_sha256": registry.sha256_file(path)}


def register_models(factory: sessionmaker[Session], directory: Path, *, start: dt.datetime) -> None:
    """The champion (active for a month), a worse and a better candidate."""
    from serve_app.feature_lookup import FEATURE_NAMES

    for version, wrong, seed in ((CHAMPION, 0.5, 1), (WORSE, 1.0, 2), (BETTER, 0.0, 3)):
        fields = synthetic_model(directory, version, wrong=wrong, seed=seed)
        with factory.begin() as session:
            registry.register(
                session,
                **fields,
                algorithm="logreg",
                params={"wrong": wrong},
                metrics={"holdout": {"accuracy": 0.85, "pr_auc": 0.7, "roc_auc": 0.9}, "threshold": THRESHOLD},
                feature_columns=list(FEATURE_NAMES),
                train_samples=3000,
                holdout_samples=600,
                training_window_start=start - dt.timedelta(days=90),
                training_window_end=start - dt.timedelta(days=30),
            )
    with factory.begin() as session:
        registry.activate(session, CHAMPION, by="rollout-simulate", now=start - dt.timedelta(days=30))


def serve_hour(
    factory: sessionmaker[Session], at: dt.datetime, rng: np.random.Generator, *, changed: bool
) -> dict[str, int]:
    """One hour of traffic served as the registry says; returns rows per variant."""
    from serve_app.inference import Variants

    with factory() as session:
        serving = rollout.serving(session)
    champion = serving.champion
    if champion is None:
        raise RuntimeError("the simulation lost its active model")
    variants = Variants()
    variants.configure(
        {
            "model_version": champion.version,
            "artifact_path": champion.artifact_path,
            "artifact_sha256": champion.artifact_sha256,
            "challenger": serving.challenger_config(),
        }
    )
    x, conflicts = world(rng, PER_HOUR, changed=changed)
    users = [USERS[i] for i in rng.integers(0, len(USERS), PER_HOUR)]
    answer = variants.predict(x, users)
    canary, shadow = answer.get("challenger_rows"), answer.get("shadow_probabilities")
    counts = {"champion": 0, "challenger": 0, "shadow": 0 if shadow is None else PER_HOUR}
    with factory.begin() as session:
        for i in range(PER_HOUR):
            created = at + dt.timedelta(seconds=int(i * 3600 / PER_HOUR))
            event = f"sim-{uuid.uuid4().hex}"
            by_challenger = canary is not None and bool(canary[i])
            counts["challenger" if by_challenger else "champion"] += 1
            probability = float(answer["probabilities"][i])
            session.add(
                SyncLog(
                    event_id=event,
                    user_id=users[i],
                    device_id="d",
                    entity_type="task",
                    entity_id=f"t-{event}",
                    changed_fields=["status"],
                    synced_at=created + dt.timedelta(minutes=5),
                    conflict=bool(conflicts[i]),
                )
            )
            session.add(
                PredictionLog(
                    prediction_id=uuid.uuid4().hex,
                    model_version=answer["challenger_version"] if by_challenger else answer["model_version"],
                    sync_id=event,
                    user_id=users[i],
                    device_id="d",
                    entity_type="task",
                    entity_id=f"t-{event}",
                    predicted_conflict=probability >= 0.5,
                    probability=probability,
                    risk_level="high" if probability >= 0.5 else "low",
                    recommendation="warn_user" if probability >= 0.5 else "sync_now",
                    features={},
                    variant="challenger" if by_challenger else "champion",
                    challenger_version=answer.get("challenger_version") if shadow is not None else None,
                    challenger_probability=None if shadow is None else float(shadow[i]),
                    created_at=created,
                )
            )
    return counts


@dataclass
class Phase:
    name: str
    started: dt.datetime
    ended: dt.datetime | None = None
    served: dict[str, int] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)


def run_phase(
    settings: Settings,
    factory: sessionmaker[Session],
    phase: Phase,
    *,
    hours: int,
    done: Callable[[], bool],
    changed: bool = False,
    notify: Any = None,
) -> dt.datetime:
    """Serve hour by hour, tracking outcomes every 6 h, until ``done()`` or ``hours`` have passed."""
    from training.outcomes import track_outcomes

    rng = np.random.default_rng(phase.started.toordinal() + len(phase.name))
    at = phase.started
    for hour in range(hours):
        for variant, count in serve_hour(factory, at, rng, changed=changed).items():
            phase.served[variant] = phase.served.get(variant, 0) + count
        at = phase.started + dt.timedelta(hours=hour + 1)
        if (hour + 1) % 6 == 0:
            summary = track_outcomes(settings, factory, now=at, notify=notify)
            phase.decisions += [{"at": at.isoformat(), **d} for d in summary.rollout.get("decisions", [])]
            if done():
                break
    phase.ended = at
    return at


def stage_of(factory: sessionmaker[Session], version: str) -> str:
    with factory() as session:
        return registry.get(session, version).rollout_stage


def simulate_rollout(
    settings: Settings,
    factory: sessionmaker[Session],
    *,
    start: dt.datetime,
    models_dir: Path,
    notify: Any = None,
    max_hours: int = 96,
) -> list[Phase]:
    """The three phases of the module doc on a migrated, empty store; returns what each did."""
    register_models(factory, models_dir, start=start)
    phases = []

    canary = Phase(f"{WORSE} in canary at 30 %", start)
    with factory.begin() as session:
        rollout.start_canary(session, WORSE, 30, by="rollout-simulate", now=start)
    at = run_phase(
        settings, factory, canary, hours=max_hours, done=lambda: stage_of(factory, WORSE) != "canary", notify=notify
    )
    phases.append(canary)

    shadow = Phase(f"{BETTER} in shadow", at)
    with factory.begin() as session:
        rollout.start_shadow(session, BETTER, by="rollout-simulate", now=at)
    at = run_phase(
        settings, factory, shadow, hours=max_hours, done=lambda: stage_of(factory, BETTER) != "shadow", notify=notify
    )
    phases.append(shadow)

    changed = Phase(f"{BETTER} active; conflicts now driven by another feature", at)
    run_phase(
        settings,
        factory,
        changed,
        hours=max_hours,
        changed=True,
        done=lambda: stage_of(factory, BETTER) != "active",
        notify=notify,
    )
    phases.append(changed)
    return phases


def final_decisions(factory: sessionmaker[Session]) -> list[RolloutDecision]:
    with factory() as session:
        return list(session.scalars(select(RolloutDecision).order_by(RolloutDecision.id)))
