"""``serve_config.yaml``: the deployable description of the prediction app.

The active model lives in the ``ModelInference`` deployment's ``user_config``, so that
re-deploying after an activation reconfigures the running replicas in place
(``reconfigure()``) instead of restarting them.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml

from conflict_core.errors import ConfigurationError

INFERENCE_DEPLOYMENT = "ModelInference"
SERVE_API = "/api/serve/applications/"


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


def set_model(path: Path, *, version: str | None, artifact_path: str | None, artifact_sha256: str | None) -> dict[str, Any]:
    """Point the inference deployment at a model (``None`` everywhere: no model) and save atomically.

    The file is edited round-trip, so its comments and key order survive.
    """
    import io

    from ruamel.yaml import YAML

    read(path)  # refuse a file that is not a Serve config before touching it
    round_trip = YAML()
    round_trip.preserve_quotes = True
    document = round_trip.load(path.read_text())
    user_config = inference_user_config(document)
    user_config.update(model_version=version, artifact_path=artifact_path, artifact_sha256=artifact_sha256)
    buffer = io.StringIO()
    round_trip.dump(document, buffer)
    _write_atomically(path, buffer.getvalue())
    return read(path)


def _write_atomically(path: Path, text: str) -> None:
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def running_applications(dashboard_url: str, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """Serve's view of the cluster at ``dashboard_url``, or ``None`` when nothing answers."""
    try:
        response = httpx.get(dashboard_url.rstrip("/") + SERVE_API, timeout=timeout_s)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    body: dict[str, Any] = response.json()
    return body


def apply(path: Path, dashboard_url: str, timeout_s: float = 30.0) -> bool:
    """Deploy ``path`` to the Serve instance at ``dashboard_url`` (what ``serve deploy`` does).

    Returns ``False`` when no Serve application is running there; raises on a refusal.
    """
    status = running_applications(dashboard_url)
    if not status or not status.get("applications"):
        return False
    config = read(path)
    response = httpx.put(
        dashboard_url.rstrip("/") + SERVE_API,
        content=json.dumps(config),
        headers={"Content-Type": "application/json"},
        timeout=timeout_s,
    )
    if response.status_code >= 400:
        raise ConfigurationError(f"Serve refused the config {path}: HTTP {response.status_code} {response.text[:500]}")
    return True
