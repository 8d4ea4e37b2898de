"""Lifecycle commands: outcome tracking, monitoring, retraining, retention and the scheduler."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import click

from conflictctl.context import AppContext, pass_app


class UTCTimestamp(click.ParamType):
    name = "timestamp"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dt.datetime:
        if isinstance(value, dt.datetime):
            return value
        try:
            parsed = dt.datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"expected an ISO 8601 timestamp, got {value!r}", param, ctx)
        if parsed.tzinfo is None:
            self.fail(f"timestamp {value!r} has no offset; add Z for UTC", param, ctx)
        return parsed.astimezone(dt.UTC)


NOW_OPTION = click.option("--now", type=UTCTimestamp(), help="The run's instant, for simulated time (default: now).")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("n/a" if value is None else str(value))


@click.group("outcomes")
def outcomes_group() -> None:
    """Link logged predictions to the real outcomes of their syncs."""


@outcomes_group.command("track")
@NOW_OPTION
@click.option("--min-age-hours", type=float, help="Youngest prediction to label (default: setting, 24).")
@click.option("--max-age-hours", type=float, help="Oldest prediction to label (default: setting, 30).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole summary as JSON.")
@pass_app
def outcomes_track(
    app: AppContext, now: dt.datetime | None, min_age_hours: float | None, max_age_hours: float | None, as_json: bool
) -> None:
    """Label matured predictions, compute the rolling metrics and raise alerts (in-process)."""
    from training.outcomes import track_outcomes

    ages: dict[str, Any] = {
        k: dt.timedelta(hours=v) for k, v in (("min_age", min_age_hours), ("max_age", max_age_hours)) if v is not None
    }
    summary = track_outcomes(app.settings, app.session_factory, now=now, **ages)
    if summary.rollout.get("serving_changed"):
        from conflictctl.rollout_commands import publish

        publish(app)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2, default=str))
        return
    click.echo(f"predictions {summary.window_start} … {summary.window_end}: {summary.candidates} to label")
    click.echo(
        f"  linked by sync id {summary.by_sync_id}, by nearest sync {summary.by_nearest}, "
        f"no sync {summary.no_sync}; {summary.conflicts} conflicted"
    )
    _print_metrics(summary.metrics)
    for decision in summary.rollout.get("decisions", []):
        click.echo(f"rollout: {decision['action']} {decision['version']}: {decision['reason']}")
    click.echo(
        f"alerts firing: {', '.join(summary.alerts_firing) or 'none'}"
        + (f" (new: {', '.join(summary.alerts_fired)})" if summary.alerts_fired else "")
    )


def _print_metrics(metrics: dict[str, Any]) -> None:
    model, holdout = metrics.get("model") or {}, metrics.get("holdout") or {}
    click.echo(
        f"7-day: {metrics.get('predictions')} predictions, {metrics.get('labelled')} labelled, "
        f"accuracy {_fmt(metrics.get('accuracy'))}, fallback rate {_fmt(metrics.get('fallback_rate'))}"
    )
    click.echo(
        f"model {metrics.get('model_version') or '(none active)'} at threshold {_fmt(model.get('threshold'))}: "
        f"{model.get('labelled', 0)} labelled, {model.get('positives', 0)} conflicts"
    )
    for name in ("precision", "recall", "pr_auc", "brier", "ece"):
        click.echo(f"  {name:<10} live {_fmt(model.get(name)):>8}   holdout {_fmt(holdout.get(name)):>8}")
    drift = metrics.get("drift")
    if drift:
        scores = ", ".join(f"{k} {_fmt(v)}" for k, v in sorted(drift.get("psi", {}).items()))
        click.echo(f"drift (PSI over {drift.get('rows')} predictions, vs {drift.get('reference')}): {scores or 'n/a'}")
    else:
        click.echo("drift: no training reference available")


@click.command("monitor")
@click.option("--runs", type=click.IntRange(min=1), default=1, show_default=True, help="How many recent runs to list.")
@click.option("--json", "as_json", is_flag=True, help="Print the latest run and the alert states as JSON.")
@pass_app
def monitor(app: AppContext, runs: int, as_json: bool) -> None:
    """Show the latest monitoring metrics and the alerts currently firing."""
    from training.monitoring import firing_alerts
    from training.outcomes import latest_monitoring_runs

    with app.session_factory() as session:
        recent = latest_monitoring_runs(session, limit=runs)
        firing = firing_alerts(session)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "runs": [
                        {
                            "ran_at": r.ran_at.isoformat(),
                            "model_version": r.model_version,
                            "updated": r.updated_count,
                            "labelled": r.labelled_count,
                            "metrics": r.metrics,
                            "alerts": r.alerts,
                        }
                        for r in recent
                    ],
                    "firing": [
                        {
                            "name": a.name,
                            "since": a.since.isoformat() if a.since else None,
                            "value": a.last_value,
                            "message": a.message,
                        }
                        for a in firing
                    ],
                },
                indent=2,
                default=str,
            )
        )
        return
    if not recent:
        click.echo("no monitoring runs yet; run `conflictctl outcomes track`")
    for run in recent:
        click.echo(f"run at {run.ran_at.isoformat()}: {run.updated_count} updated, {run.labelled_count} labelled")
    if recent:
        _print_metrics(recent[0].metrics)
    click.echo("alerts firing:" + ("" if firing else " none"))
    for alert in firing:
        click.echo(f"  {alert.name} since {alert.since.isoformat() if alert.since else '?'}: {alert.message}")


@click.command("retrain")
@NOW_OPTION
@click.option("--local", is_flag=True, help="Extract and sweep in this process instead of on Ray.")
@click.option("--num-samples", type=click.IntRange(min=1), help="Sweep configurations (default: setting).")
@click.option("--submit", is_flag=True, help="Submit the retrain as a Ray Job instead of running it here.")
@pass_app
def retrain(app: AppContext, now: dt.datetime | None, local: bool, num_samples: int | None, submit: bool) -> None:
    """Run the weekly retrain now: export, extract, train, gate, publish, retention."""
    if submit:
        from conflictctl.scheduler import JobSubmitter, Schedule

        args = [
            *(["--now", now.isoformat()] if now else []),
            *(["--local"] if local else []),
            *(["--num-samples", str(num_samples)] if num_samples else []),
        ]
        sid = JobSubmitter(app.settings).submit(Schedule("retrain", "* * * * *", "jobs.retrain", tuple(args)))
        if sid is None:
            raise click.ClickException(f"could not submit the retrain to {app.settings.dashboard_url}")
        click.echo(f"submitted Ray Job {sid}; follow it with `ray job logs -f {sid}`")
        return
    from ray_control.instance import connect
    from ray_control.serve_deploy import applier
    from training.retrain import retrain as run_retrain

    if not local:
        connect(app.settings.ray_address)
    summary = run_retrain(
        app.settings,
        app.session_factory,
        app.engine,
        now=now,
        use_ray=not local,
        sweep="local" if local else "ray",
        num_samples=num_samples,
        apply=applier(app.settings.dashboard_url),
        progress=click.echo,
    )
    for name, step in summary.steps.items():
        click.echo(f"  {name:<10} {step.get('seconds', 0):>8.1f}s")
    if summary.holdout:
        click.echo("holdout: " + ", ".join(f"{k} {_fmt(v)}" for k, v in summary.holdout.items()))
    click.echo(summary.headline())


@click.command("retention")
@click.option(
    "--days", type=click.IntRange(min=1), help="Keep data written in the last DAYS days (default: setting, 30)."
)
@click.option("--dry-run", is_flag=True, help="List what would be deleted, delete nothing.")
@pass_app
def retention(app: AppContext, days: int | None, dry_run: bool) -> None:
    """Delete event exports, training sets and sweep trials older than the retention period."""
    from training.retention import run_retention_job

    result = run_retention_job(app.settings, app.session_factory, days=days, dry_run=dry_run)
    for path in result.deleted:
        click.echo(f"{'would delete' if dry_run else 'deleted'} {path}")
    click.echo(
        f"{len(result.deleted)} folders, {result.bytes_freed / 1e6:.1f} MB; {result.kept_recent} recent and "
        f"{len(result.kept_protected)} protected kept (cutoff {result.cutoff})"
    )


@click.command("scheduler")
@click.option(
    "--schedules",
    "schedules_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Schedule file (default: configs/schedules.yaml).",
)
@click.option("--print-next", is_flag=True, help="Print the next run times of each job and exit.")
@click.option("--count", type=click.IntRange(min=1), default=3, show_default=True, help="With --print-next: how many.")
@click.option("--from", "from_", type=UTCTimestamp(), help="With --print-next: count from this instant (default: now).")
@pass_app
def scheduler_command(
    app: AppContext, schedules_path: Path | None, print_next: bool, count: int, from_: dt.datetime | None
) -> None:
    """Submit the lifecycle Ray Jobs on their UTC schedules until interrupted."""
    from conflictctl import scheduler

    schedule_file = scheduler.load_schedules(schedules_path or scheduler.DEFAULT_SCHEDULES)
    if print_next:
        after = from_ or dt.datetime.now(dt.UTC)
        for name, times in scheduler.next_run_times(schedule_file.schedules, after=after, count=count).items():
            cron = next(s.cron for s in schedule_file.schedules if s.name == name)
            click.echo(f"{name:<15} {cron:<20} " + "  ".join(t.strftime("%Y-%m-%d %H:%M UTC") for t in times))
        return
    click.echo(
        f"scheduling {len(schedule_file.schedules)} jobs from {schedule_file.path}; "
        f"submitting to {app.settings.dashboard_url} (Ctrl-C to stop)"
    )
    scheduler.run(app.settings, schedule_file)


COMMANDS: list[click.Command] = [outcomes_group, monitor, retrain, retention, scheduler_command]
