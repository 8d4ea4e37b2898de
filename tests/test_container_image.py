"""The container image the deployment configs name is the one the Dockerfile builds.

``docker build`` needs an engine this test does not assume; it checks the contract instead:
the base image's Ray and Python match the project's, the image runs as a non-root user, and
every config (cluster.yaml, the KubeRay RayService, the CronJobs) names that image, its
/app work directory and /app/.venv, and entrypoints (modules, the Serve import path) that
exist in what the Dockerfile copies.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
IMAGE_NAME = "conflict-predictor"


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def instructions(name: str) -> list[str]:
    return [args for instruction, args in dockerfile() if instruction == name]


def config_texts() -> dict[str, str]:
    return {
        "cluster.yaml": (REPO / "cluster.yaml").read_text(),
        "kuberay": (REPO / "configs" / "kuberay-rayservice.yaml").read_text(),
        "cronjobs": (REPO / "configs" / "k8s-cronjobs.yaml").read_text(),
    }


def containers(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if "image" in node and "name" in node:
            found.append(node)
        for value in node.values():
            found += containers(value)
    elif isinstance(node, list):
        for value in node:
            found += containers(value)
    return found


def test_the_base_image_is_ray_2_60_on_the_projects_python() -> None:
    (base,) = instructions("FROM")
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)", base)
    assert match, base
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == f">={match[2]}.{match[3]},<{match[2]}.{int(match[3]) + 1}"
    ray_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("ray["))
    assert f">={match[1].rsplit('.', 1)[0]}" in ray_pin
    lock = (REPO / "requirements.lock").read_text().splitlines()
    assert f"ray=={match[1]}" in lock  # the image's Ray and the virtualenv's Ray are one version
    kuberay = yaml.safe_load(config_texts()["kuberay"])
    assert kuberay["spec"]["rayClusterConfig"]["rayVersion"] == match[1]


def test_it_installs_the_locked_dependencies_and_runs_as_a_non_root_user() -> None:
    runs = " ".join(instructions("RUN"))
    assert "python -m venv /app/.venv" in runs
    assert "-r requirements.lock" in runs
    assert instructions("WORKDIR") == ["/app"]
    assert instructions("USER")[-1] not in ("root", "0")
    env = " ".join(instructions("ENV"))
    assert "PATH=/app/.venv/bin:$PATH" in env
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[a-z0-9._-]+==[\w.+!-]+", line), line
    names = {line.split("==")[0] for line in (REPO / "requirements.lock").read_text().splitlines() if "==" in line}
    assert not names & {"pytest", "mypy", "ruff", "schemathesis", "hypothesis"}  # no dev tools in the image


def copied_paths() -> set[str]:
    paths: set[str] = set()
    for args in instructions("COPY"):
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            paths.add(source.strip("./"))
    return paths


def test_every_config_names_the_image_its_workdir_and_virtualenv() -> None:
    images: set[str] = set()
    cluster = yaml.safe_load(config_texts()["cluster.yaml"])
    images.add(cluster["docker"]["image"])
    for name in ("kuberay", "cronjobs"):
        for document in yaml.safe_load_all(config_texts()[name]):
            for container in containers(document):
                images.add(container["image"])
                assert container.get("workingDir") == "/app", (name, container["name"])
    assert len(images) == 1, images
    (image,) = images
    assert image.rsplit(":", 1)[0].rsplit("/", 1)[-1] == IMAGE_NAME
    assert f"{IMAGE_NAME}:" in (REPO / "Dockerfile").read_text()  # the build command names it
    for name, text in config_texts().items():
        for binary in re.findall(r"/app/\.venv/bin/(\w+)", text):
            assert binary in ("python", "ray"), (name, binary)  # what the virtualenv provides


def test_every_entrypoint_the_configs_run_exists_in_the_image() -> None:
    copied = copied_paths()
    modules: set[str] = set()
    for text in config_texts().values():
        # The project's own modules (``python -m pip`` is the virtualenv's pip).
        modules |= {m for m in re.findall(r"python -m ([\w.]+)", text) if m != "pip"}
    assert {"jobs.track_outcomes", "jobs.retrain", "jobs.retention"} <= modules
    service = yaml.safe_load(config_texts()["kuberay"])
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    import_paths = [app["import_path"] for app in serve["applications"]]
    for import_path in import_paths:
        module, attribute = import_path.split(":")
        modules.add(module)
        tree = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())
        assert attribute in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, import_path
    for module in modules:
        path = REPO / (module.replace(".", "/") + ".py")
        assert path.is_file(), f"{module}: no {path.relative_to(REPO)}"
        assert module.split(".")[0] in copied, f"{module}: its package is not copied into the image"
        if module.startswith("jobs."):
            assert "__main__" in path.read_text(), f"{module} cannot run with python -m"
