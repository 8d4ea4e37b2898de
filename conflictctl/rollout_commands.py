"""Rollout commands: ``models rollout VERSION --shadow | --canary PERCENT | --promote | --abort``,
``models rollout-status`` and ``models rollout-decide``.

Each step changes the registry (:mod:`conflict_core.rollout`, one transaction, with its
``rollout_decision`` row), then writes the registry's champion and challenger into the serve
config and re-deploys the running app the way an activation does
(:func:`training.publishing.publish_registry`): replicas reconfigure in place.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import click

from conflictctl.context import AppContext, pass_app


def publish(app: AppContext) -> None:
    """Serve what the registry says now (live serve config, running app), and say what happened."""
    from ray_control.serve_deploy import applier
    from training.publishing import publish_registry

    serving, published = publish_registry(app.settings, app.session_factory, apply=applier(app.settings.dashboard_url))
    if not published.serve_config_updated:
        click.echo(f"the serve config {app.settings.serve_config_path} could not be written; nothing published")
        return
    champion = serving.champion.version if serving.champion else "the heuristics"
    rival = serving.challenger
    challenger = (
        f", challenger {rival.version} in {serving.mode}"
        + (f" at {serving.percent:g}%" if serving.mode == "canary" else "")
        if rival
        else ", no challenger"
    )
    click.echo(
        f"{app.settings.serve_config_path} now serves {champion}{challenger}"
        + ("; running app reconfigured" if published.serve_app_reconfigured else "; no running app to reconfigure")
    )


@click.command("rollout")
@click.argument("version")
@click.option("--shadow", "action", flag_value="shadow", help="Score VERSION beside the active model; never returned.")
@click.option("--canary", "percent", type=float, help="Answer PERCENT % of users (sticky per user) with VERSION.")
@click.option("--promote", "action", flag_value="promote", help="Make the challenger VERSION the active model.")
@click.option("--abort", "action", flag_value="abort", help="Stop the rollout of VERSION.")
@click.option("--reason", default="", help="Why, for the record.")
@click.option("--by", default="conflictctl", show_default=True, help="Who decides, for the record.")
@pass_app
def rollout_command(
    app: AppContext, version: str, action: str | None, percent: float | None, reason: str, by: str
) -> None:
    """Move VERSION through its rollout: exactly one of --shadow, --canary PERCENT, --promote, --abort."""
    from conflict_core import rollout

    if (action is None) == (percent is None):
        raise click.UsageError("give exactly one of --shadow, --canary PERCENT, --promote, --abort")
    with app.session_factory.begin() as session:
        if percent is not None:
            rollout.start_canary(session, version, percent, by=by, reason=reason)
        elif action == "shadow":
            rollout.start_shadow(session, version, by=by, reason=reason)
        elif action == "promote":
            rollout.promote(session, version, by=by, reason=reason)
        else:
            rollout.abort(session, version, by=by, reason=reason)
        stage = rollout.serving(session)
    step = f"canary at {percent:g}%" if percent is not None else action
    click.echo(f"{version}: {step} (champion {stage.champion.version if stage.champion else 'none'})")
    publish(app)


@click.command("rollout-status")
@click.option("--limit", default=10, show_default=True, help="Decisions to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the decisions with their numbers as JSON.")
@pass_app
def rollout_status(app: AppContext, limit: int, as_json: bool) -> None:
    """The champion, the challenger and the latest rollout decisions."""
    from conflict_core import rollout

    with app.session_factory() as session:
        serving = rollout.serving(session)
        rows = rollout.decisions(session, limit=limit)
        decisions = [{c.name: getattr(row, c.name) for c in row.__table__.columns if c.name != "id"} for row in rows]
    if as_json:
        click.echo(json.dumps(decisions, indent=2, default=str))
        return
    click.echo(f"champion   {serving.champion.version if serving.champion else 'none'}")
    if serving.challenger:
        share = f" {serving.percent:g}%" if serving.mode == "canary" else ""
        click.echo(f"challenger {serving.challenger.version} ({serving.mode}{share})")
    else:
        click.echo("challenger none")
    for row in decisions:
        mark = "auto" if row["automatic"] else row["decided_by"]
        click.echo(
            f"{row['decided_at']:%Y-%m-%d %H:%M} {row['action']:<8} {row['version']:<18} [{mark}] {row['reason']}"
        )


@click.command("rollout-decide")
@click.option(
    "--now",
    type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"]),
    help="The decision's instant, for simulated time (UTC when no offset; default: now).",
)
@pass_app
def rollout_decide(app: AppContext, now: dt.datetime | None) -> None:
    """Judge the challenger and the newly active model on the live outcomes linked so far."""
    from training import rollout_decisions

    moment = None if now is None else (now if now.tzinfo else now.replace(tzinfo=dt.UTC))
    summary = rollout_decisions.decide(app.settings, app.session_factory, now=moment)
    if not summary.decisions:
        click.echo("nothing to decide: no challenger and no recent activation")
    for decision in summary.decisions:
        click.echo(f"{decision.action} {decision.version}: {decision.reason}")
    if summary.serving_changed:
        publish(app)


@click.command("rollout-simulate")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Scratch directory for its store and models (default: a new one under data_dir/rollout-simulation).",
)
@click.option("--min-labelled", default=250, show_default=True, help="rollout_min_labelled for the simulation.")
@pass_app
def rollout_simulate(app: AppContext, out: Path | None, min_labelled: int) -> None:
    """Simulated time, no Ray: a worse canary is aborted, a better shadow promoted, then rolled back when it falls."""
    from conflict_core import db
    from conflict_core.store import make_engine, make_session_factory
    from conflictctl import rollout_simulation as sim

    root = out or app.settings.data_dir / "rollout-simulation" / dt.datetime.now(dt.UTC).strftime("%Y%m%d_%H%M%S")
    root.mkdir(parents=True, exist_ok=False)
    settings = app.settings.model_copy(
        update={
            "database_url": f"sqlite:///{(root / 'store.db').resolve()}",
            "data_dir": root,
            "serve_config_path": root / "no-serve-config.yaml",
            "alert_webhook_url": None,
            "rollout_min_labelled": min_labelled,
            "rollback_min_labelled": min_labelled,
        }
    )
    db.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        factory = make_session_factory(engine)
        start = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
        phases = sim.simulate_rollout(settings, factory, start=start, models_dir=root / "models")
        click.echo(f"store {settings.database_url}; {sim.PER_HOUR} predictions per simulated hour")
        for phase in phases:
            hours = ((phase.ended or phase.started) - phase.started) / dt.timedelta(hours=1)
            served = ", ".join(f"{k} {v}" for k, v in phase.served.items() if v)
            click.echo(f"\n== {phase.name}: {hours:.0f} h simulated ({served})")
            for decision in phase.decisions:
                click.echo(
                    f"  {decision['at'][:16]} {decision['action']:<8} {decision['version']}: {decision['reason']}"
                )
        with factory() as session:
            stages = {v: registry_stage(session, v) for v in (sim.CHAMPION, sim.WORSE, sim.BETTER)}
        click.echo("\nfinal stages     " + ", ".join(f"{v} {s}" for v, s in stages.items()))
    finally:
        engine.dispose()


def registry_stage(session: Any, version: str) -> str:
    from conflict_core import registry

    return registry.get(session, version).rollout_stage


MODEL_COMMANDS = [rollout_command, rollout_status, rollout_decide, rollout_simulate]
