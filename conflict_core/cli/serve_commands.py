"""Serving commands: bring the graph up, ask it for a prediction, drive simulated traffic."""

from __future__ import annotations

import datetime as dt
import json
import random
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import click
import httpx

from conflict_core.cli.context import AppContext, pass_app


def deploy_config(config: dict[str, Any]) -> None:
    """Deploy a Serve config on the connected Ray instance, as ``serve deploy`` does."""
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location,
                         global_logging_config=schema.logging_config)
    client.deploy_apps(schema)


def load_config(path: Path, database_url: str) -> dict[str, Any]:
    """``serve_config.yaml`` with the store URL filled into each application's arguments."""
    import yaml

    config: dict[str, Any] = yaml.safe_load(path.read_text())
    for application in config["applications"]:
        application.setdefault("args", {}).setdefault("database_url", database_url)
    return config


def wait_until_running(timeout_s: float = 180) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        statuses = {name: a.status for name, a in serve.status().applications.items()}
        if statuses and all(s == "RUNNING" for s in statuses.values()):
            return
        if any(s == "DEPLOY_FAILED" for s in statuses.values()):
            raise click.ClickException(f"deploy failed: {serve.status().applications}")
        time.sleep(1)
    raise click.ClickException(f"the app was not RUNNING within {timeout_s:.0f} s: {serve.status().applications}")


@click.command("serve-up")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), help="Default: settings.serve_config_path.")
@click.option("--wait/--no-wait", default=True, help="Keep serving until Ctrl-C (default) or return once running.")
@pass_app
def serve_up(app: AppContext, config_path: str | None, wait: bool) -> None:
    """Start (or join) Ray and deploy serve_config.yaml; the app listens on 127.0.0.1:8000."""
    import ray
    from ray import serve

    path = Path(config_path or app.settings.serve_config_path)
    config = load_config(path, app.settings.database_url)
    ray.init(address=app.settings.ray_address or "local", include_dashboard=False, ignore_reinit_error=True)
    try:
        deploy_config(config)
        wait_until_running()
        click.echo(f"serving {path} at {app.settings.serve_url}")
        if wait:
            click.echo("Ctrl-C to stop")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if wait:
            serve.shutdown()
            ray.shutdown()


@click.command("predict")
@click.option("--user-id", required=True)
@click.option("--device-id", required=True)
@click.option("--entity-type", required=True)
@click.option("--entity-id", required=True)
@click.option("--field", "fields", multiple=True, required=True, help="A changed field (repeatable).")
@click.option("--sync-id")
@pass_app
def predict(app: AppContext, user_id: str, device_id: str, entity_type: str, entity_id: str,
            fields: tuple[str, ...], sync_id: str | None) -> None:
    """Ask the running app for the conflict risk of one pending sync."""
    item: dict[str, Any] = {"user_id": user_id, "device_id": device_id, "entity_type": entity_type,
                            "entity_id": entity_id, "changed_fields": list(fields)}
    if sync_id:
        item["sync_id"] = sync_id
    response = httpx.post(app.settings.serve_url.rstrip("/") + "/v1/predict", json=item, timeout=10)
    click.echo(json.dumps(response.json(), indent=2))
    if response.status_code >= 400:
        raise SystemExit(1)


def drive_traffic(
    base_url: str, *, seconds: float, users: list[str], entities: list[str], conflict_rate: float, seed: int = 0
) -> dict[str, float]:
    """Simulated clients: predict a pending sync, push it, record its result; returns the tallies."""
    rng = random.Random(seed)
    latencies: list[float] = []
    fallbacks = predictions = errors = 0
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=base_url.rstrip("/"), timeout=10) as client:
        while time.monotonic() < deadline:
            user = rng.choice(users)
            items = [
                {"user_id": user, "device_id": f"{user}-d1", "entity_type": "task",
                 "entity_id": rng.choice(entities), "changed_fields": rng.sample(["title", "status", "notes", "due"], 2),
                 "sync_id": uuid.uuid4().hex}
                for _ in range(rng.choice([1, 1, 1, 5, 20]))
            ]
            started = time.perf_counter()
            response = client.post("/v1/predict", json=items)
            latencies.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                errors += 1
                continue
            for p in response.json()["predictions"]:
                predictions += 1
                fallbacks += "fallback_reason" in p
            now = dt.datetime.now(dt.UTC)
            events = [
                {"event_id": i["sync_id"], "user_id": i["user_id"], "device_id": i["device_id"], "entity_type": "task",
                 "entity_id": i["entity_id"], "changed_fields": i["changed_fields"], "synced_at": now.isoformat(),
                 "conflict": (c := rng.random() < conflict_rate),
                 "resolution_type": "manual_merge" if c else None, "resolved_at": now.isoformat() if c else None}
                for i in items
            ]
            if client.post("/v1/sync-events", json={"events": events}).status_code != 200:
                errors += 1
    if not latencies:
        raise click.ClickException("no request completed")
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"requests": len(latencies), "predictions": predictions, "errors": errors,
            "p50_ms": q[49], "p95_ms": q[94], "p99_ms": q[98], "fallback_rate": fallbacks / max(predictions, 1)}


def echo_traffic(report: dict[str, float]) -> None:
    click.echo(f"requests {report['requests']:.0f}  predictions {report['predictions']:.0f}  errors {report['errors']:.0f}")
    click.echo(f"predict latency ms: p50 {report['p50_ms']:.1f}  p95 {report['p95_ms']:.1f}  p99 {report['p99_ms']:.1f}")
    click.echo(f"fallback rate {report['fallback_rate']:.1%}")


@click.command("traffic")
@click.option("--seconds", default=20.0, show_default=True)
@click.option("--users", default=50, show_default=True)
@click.option("--entities", default=200, show_default=True)
@click.option("--conflict-rate", default=0.1, show_default=True)
@pass_app
def traffic(app: AppContext, seconds: float, users: int, entities: int, conflict_rate: float) -> None:
    """Simulated clients: predict, sync, record the result; then print latency and fallback rate."""
    echo_traffic(drive_traffic(
        app.settings.serve_url, seconds=seconds, users=[f"u{i:04d}" for i in range(1, users + 1)],
        entities=[f"task-{i:06d}" for i in range(entities)], conflict_rate=conflict_rate,
    ))


COMMANDS = [serve_up, predict, traffic]
