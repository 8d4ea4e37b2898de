"""Serving commands: bring the graph up, ask it for a prediction, drive simulated traffic."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import click
import httpx

from conflictctl import traffic as traffic_module
from conflictctl.context import AppContext, pass_app


@click.command("serve-up")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Default: the live config (settings.serve_config_path), made from the template on first use.",
)
@click.option(
    "--wait/--no-wait",
    default=True,
    help="Keep serving until Ctrl-C (default), or return once running (only onto a running cluster, "
    "settings.ray_address: a Ray instance this command starts stops when it returns).",
)
@pass_app
def serve_up(app: AppContext, config_path: str | None, wait: bool) -> None:
    """Start (or join) Ray and deploy serve_config.yaml; the app listens on 127.0.0.1:8000.

    Without ``settings.ray_address`` it starts a local Ray instance with its dashboard on
    ``settings.dashboard_url`` (loopback), so ``conflictctl models activate`` and the retrain
    job can re-deploy the running app from another terminal.
    """
    from urllib.parse import urlsplit

    from ray import serve

    from conflict_core import serve_config
    from ray_control.instance import local_ray, serve_env
    from ray_control.serve_deploy import deploy_config, load_config, wait_until_running

    address = app.settings.ray_address
    if not wait and not address:
        raise click.UsageError(
            "--no-wait needs a running Ray cluster to deploy onto (set CONFLICT_RAY_ADDRESS, e.g. after "
            "'ray start --head'): the local Ray instance this command would start stops when it returns"
        )
    settings = app.settings
    path = (
        Path(config_path)
        if config_path
        else serve_config.ensure_live(settings.serve_config_template, settings.serve_config_path)
    )
    config = load_config(path, app.settings.database_url)
    from conflictctl.console_access import fill_console_args

    fill_console_args(config, app.settings)
    ray_instance: contextlib.AbstractContextManager[str]
    if address:
        import ray

        ray.init(address=address, ignore_reinit_error=True)
        ray_instance = contextlib.nullcontext(f"the Ray cluster at {address}")
    else:
        port = urlsplit(app.settings.dashboard_url).port or 8265
        ray_instance = local_ray(dashboard_port=port, env=serve_env(app.settings.serve_ingress_mode))
    with ray_instance as where:
        try:
            deploy_config(config)
            wait_until_running()
            click.echo(f"serving {path} at {app.settings.serve_url} (Ray: {where})")
            if wait:
                _serve_until_interrupted()
        finally:
            if wait:  # --no-wait leaves the app running on the cluster it joined
                serve.shutdown()


def _serve_until_interrupted() -> None:
    """Block until Ctrl-C or SIGTERM (as ``serve run`` stops), so the caller shuts Serve down cleanly."""
    import signal

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    click.echo("Ctrl-C (or SIGTERM) to stop")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.command("predict")
@click.option("--user-id", required=True)
@click.option("--device-id", required=True)
@click.option("--entity-type", required=True)
@click.option("--entity-id", required=True)
@click.option("--field", "fields", multiple=True, required=True, help="A changed field (repeatable).")
@click.option("--sync-id")
@pass_app
def predict(
    app: AppContext,
    user_id: str,
    device_id: str,
    entity_type: str,
    entity_id: str,
    fields: tuple[str, ...],
    sync_id: str | None,
) -> None:
    """Ask the running app for the conflict risk of one pending sync."""
    item: dict[str, Any] = {
        "user_id": user_id,
        "device_id": device_id,
        "entity_type": entity_type,
        "entity_id": entity_id,
        "changed_fields": list(fields),
    }
    if sync_id:
        item["sync_id"] = sync_id
    from conflictctl.client_auth import bearer_headers, client_token

    with client_token(app, ["predict"], "conflictctl predict") as token:
        url = app.settings.serve_url.rstrip("/") + "/v1/predict"
        response = httpx.post(url, json=item, headers=bearer_headers(token), timeout=10)
    click.echo(json.dumps(response.json(), indent=2))
    if response.status_code >= 400:
        raise SystemExit(1)


def echo_traffic(report: dict[str, float]) -> None:
    click.echo(
        f"requests {report['requests']:.0f}  predictions {report['predictions']:.0f}  errors {report['errors']:.0f}"
    )
    click.echo(
        f"predict latency ms: p50 {report['p50_ms']:.1f}  p95 {report['p95_ms']:.1f}  p99 {report['p99_ms']:.1f}"
    )
    click.echo(f"fallback rate {report['fallback_rate']:.1%}")


@click.command("traffic")
@click.option("--seconds", default=20.0, show_default=True)
@click.option("--users", default=50, show_default=True)
@click.option("--entities", default=200, show_default=True)
@click.option("--conflict-rate", default=0.1, show_default=True)
@pass_app
def traffic(app: AppContext, seconds: float, users: int, entities: int, conflict_rate: float) -> None:
    """Simulated clients: predict, sync, record the result; then print latency and fallback rate."""
    from conflictctl.client_auth import client_token

    with client_token(app, ["predict", "record"], "conflictctl traffic") as token:
        report = traffic_module.drive_traffic(
            app.settings.serve_url,
            seconds=seconds,
            users=[f"u{i:04d}" for i in range(1, users + 1)],
            entities=[f"task-{i:06d}" for i in range(entities)],
            conflict_rate=conflict_rate,
            token=token,
        )
    echo_traffic(report)


COMMANDS = [serve_up, predict, traffic]
