"""``conflictctl run``: the whole product on the embedded defaults, end to end."""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

import click

from conflict_core.cli.context import AppContext, pass_app, progress_bar


def _step(title: str) -> None:
    click.secho(f"\n== {title}", bold=True)


@click.command("run")
@click.option("--users", type=int, default=200, show_default=True)
@click.option("--entities", type=int, default=2000, show_default=True)
@click.option("--days", type=int, default=90, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--num-samples", type=int, default=8, show_default=True, help="sweep size of the training job")
@click.option("--dashboard-port", type=int, default=8265, show_default=True)
@click.option("--traffic-seconds", type=float, default=20.0, show_default=True, help="simulated client burst")
@click.option("--keep-serving/--no-keep-serving", default=None,
              help="keep the app up until Ctrl-C at the end (default: when run from a terminal)")
@pass_app
def run_command(
    app: AppContext, users: int, entities: int, days: int, seed: int, num_samples: int, dashboard_port: int,
    traffic_seconds: float, keep_serving: bool | None,
) -> None:
    """Migrate, simulate, import, export; extract and train as Ray Jobs; serve the model; drive traffic."""
    from conflict_core import db, registry
    from conflict_core.cli.ray_jobs import (
        job_summary,
        local_ray,
        module_entrypoint,
        submit_and_wait,
    )
    from conflict_core.events_io import export_events, import_events
    from conflict_core.simulator import SimulationConfig, simulate

    settings = app.settings
    started = time.perf_counter()
    data_dir = settings.data_dir.resolve()
    job_args = ["--database-url", settings.database_url, "--data-dir", str(data_dir),
                "--serve-config", str(settings.serve_config_path.resolve())]

    _step(f"store: {settings.database_url}")
    db.upgrade(settings.database_url)

    _step(f"simulate {days} days of sync history ({users} users, {entities} entities, seed {seed})")
    import pyarrow.parquet as pq

    end = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    config = SimulationConfig(users=users, entities=entities, days=days, seed=seed, start=end - dt.timedelta(days=days))
    with progress_bar(None, "simulating", "events") as bar:
        table = simulate(config, progress=lambda n: bar.update(n - bar.n))
    simulated = data_dir / "simulated" / f"sync_events_seed{seed}.parquet"
    simulated.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, simulated)
    click.echo(f"{table.num_rows:,} events written to {simulated}")

    _step("import into the store (idempotent on event id)")
    with progress_bar(table.num_rows, "importing") as bar:
        imported = import_events(app.session_factory, simulated, progress=bar.update)
    click.echo(f"{imported.inserted:,} inserted, {imported.skipped_existing:,} already there")

    _step("export date-partitioned Parquet")
    with progress_bar(None, "exporting") as bar:
        exported = export_events(app.engine, settings.events_dir, progress=bar.update)
    click.echo(f"{exported.rows:,} events in {len(exported.partitions)} partitions under {exported.out_dir}")

    with local_ray(dashboard_port=dashboard_port) as dashboard:
        _step(f"Ray Job: extract features (dashboard {dashboard})")
        logs = submit_and_wait(
            dashboard, module_entrypoint("jobs.extract_features", [*job_args, "--days-back", str(days)]),
            echo=click.echo,
        )
        extraction = job_summary(logs)

        _step("Ray Job: train with a Ray Tune sweep, calibrate, register, gate")
        logs = submit_and_wait(
            dashboard,
            module_entrypoint("jobs.train", [*job_args, "--num-samples", str(num_samples)]),
            echo=click.echo,
        )
        training = job_summary(logs)

        _step(f"Ray Serve: deploy {settings.serve_config_path} on 127.0.0.1:8000")
        from conflict_core.cli.serve_commands import (
            deploy_config,
            drive_traffic,
            echo_traffic,
            load_config,
            wait_until_running,
        )

        deploy_config(load_config(settings.serve_config_path, settings.database_url))
        wait_until_running()
        users_seen = sorted(set(table["user_id"].to_pylist()))
        tasks = sorted({e for t, e in zip(table["entity_type"].to_pylist(), table["entity_id"].to_pylist(), strict=True) if t == "task"})
        click.echo(f"serving at {settings.serve_url}; {traffic_seconds:.0f} s of simulated clients (predict → sync → record)")
        report = drive_traffic(settings.serve_url, seconds=traffic_seconds, users=users_seen, entities=tasks[:500],
                               conflict_rate=0.06, seed=seed)
        echo_traffic(report)
        if keep_serving if keep_serving is not None else sys.stdin.isatty():
            click.echo(f"serving {training['version']} at {settings.serve_url} until Ctrl-C")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        from ray import serve

        serve.shutdown()

    _step("summary")
    with app.session_factory() as session:
        active = registry.active(session)
    holdout, baseline = training["holdout"], training["seed_baseline_holdout"]
    click.echo(f"training set     {extraction['rows']:,} rows, conflict rate {extraction['positive_rate']:.2%}, "
               f"{extraction['events_per_second']:,} events/s")
    click.echo(f"model            {training['version']} ({training['algorithm']}), gate: {training['gate_reason']}")
    click.echo(f"holdout          ROC-AUC {holdout['roc_auc']:.4f}  PR-AUC {holdout['pr_auc']:.4f}  "
               f"Brier {holdout['brier']:.4f}  ECE {holdout['ece']:.4f}")
    click.echo(f"seed baseline    ROC-AUC {baseline['roc_auc']:.4f}  PR-AUC {baseline['pr_auc']:.4f}  "
               f"Brier {baseline['brier']:.4f}  ECE {baseline['ece']:.4f}")
    click.echo(f"active model     {active.version if active else 'none (heuristics answer)'}")
    click.echo(f"report           {Path(training['report_path'])}")
    click.echo(f"live traffic     {report['requests']:.0f} requests, p50 {report['p50_ms']:.0f} ms, "
               f"p95 {report['p95_ms']:.0f} ms, fallback rate {report['fallback_rate']:.1%}, errors {report['errors']:.0f}")
    click.echo(f"done in {time.perf_counter() - started:.0f} s")


COMMANDS = [run_command]
