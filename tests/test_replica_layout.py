"""The shipped replica layout survives the loss of one replica and fits a 2-CPU machine."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
REQUEST_PATH = ("Ingress", "FeatureLookup", "ModelInference")
MACHINE_CPUS = 2.0
JOB_TASK_CPUS = 0.25  # what `conflictctl run` gives each retrain task beside the running app


def _deployments() -> dict[str, dict]:  # type: ignore[type-arg]
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    return {d["name"]: d for d in config["applications"][0]["deployments"]}


def test_every_deployment_on_the_request_path_keeps_two_replicas() -> None:
    deployments = _deployments()
    for name in REQUEST_PATH:
        assert deployments[name]["autoscaling_config"]["min_replicas"] >= 2, name


def test_the_layout_at_its_maximum_leaves_room_for_a_retrain_task() -> None:
    total = sum(
        d["autoscaling_config"]["max_replicas"] * d["ray_actor_options"]["num_cpus"] for d in _deployments().values()
    )
    assert total + JOB_TASK_CPUS <= MACHINE_CPUS, total
