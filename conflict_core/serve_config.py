"""Serve configs: the committed template and the live copy that holds the active model.

``serve_config.yaml`` in the repository is the template (``settings.serve_config_template``):
what ``serve deploy`` and ``conflictctl`` start from, never written. The live config
(``settings.serve_config_path``, ``<data_dir>/serve_config.yaml`` by default) is a copy of it
made on first use; activation writes the model into its ``ModelInference`` deployment's
``user_config``, so that re-deploying it reconfigures the running replicas in place
(``reconfigure()``) instead of restarting them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from conflict_core.atomic import write_text_atomically
from conflict_core.errors import ConfigurationError

INFERENCE_DEPLOYMENT = "ModelInference"


def read(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigurationError(f"serve config {path} does not exist") from exc
    if not isinstance(config, dict) or not config.get("applications"):
        raise ConfigurationError(f"serve config {path} has no 'applications' list")
    return config


def ensure_live(template: Path, live: Path) -> Path:
    """``live``, copied from ``template`` first if it does not exist yet."""
    if not live.is_file():
        read(template)  # refuse a template that is not a Serve config before copying it
        live.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(live, template.read_text())
    return live


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
