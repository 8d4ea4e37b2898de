"""The shipped replica layout survives the loss of one replica and fits a 2-CPU machine."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
REQUEST_PATH = ("Ingress", "FeatureLookup", "ModelInference")
MACHINE_CPUS = 2.0
# What the jobs beside the running app get: a whole CPU, room for four of their tasks at
# `conflictctl run`'s 0.25 CPU each (every extraction task and sweep trial asks for
# `job_task_cpus`), so the weekly retrain does not crawl beside the app.
JOB_TASK_CPUS = 1.0


def _config() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((REPO / "serve_config.yaml").read_text())  # type: ignore[no-any-return]


def _deployments() -> dict[str, dict]:  # type: ignore[type-arg]
    return {d["name"]: d for d in _config()["applications"][0]["deployments"]}


def test_every_deployment_on_the_request_path_keeps_two_replicas() -> None:
    deployments = _deployments()
    for name in REQUEST_PATH:
        assert deployments[name]["autoscaling_config"]["min_replicas"] >= 2, name


def test_the_layout_at_its_maximum_leaves_a_whole_cpu_for_the_jobs() -> None:
    total = sum(  # every application's replicas: the prediction app's and the console's
        d["autoscaling_config"]["max_replicas"] * d["ray_actor_options"]["num_cpus"]
        for application in _config()["applications"]
        for d in application["deployments"]
    )
    assert total + JOB_TASK_CPUS <= MACHINE_CPUS, total
