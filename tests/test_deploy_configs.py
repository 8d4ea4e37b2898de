"""The scale-path deployment files stay in step with the local serve_config.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ray.serve.schema import ServeDeploySchema

REPO = Path(__file__).resolve().parents[1]


def _graph(config: dict[str, Any]) -> dict[str, Any]:
    """What must match: each application's import path, arguments and deployment names."""
    return {
        app["name"]: (app["import_path"], sorted(app.get("args", {})), [d["name"] for d in app["deployments"]])
        for app in config["applications"]
    }


def test_the_kuberay_rayservice_deploys_the_same_graph_as_serve_config() -> None:
    local = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    service = yaml.safe_load((REPO / "configs" / "kuberay-rayservice.yaml").read_text())
    assert service["kind"] == "RayService"
    cluster = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(cluster)  # a valid Serve config, as the operator needs
    assert _graph(cluster) == _graph(local)
    for app in cluster["applications"]:
        for deployment in app["deployments"]:
            assert deployment["max_ongoing_requests"] > 5, deployment["name"]  # never the router-starving default
            assert deployment["autoscaling_config"]["max_replicas"] >= deployment["autoscaling_config"]["min_replicas"]
    inference = next(d for d in cluster["applications"][0]["deployments"] if d["name"] == "ModelInference")
    assert set(inference["user_config"]) >= {"model_version", "artifact_path", "artifact_sha256"}
    # A head Pod restart must not take the app down: the GCS keeps its state in Redis.
    assert service["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]["redisAddress"]


def test_cluster_yaml_starts_ray_from_the_project_virtualenv() -> None:
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    assert cluster["head_node_type"] in cluster["available_node_types"]
    for command in cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]:
        assert "ray " not in command or "/app/.venv/bin/ray" in command
