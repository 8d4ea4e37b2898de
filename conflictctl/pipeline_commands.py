"""``conflictctl run``: the whole product on the embedded defaults, end to end."""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from conflictctl.context import AppContext, pass_app, progress_bar


def _step(title: str) -> None:
    click.secho(f"\n== {title}", bold=True)


@dataclass(frozen=True)
class RunPlan:
    """What ``conflictctl run`` simulates, trains and replays."""

    users: int
    entities: int
    days: int
    seed: int
    num_samples: int
    dashboard_port: int
    live_hours: float
    lifecycle: bool
    keep_serving: bool
    verbose: bool


@dataclass(frozen=True)
class SimulatedDay:
    live: Any  # the live day's events (a pyarrow table in the import format)
    live_start: dt.datetime
    data_end: dt.datetime


def logged_feature_parity(engine: Any) -> tuple[int, int]:
    """How many logged predictions carry exactly the features the offline definitions give.

    Recomputes, from the store's events, the features of every synced event a prediction was
    logged for (by its sync id), as the extraction job would, and compares them with the
    features the online lookup served. Returns ``(identical, compared)``.
    """
    import numpy as np
    import pandas as pd
    from sqlalchemy import select

    from conflict_core.events.store_reads import load_events
    from conflict_core.features import ALL_FEATURES, TARGET_COLUMNS, compute_features
    from conflict_core.store import PredictionLog

    with engine.connect() as connection:
        logged = connection.execute(
            select(PredictionLog.sync_id, PredictionLog.features).where(
                PredictionLog.sync_id.is_not(None), PredictionLog.fallback_reason.is_(None)
            )
        ).all()
    online = pd.DataFrame([features for _, features in logged], columns=list(ALL_FEATURES))
    online.insert(0, "sync_id", [sync_id for sync_id, _ in logged])
    events = load_events(engine)
    targets = events[events["event_id"].isin(online["sync_id"])]
    offline = compute_features(events, targets[list(TARGET_COLUMNS)])
    offline.insert(0, "sync_id", targets["event_id"].tolist())
    # A sync may have been predicted more than once (a re-run); each prediction is compared.
    paired = online.merge(offline, on="sync_id", suffixes=("_online", ""), validate="many_to_one")
    same = np.isclose(
        paired[[f"{name}_online" for name in ALL_FEATURES]].to_numpy(dtype=float),
        paired[list(ALL_FEATURES)].to_numpy(dtype=float),
        rtol=0,
        atol=1e-9,
    )
    return int(same.all(axis=1).sum()), len(paired)


def _fmt(value: object, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


@click.command("run")
@click.option("--users", type=int, default=200, show_default=True)
@click.option("--entities", type=int, default=2000, show_default=True)
@click.option("--days", type=int, default=90, show_default=True, help="days of history before the live day")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--num-samples", type=int, default=8, show_default=True, help="sweep size of the training jobs")
@click.option("--dashboard-port", type=int, default=8265, show_default=True)
@click.option(
    "--live-hours",
    type=click.FloatRange(0, 24, min_open=True),
    default=24.0,
    show_default=True,
    help="how much of the live day devices replay through the app (from its midnight); the rest is "
    "recorded without a prediction",
)
@click.option(
    "--lifecycle/--no-lifecycle",
    default=True,
    show_default=True,
    help="after serving: track outcomes and retrain on simulated time",
)
@click.option(
    "--keep-serving/--no-keep-serving",
    default=None,
    help="keep the app up until Ctrl-C at the end (default: when run from a terminal)",
)
@click.option("--verbose", is_flag=True, help="stream every Ray Job's log here (each is always kept in a file)")
@pass_app
def run_command(app: AppContext, keep_serving: bool | None, **options: Any) -> None:
    """The product end to end on a simulated sync server.

    Simulates ``days`` days of history and one live day after them; imports and exports the
    history; extracts features and trains as Ray Jobs; serves the model on 127.0.0.1:8000;
    replays the live day through it (predict each push, then record its outcome). Then, on
    simulated time, the lifecycle: outcome tracking as it would run 25 hours later, and the
    weekly retrain, whose gate decides whether the new model replaces the live one.
    """
    plan = RunPlan(keep_serving=keep_serving if keep_serving is not None else sys.stdin.isatty(), **options)
    started = time.perf_counter()
    from conflict_core import db

    _step(f"store: {app.settings.database_url}")
    db.upgrade(app.settings.database_url)
    day = _simulate_history(app, plan)
    results = _jobs_and_serving(app, plan, day)
    _step("online/offline feature parity")
    identical, compared = logged_feature_parity(app.engine)
    click.echo(
        f"{identical:,} of {compared:,} live predictions were served exactly the features the extraction "
        "job computes for the same syncs"
    )
    _summary(app, results)
    click.echo(f"done in {time.perf_counter() - started:.0f} s")


def _simulate_history(app: AppContext, plan: RunPlan) -> SimulatedDay:
    """Simulate the history and the live day; import and export the history."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from conflict_core.events.export import export_events
    from conflict_core.events.store_writes import import_events
    from conflict_core.simulator import SimulationConfig, simulate

    settings = app.settings
    data_end = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    live_start = data_end - dt.timedelta(days=1)
    _step(
        f"simulate {plan.days} days of sync history and a live day "
        f"({plan.users} users, {plan.entities} entities, seed {plan.seed})"
    )
    config = SimulationConfig(
        users=plan.users,
        entities=plan.entities,
        days=plan.days + 1,
        seed=plan.seed,
        start=data_end - dt.timedelta(days=plan.days + 1),
    )
    with progress_bar(None, "simulating", "events") as bar:
        table = simulate(config, progress=lambda n: bar.update(n - bar.n))
    is_live = pc.greater_equal(table["synced_at"], pc.cast(live_start, table.schema.field("synced_at").type))
    history, live = table.filter(pc.invert(is_live)), table.filter(is_live)
    simulated = settings.data_dir.resolve() / "simulated" / f"sync_events_seed{plan.seed}.parquet"
    simulated.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(history, simulated)
    click.echo(
        f"{history.num_rows:,} events of history written to {simulated}; "
        f"{live.num_rows:,} events on the live day {live_start:%Y-%m-%d}"
    )

    _step("import the history into the store (idempotent on event id)")
    with progress_bar(history.num_rows, "importing") as bar:
        imported = import_events(app.session_factory, simulated, progress=bar.update)
    click.echo(f"{imported.inserted:,} inserted, {imported.skipped_existing:,} already there")

    _step("export date-partitioned Parquet")
    with progress_bar(None, "exporting") as bar:
        exported = export_events(app.engine, settings.events_dir, until=live_start, progress=bar.update)
    click.echo(f"{exported.rows:,} events in {len(exported.partitions)} partitions under {exported.out_dir}")
    return SimulatedDay(live=live, live_start=live_start, data_end=data_end)


def _job_runner(app: AppContext, plan: RunPlan, dashboard: str) -> Callable[..., dict[str, Any]]:
    """Runs one of the product's Ray Jobs: its log to a file (streamed here with ``--verbose``),
    a spinner with its latest line meanwhile, then its headline and where its log is."""
    from ray_control.jobs import run_job

    settings = app.settings
    logs_dir = settings.data_dir.resolve() / "logs" / "jobs"
    common = [
        "--database-url",
        settings.database_url,
        "--data-dir",
        str(settings.data_dir.resolve()),
        "--serve-config",
        str(settings.serve_config_path.resolve()),
    ]

    def run(module: str, args: list[str], runtime_env: dict[str, Any] | None = None) -> dict[str, Any]:
        with progress_bar(None, module, "lines") as bar:

            def follow(line: str) -> None:
                if plan.verbose:
                    click.echo(line)
                bar.update(1)
                bar.set_postfix_str(line.split("] ", 1)[-1][:70], refresh=False)

            result = run_job(
                dashboard, module, [*common, *args], logs_dir=logs_dir, echo=follow, runtime_env=runtime_env
            )
        click.echo(f"{result.summary.get('headline', 'done')}  (log: {result.log_path})")
        return result.summary

    return run


def _jobs_and_serving(app: AppContext, plan: RunPlan, day: SimulatedDay) -> dict[str, Any]:
    """Extract, train, serve and replay the live day, then the lifecycle on simulated time."""
    from conflict_core import serve_config
    from conflictctl.console_access import PREDICTION_APP, echo_console_login, fill_console_args, issue_run_tokens
    from conflictctl.serve_commands import echo_traffic
    from conflictctl.traffic import replay_events
    from ray_control.instance import local_ray, serve_env
    from ray_control.serve_deploy import deploy_config, load_config, wait_until_running

    settings = app.settings
    results: dict[str, Any] = {}
    run_tokens = results["tokens"] = issue_run_tokens(app)
    with local_ray(dashboard_port=plan.dashboard_port, env=serve_env(settings.serve_ingress_mode)) as dashboard:
        run = _job_runner(app, plan, dashboard)
        _step(f"Ray Job: extract features (dashboard {dashboard})")
        results["extraction"] = run("jobs.extract_features", ["--days-back", str(plan.days)])

        _step("Ray Job: train with a Ray Tune sweep, calibrate, register, gate")
        results["training"] = run("jobs.train", ["--num-samples", str(plan.num_samples)])

        live_config = serve_config.ensure_live(settings.serve_config_template, settings.serve_config_path)
        _step(f"Ray Serve: deploy {live_config} on 127.0.0.1:8000")
        deployed = load_config(live_config, settings.database_url)
        # The replay compresses a day into seconds: half a second of refresh lag would hide
        # minutes of simulated syncs from the features, so the app tails the store per batch.
        # Each push is predicted as of its own instant on that past day: the replicas keep
        # enough history beyond the lookback to answer all of them from memory.
        replayed_since = dt.datetime.now(dt.UTC) - day.live_start
        for application in deployed["applications"]:
            if application["import_path"] == PREDICTION_APP:
                application["args"]["feature_refresh_interval_s"] = 0
                application["args"]["feature_window_margin_s"] = replayed_since.total_seconds() + 3600
        fill_console_args(deployed, settings)
        deploy_config(deployed)
        wait_until_running()
        echo_console_login(settings, run_tokens)
        replay_until = day.live_start + dt.timedelta(hours=plan.live_hours)
        click.echo(
            f"serving at {settings.serve_url}; devices replay the live day until {replay_until:%Y-%m-%d %H:%M} UTC "
            "(predict each push as of its instant, then record its outcome)"
        )
        report = replay_events(settings.serve_url, day.live, until=replay_until, token=run_tokens.client)
        echo_traffic(report)
        click.echo(
            f"{report['pushes']:,} pushes, {report['recorded_without_prediction']:,} events after "
            f"{replay_until:%Y-%m-%d %H:%M} UTC recorded without a prediction"
        )
        results["replay"] = report

        if plan.lifecycle:
            # The app flushes its prediction log asynchronously; give it a moment to land.
            time.sleep(2.0)
            tracked_at = dt.datetime.now(dt.UTC) + dt.timedelta(hours=25)
            _step(f"Ray Job: outcome tracking as of {tracked_at:%Y-%m-%d %H:%M} UTC (simulated clock, +25 h)")
            results["tracking"] = run("jobs.track_outcomes", ["--now", tracked_at.isoformat()])

            _step(f"Ray Job: weekly retrain on the data up to {day.data_end:%Y-%m-%d %H:%M} UTC, beside the live app")
            # The app holds most of the two cores' logical CPUs; the retrain's tasks take small shares.
            results["retraining"] = run(
                "jobs.retrain",
                ["--now", day.data_end.isoformat(), "--num-samples", str(plan.num_samples)],
                runtime_env={"env_vars": {"CONFLICT_JOB_TASK_CPUS": "0.25"}},
            )

        if plan.keep_serving:
            click.echo(f"serving at {settings.serve_url} until Ctrl-C")
            echo_console_login(settings, run_tokens)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        from ray import serve

        serve.shutdown()
    return results


def _summary(app: AppContext, results: dict[str, Any]) -> None:
    from conflict_core import registry

    _step("summary")
    with app.session_factory() as session:
        active = registry.active(session)
    extraction, training, report = results["extraction"], results["training"], results["replay"]
    holdout, baseline = training["holdout"], training["seed_baseline_holdout"]
    click.echo(
        f"training set     {extraction['rows']:,} rows, conflict rate {extraction['positive_rate']:.2%}, "
        f"{extraction['events_per_second']:,} events/s"
    )
    click.echo(f"model            {training['version']} ({training['algorithm']}), gate: {training['gate_reason']}")
    click.echo(
        f"holdout          ROC-AUC {holdout['roc_auc']:.4f}  PR-AUC {holdout['pr_auc']:.4f}  "
        f"Brier {holdout['brier']:.4f}  ECE {holdout['ece']:.4f}"
    )
    click.echo(
        f"seed baseline    ROC-AUC {baseline['roc_auc']:.4f}  PR-AUC {baseline['pr_auc']:.4f}  "
        f"Brier {baseline['brier']:.4f}  ECE {baseline['ece']:.4f}"
    )
    click.echo(f"report           {Path(training['report_path'])}")
    click.echo(
        f"live day         {report['requests']:.0f} pushes predicted ({report['predictions']:.0f} items), "
        f"p50 {report['p50_ms']:.0f} ms, p95 {report['p95_ms']:.0f} ms, "
        f"fallback rate {report['fallback_rate']:.1%}, errors {report['errors']:.0f}"
    )
    tracking = results.get("tracking")
    if tracking is not None:
        m = tracking["metrics"]
        q = m.get("model") or {}
        psi = (m.get("drift") or {}).get("psi") or {}
        click.echo(
            f"outcomes         {tracking['labelled']:,} labelled ({tracking['by_sync_id']:,} by sync id, "
            f"{tracking['by_nearest']:,} by nearest sync, {tracking['no_sync']:,} without a sync), "
            f"{tracking['conflicts']:,} conflicts"
        )
        click.echo(
            f"live metrics     accuracy {_fmt(m.get('accuracy'))}  precision {_fmt(q.get('precision'))}  "
            f"recall {_fmt(q.get('recall'))}  PR-AUC {_fmt(q.get('pr_auc'))}  Brier {_fmt(q.get('brier'))}  "
            f"ECE {_fmt(q.get('ece'))}  fallback rate {_fmt(m.get('fallback_rate'), '.1%')}"
        )
        if psi:
            click.echo("feature drift    PSI " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(psi.items())))
        click.echo(f"alerts firing    {', '.join(tracking['alerts_firing']) or 'none'}")
    retraining = results.get("retraining")
    if retraining is not None:
        click.echo(
            f"retrain          {retraining['version']}: "
            + (
                f"put in {retraining['rollout_stage']} beside the active model"
                if retraining.get("rollout_stage")
                else "activated"
                if retraining["activated"]
                else "kept as a candidate"
            )
            + f" ({retraining['gate_reason']})"
        )
    click.echo(f"active model     {active.version if active else 'none (heuristics answer)'}")
    console = app.settings.serve_url.rstrip("/") + "/admin/"
    click.echo(
        f"console          {console} while the app runs (--keep-serving, or conflictctl serve-up); "
        "log in with this admin token:"
    )
    click.echo(f"                 {results['tokens'].admin}")


COMMANDS = [run_command]
