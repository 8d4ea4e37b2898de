"""Re-deploying a new model onto the running app changes only the inference ``user_config``."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from conflict_core import serve_config
from ray_control import serve_deploy

REPO = Path(__file__).resolve().parents[2]


def _file_config() -> dict[str, Any]:
    return serve_config.read(REPO / "serve_config.yaml")


def _running(config: dict[str, Any], **args: Any) -> dict[str, Any]:
    """Serve's status for ``config`` submitted with extra application ``args`` (as ``conflictctl`` does)
    and, since then, the file's FeatureLookup batching edited (the running app keeps its own)."""
    submitted = copy.deepcopy(config["applications"][0])
    submitted["args"] = {**submitted.get("args", {}), **args}
    lookup = next(d for d in submitted["deployments"] if d["name"] == "FeatureLookup")
    lookup["user_config"] = {**lookup.get("user_config", {}), "batch_wait_timeout_s": 0.123}
    return {"applications": {submitted["name"]: {"status": "RUNNING", "deployed_app_config": submitted}}}


def test_the_running_apps_arguments_are_kept_and_only_the_model_changes() -> None:
    on_disk = _file_config()
    status = _running(on_disk, database_url="sqlite:////srv/conflicts.db", feature_refresh_interval_s=0)
    new_model = {"model_version": "v2", "artifact_path": "/models/v2.joblib", "artifact_sha256": "ab" * 32}
    serve_config.inference_user_config(on_disk).update(new_model)

    merged = serve_deploy.redeployable(status, on_disk)

    running_app = status["applications"]["conflict_predictor"]["deployed_app_config"]
    merged_app = merged["applications"][0]
    assert merged_app["args"] == running_app["args"]  # the store URL and refresh the app was started with
    assert serve_config.inference_user_config(merged) == serve_config.inference_user_config(on_disk)
    assert serve_config.inference_user_config(merged)["model_version"] == "v2"
    others = [d for d in merged_app["deployments"] if d["name"] != serve_config.INFERENCE_DEPLOYMENT]
    assert others == [d for d in running_app["deployments"] if d["name"] != serve_config.INFERENCE_DEPLOYMENT]
    lookup = next(d for d in merged_app["deployments"] if d["name"] == "FeatureLookup")
    assert lookup["user_config"]["batch_wait_timeout_s"] == 0.123  # the running app's, not the file's
    assert merged["http_options"] == on_disk["http_options"]
    # The running status is not modified, and the result is a plain, deployable document.
    running_model = serve_config.inference_user_config({"applications": [running_app]})
    assert running_model["model_version"] is None
    yaml.safe_dump(merged)


def test_without_a_submitted_copy_the_file_is_deployed_as_it_is() -> None:
    on_disk = _file_config()
    assert serve_deploy.redeployable({"applications": {}}, on_disk) is on_disk
    no_copy = {"applications": {"conflict_predictor": {"status": "RUNNING", "deployed_app_config": None}}}
    assert serve_deploy.redeployable(no_copy, on_disk) is on_disk


def test_an_application_that_is_not_running_is_left_alone() -> None:
    on_disk = _file_config()
    assert {app["name"] for app in on_disk["applications"]} == {"conflict_predictor", "console"}
    status = _running(on_disk, database_url="sqlite:////srv/conflicts.db")  # the console is not running
    merged = serve_deploy.redeployable(status, on_disk)
    assert [app["name"] for app in merged["applications"]] == ["conflict_predictor"]
    assert merged["applications"][0]["args"]["database_url"] == "sqlite:////srv/conflicts.db"
