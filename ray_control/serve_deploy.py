"""Deploying the prediction app onto a Ray cluster, and putting a new model into a running one.

Plain functions over Ray Serve's Python API (:func:`deploy_config`, for a process connected to
Ray) and the dashboard's REST API (:func:`apply`, from any process). The config files
themselves are :mod:`conflict_core.serve_config`'s.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conflict_core import serve_config
from conflict_core.errors import ConfigurationError, ConflictPredictorError
from ray_control.dashboard import serve_client


class DeployError(ConflictPredictorError):
    """The Serve app failed to deploy or did not come up in time."""


def deploy_config(config: dict[str, Any]) -> None:
    """Deploy a Serve config on the connected Ray instance, as ``serve deploy`` does."""
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
        global_logging_config=schema.logging_config,
    )
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
            raise DeployError(f"deploy failed: {serve.status().applications}")
        time.sleep(1)
    raise DeployError(f"the app was not RUNNING within {timeout_s:.0f} s: {serve.status().applications}")


def running_applications(dashboard_url: str) -> dict[str, Any] | None:
    """Serve's view of the cluster at ``dashboard_url``, or ``None`` when nothing answers."""
    from ray.exceptions import AuthenticationError

    try:
        details: dict[str, Any] = serve_client(dashboard_url).get_serve_details()
    except AuthenticationError as exc:
        raise ConfigurationError(f"the Ray dashboard at {dashboard_url} refused this process: {exc}") from exc
    except (ConnectionError, RuntimeError, OSError):
        return None
    return details


def apply(path: Path, dashboard_url: str) -> bool:
    """Put the model named in ``path`` into the Serve app running at ``dashboard_url``.

    What is deployed is the running app's own config (as submitted, with the arguments it was
    started with, such as the store URL) with only the inference deployment's ``user_config``
    taken from ``path``: Serve then reconfigures the running replicas in place instead of
    restarting the app. With no running config to start from, ``path`` itself is deployed
    (what ``serve deploy`` does). Returns ``False`` when no Serve application is running there;
    raises on a refusal.
    """
    status = running_applications(dashboard_url)
    if not status or not status.get("applications"):
        return False
    config = redeployable(status, serve_config.read(path))
    try:
        serve_client(dashboard_url).deploy_applications(config)
    except RuntimeError as exc:
        raise ConfigurationError(f"Serve refused the config {path}: {exc}") from exc
    return True


def redeployable(status: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """``config``'s model on the running applications' submitted configs (see :func:`apply`).

    Only the applications that run are redeployed (an application of ``config`` that is not
    running, such as a console never started there, stays as it is); ``config`` itself when none
    runs with a copy Serve kept, or the inference deployment's application is not among them.
    """
    running = status.get("applications") or {}
    submitted = []
    for app in config["applications"]:
        deployed = (running.get(app.get("name", "default")) or {}).get("deployed_app_config")
        if deployed:
            submitted.append(copy.deepcopy(deployed))
    if not submitted:
        return config
    merged = {key: value for key, value in config.items() if key != "applications"}
    merged["applications"] = submitted
    try:
        target = serve_config.inference_user_config(merged)
    except ConfigurationError:
        return config
    target.clear()
    target.update(serve_config.inference_user_config(copy.deepcopy(config)))
    return merged


def applier(dashboard_url: str) -> Callable[[Path], bool]:
    """:func:`apply` bound to ``dashboard_url``: the ``apply`` that publishing takes."""

    def apply_to_running_app(path: Path) -> bool:
        return apply(path, dashboard_url)

    return apply_to_running_app
