"""``serve_config.yaml``: the deployable description of the prediction app.

The active model lives in the ``ModelInference`` deployment's ``user_config``, so that
re-deploying after an activation reconfigures the running replicas in place
(``reconfigure()``) instead of restarting them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from conflict_core.atomic import write_text_atomically
from conflict_core.errors import ConfigurationError
from conflict_core.ray_dashboard import serve_client

INFERENCE_DEPLOYMENT = "ModelInference"


def read(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigurationError(f"serve config {path} does not exist") from exc
    if not isinstance(config, dict) or not config.get("applications"):
        raise ConfigurationError(f"serve config {path} has no 'applications' list")
    return config


def inference_user_config(config: dict[str, Any]) -> dict[str, Any]:
    """The ``user_config`` mapping of the inference deployment (created if absent)."""
    for app in config["applications"]:
        for deployment in app.get("deployments", []):
            if deployment.get("name") == INFERENCE_DEPLOYMENT:
                user_config: dict[str, Any] = deployment.setdefault("user_config", {})
                return user_config
    raise ConfigurationError(f"serve config has no deployment named {INFERENCE_DEPLOYMENT!r}")


def set_model(
    path: Path, *, version: str | None, artifact_path: str | None, artifact_sha256: str | None
) -> dict[str, Any]:
    """Point the inference deployment at a model (``None`` everywhere: no model) and save atomically.

    The file is edited round-trip, so its comments and key order survive.
    """
    import io

    from ruamel.yaml import YAML

    read(path)  # refuse a file that is not a Serve config before touching it
    round_trip = YAML()
    round_trip.width = 4096  # keep long values (paths, checksums) on their key's line
    round_trip.preserve_quotes = True
    document = round_trip.load(path.read_text())
    user_config = inference_user_config(document)
    user_config.update(model_version=version, artifact_path=artifact_path, artifact_sha256=artifact_sha256)
    buffer = io.StringIO()
    round_trip.dump(document, buffer)
    write_text_atomically(path, buffer.getvalue())
    return read(path)


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
    config = redeployable(status, read(path))
    try:
        serve_client(dashboard_url).deploy_applications(config)
    except RuntimeError as exc:
        raise ConfigurationError(f"Serve refused the config {path}: {exc}") from exc
    return True


def redeployable(status: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """``config``'s model on the running applications' submitted configs (see :func:`apply`).

    ``config`` itself when any of its applications is not running or Serve kept no copy of it.
    """
    running = status.get("applications") or {}
    submitted = []
    for app in config["applications"]:
        deployed = (running.get(app.get("name", "default")) or {}).get("deployed_app_config")
        if not deployed:
            return config
        submitted.append(copy.deepcopy(deployed))
    merged = {key: value for key, value in config.items() if key != "applications"}
    merged["applications"] = submitted
    try:
        target = inference_user_config(merged)
    except ConfigurationError:
        return config
    target.clear()
    target.update(inference_user_config(copy.deepcopy(config)))
    return merged
