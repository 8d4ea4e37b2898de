"""Serve configs: the committed template and the live copy that holds the active model.

``serve_config.yaml`` in the repository is the template (``settings.serve_config_template``):
what ``serve deploy`` and ``conflictctl`` start from, never written. The live config
(``settings.serve_config_path``, ``<data_dir>/serve_config.yaml`` by default) is a copy of it
made on first use; activation writes the model (and a rollout step the challenger, under
``challenger``) into its ``ModelInference`` deployment's ``user_config``, so that re-deploying
it reconfigures the running replicas in place (``reconfigure()``) instead of restarting them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from conflict_core.atomic import write_text_atomically
from conflict_core.errors import ConfigurationError
from conflict_core.rollout import Serving

INFERENCE_DEPLOYMENT = "ModelInference"
CHALLENGER_KEY = "challenger"  # user_config: {model_version, artifact_path, artifact_sha256, mode, percent}


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

    A challenger that is this very version is dropped (it has just become the champion); any
    other challenger stays. The file is edited round-trip, so its comments and key order survive.
    """

    def change(user_config: dict[str, Any]) -> None:
        user_config.update(model_version=version, artifact_path=artifact_path, artifact_sha256=artifact_sha256)
        challenger = user_config.get(CHALLENGER_KEY)
        if isinstance(challenger, dict) and challenger.get("model_version") in (version, None):
            user_config[CHALLENGER_KEY] = None

    return _edit_user_config(path, change)


def set_serving(path: Path, serving: Serving) -> dict[str, Any]:
    """Write the champion and the challenger (or none) of ``serving`` into the inference ``user_config``."""
    champion = serving.champion

    def change(user_config: dict[str, Any]) -> None:
        user_config.update(
            model_version=champion.version if champion else None,
            artifact_path=champion.artifact_path if champion else None,
            artifact_sha256=champion.artifact_sha256 if champion else None,
        )
        user_config[CHALLENGER_KEY] = serving.challenger_config()

    return _edit_user_config(path, change)


def _edit_user_config(path: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Apply ``change`` to the inference ``user_config`` of the file at ``path``, saved atomically."""
    import io

    from ruamel.yaml import YAML

    read(path)  # refuse a file that is not a Serve config before touching it
    round_trip = YAML()
    round_trip.width = 4096  # keep long values (paths, checksums) on their key's line
    round_trip.preserve_quotes = True
    document = round_trip.load(path.read_text())
    change(inference_user_config(document))
    buffer = io.StringIO()
    round_trip.dump(document, buffer)
    write_text_atomically(path, buffer.getvalue())
    return read(path)
