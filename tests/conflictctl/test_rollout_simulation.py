"""Rollout on simulated time, without Ray (``conflictctl models rollout-simulate``): the serving
code routes and scores, outcome tracking links the syncs every 6 hours, the decisions follow.

* a deliberately worse candidate in canary is aborted on its live outcomes;
* a better candidate in shadow is promoted on paired outcomes; when the world then changes so
  that it falls more than 10 % below its references within 24 h of its activation, it is
  rolled back to the previous version with a critical alert.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from conflict_core import registry
from conflict_core.settings import Settings
from conflict_core.store import RolloutDecision
from conflictctl import rollout_simulation as sim
from training import monitoring

T0 = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


class Captured:
    def __init__(self) -> None:
        self.events: list[monitoring.AlertEvent] = []

    def __call__(self, event: monitoring.AlertEvent) -> bool:
        self.events.append(event)
        return True


def decisions(factory: sessionmaker[Session], version: str) -> list[RolloutDecision]:
    with factory() as session:
        query = select(RolloutDecision).where(RolloutDecision.version == version).order_by(RolloutDecision.id)
        return list(session.scalars(query))


def test_a_worse_canary_is_aborted_and_a_better_shadow_promoted_then_rolled_back_when_it_falls(
    session_factory: sessionmaker[Session], tmp_path: Path, database_url: str
) -> None:
    settings = Settings(
        database_url=database_url,
        data_dir=tmp_path / "data",
        serve_config_path=tmp_path / "absent.yaml",
        rollout_min_labelled=250,
        rollout_bootstrap_resamples=300,
        rollback_min_labelled=200,
    )
    notify = Captured()
    canary, shadow, changed = sim.simulate_rollout(
        settings, session_factory, start=T0, models_dir=tmp_path / "models", notify=notify, max_hours=72
    )

    # 1. The worse candidate answered ~30 % of users and was aborted as significantly worse.
    assert 0.2 < canary.served["challenger"] / (canary.served["champion"] + canary.served["challenger"]) < 0.4
    assert sim.stage_of(session_factory, sim.WORSE) == "aborted"
    aborted = decisions(session_factory, sim.WORSE)[-1]
    assert aborted.action == "abort" and aborted.automatic and aborted.reason.startswith("significantly worse")
    assert aborted.numbers["paired"] is False and aborted.numbers["pr_auc_difference"]["high"] < 0
    assert aborted.numbers["challenger"]["labelled"] >= 250 and aborted.numbers["champion"]["labelled"] >= 250
    assert canary.ended is not None and canary.ended - T0 < dt.timedelta(hours=72)

    # 2. The better candidate, scored in shadow on every request, was promoted on paired outcomes.
    assert shadow.served["shadow"] == shadow.served["champion"] and shadow.served["challenger"] == 0
    history = [d.action for d in decisions(session_factory, sim.BETTER)]
    assert history[0] == "shadow" and history.count("promote") == 1 and history[-1] == "rollback"
    assert set(history) == {"shadow", "stay", "promote", "keep", "rollback"}
    (promoted,) = [d for d in decisions(session_factory, sim.BETTER) if d.action == "promote"]
    assert promoted.numbers["paired"] is True
    assert promoted.numbers["pr_auc_difference"]["low"] > 0
    assert promoted.numbers["challenger"]["pr_auc"] > promoted.numbers["champion"]["pr_auc"]
    assert promoted.decided_at == shadow.ended

    # 3. Its live quality collapsed within its first day: rolled back, with a critical alert.
    rolled = decisions(session_factory, sim.BETTER)[-1]
    assert rolled.action == "rollback" and rolled.automatic and rolled.champion_version == sim.CHAMPION
    assert rolled.numbers["breaches"] and rolled.decided_at - promoted.decided_at <= dt.timedelta(hours=24 + 30)
    with session_factory() as session:
        active = registry.active(session)
        assert active is not None and active.version == sim.CHAMPION
    assert sim.stage_of(session_factory, sim.BETTER) == "aborted"
    alerts = [e for e in notify.events if e.name == "model_rolled_back"]
    assert len(alerts) == 1 and alerts[0].message.startswith(f"CRITICAL: model {sim.BETTER} rolled back")
