"""Offline pipeline and registry commands: ``extract``, ``train``, ``models …``."""

from __future__ import annotations

import json
from typing import Any

import click

from conflictctl.context import AppContext, pass_app, progress_bar


@click.command("extract")
@click.option("--days-back", type=int, help="target window in days (default: settings)")
@click.option("--local", is_flag=True, help="compute in this process instead of Ray tasks")
@pass_app
def extract_command(app: AppContext, days_back: int | None, local: bool) -> None:
    """Compute the training set from exported events (what the jobs.extract_features Ray Job does)."""
    from ray_control.instance import connect
    from training.extract import extract_training_set

    if not local:
        connect(app.settings.ray_address)
    with progress_bar(None, "feature tasks", "tasks") as bar:
        summary = extract_training_set(
            app.settings,
            days_back=days_back,
            use_ray=not local,
            progress=lambda done, total: _advance(bar, done, total),
        )
    click.echo(json.dumps(summary, indent=2, default=str))


def _advance(bar: Any, done: int, total: int) -> None:
    bar.total = total
    bar.update(done - bar.n)


@click.command("train")
@click.option("--num-samples", type=int, help="sweep size (default: settings)")
@click.option("--local-sweep", is_flag=True, help="run the sweep in this process, not on Ray Tune")
@click.option(
    "--search-feature-params",
    is_flag=True,
    help="also search the feature windows: one extraction per candidate, train on the best",
)
@pass_app
def train_command(app: AppContext, num_samples: int | None, local_sweep: bool, search_feature_params: bool) -> None:
    """Train, report and register a model; the gate decides its activation (what the jobs.train Ray Job does)."""
    from conflict_core import db
    from ray_control.instance import connect
    from ray_control.serve_deploy import applier
    from training.publishing import train_and_publish

    db.upgrade(app.settings.database_url)
    if not local_sweep:
        connect(app.settings.ray_address)
    summary = train_and_publish(
        app.settings,
        app.session_factory,
        sweep="local" if local_sweep else "ray",
        num_samples=num_samples,
        activated_by="conflictctl train",
        apply=applier(app.settings.dashboard_url),
        progress=click.echo,
        search_feature_params=search_feature_params,
    )
    click.echo(json.dumps(summary, indent=2, default=str))


@click.group("models")
def models_group() -> None:
    """The model registry: list, inspect, activate, deactivate, roll back."""


@models_group.command("list")
@pass_app
def models_list(app: AppContext) -> None:
    """All versions, newest first."""
    from conflict_core import registry

    with app.session_factory() as session:
        rows = registry.list_versions(session)
    if not rows:
        click.echo("no models registered (run: conflictctl train)")
        return
    header = f"{'version':<18} {'status':<10} {'rollout':<11} {'algorithm':<8} {'ROC-AUC':>8} {'PR-AUC':>8}"
    click.echo(header + "  activated")
    for row in rows:
        holdout = row.metrics.get("holdout", {})
        activated = f"{row.activated_at:%Y-%m-%d %H:%M} by {row.activated_by}" if row.activated_at else ""
        stage = row.rollout_stage + (f" {row.canary_percent:g}%" if row.rollout_stage == "canary" else "")
        click.echo(
            f"{row.version:<18} {row.status + ('*' if row.is_active else ''):<10} {stage:<11} {row.algorithm:<8} "
            f"{holdout.get('roc_auc', float('nan')):>8.4f} {holdout.get('pr_auc', float('nan')):>8.4f}  {activated}"
        )


@models_group.command("show")
@click.argument("version")
@pass_app
def models_show(app: AppContext, version: str) -> None:
    """Everything the registry knows about VERSION."""
    from conflict_core import registry

    with app.session_factory() as session:
        row = registry.get(session, version)
        fields = {c.name: getattr(row, c.name) for c in row.__table__.columns}
    click.echo(json.dumps(fields, indent=2, default=str))


def _publish(app: AppContext, version: str | None) -> None:
    """Publish the registry's active model as it is now, under the live config's lock: a
    concurrent activation may have replaced ``version``, and the config follows the registry."""
    from ray_control.serve_deploy import applier
    from training.activation import publish_current

    published_version, published = publish_current(
        app.settings, app.session_factory, apply=applier(app.settings.dashboard_url)
    )
    if published.serve_config_updated:
        click.echo(
            f"{app.settings.serve_config_path} now serves {published_version or 'the heuristics'}"
            + ("; running app reconfigured" if published.serve_app_reconfigured else "; no running app to reconfigure")
        )


@models_group.command("activate")
@click.argument("version")
@click.option("--by", default="conflictctl", show_default=True, help="who is activating, for the record")
@pass_app
def models_activate(app: AppContext, version: str, by: str) -> None:
    """Make VERSION the only active model (its artifact's sha256 must match)."""
    from conflict_core import registry

    with app.session_factory.begin() as session:
        registry.activate(session, version, by=by)
    click.echo(f"activated {version}")
    _publish(app, version)


@models_group.command("deactivate")
@click.argument("version")
@pass_app
def models_deactivate(app: AppContext, version: str) -> None:
    """Deactivate VERSION; predictions fall back to the heuristics until another activation."""
    from conflict_core import registry

    with app.session_factory.begin() as session:
        registry.deactivate(session, version)
    click.echo(f"deactivated {version}")
    _publish(app, None)


@models_group.command("rollback")
@click.option("--by", default="conflictctl rollback", show_default=True)
@pass_app
def models_rollback(app: AppContext, by: str) -> None:
    """Re-activate the model that was active before the current one."""
    from conflict_core import registry

    with app.session_factory.begin() as session:
        version = registry.rollback(session, by=by).version
    click.echo(f"rolled back to {version}")
    _publish(app, version)


COMMANDS = [extract_command, train_command, models_group]
