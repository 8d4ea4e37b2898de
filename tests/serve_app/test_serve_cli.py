"""The committed ``serve_config.yaml`` through Ray's own CLIs: ``serve run`` and ``serve deploy``.

Both bring the graph up on 127.0.0.1:8000 (the config's port; ``serve run`` of a config file
takes its HTTP options from the file). The store comes from ``DATABASE_URL`` in the
environment of the process that starts Ray, and the model from the store's registry, since
the committed ``user_config`` names none. Each test stops what it started by PID (SIGTERM).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from conflict_core import db, registry
from conflict_core.features import ALL_FEATURES
from conflict_core.store import make_engine, make_session_factory, session_scope
from tests.conftest import grant

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SERVE = str(Path(sys.executable).with_name("serve"))
BASE = "http://127.0.0.1:8000"
TOKEN = "cp_serve-cli-tests-every-scope-0123456789abcdefghij"  # granted in each test's own store
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
ITEM = {"user_id": "u1", "device_id": "d1", "entity_type": "task", "entity_id": "t1", "changed_fields": ["title"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def store(tmp_path: Path) -> str:
    """A migrated SQLite store whose registry has one active model."""
    url = f"sqlite:///{tmp_path / 'conflicts.db'}"
    db.upgrade(url)
    rng = np.random.default_rng(0)
    x = rng.random((200, len(ALL_FEATURES)))
    model = LogisticRegression().fit(x, (x[:, 0] > 0.5).astype(int))
    artifact = tmp_path / "model.joblib"
    joblib.dump({"estimator": model, "feature_columns": list(ALL_FEATURES), "version": "v_cli"}, artifact)
    now = dt.datetime.now(dt.UTC)
    engine = make_engine(url)
    with session_scope(make_session_factory(engine)) as session:
        registry.register(
            session,
            version="v_cli",
            algorithm="logistic_regression",
            params={},
            metrics={},
            feature_columns=list(ALL_FEATURES),
            train_samples=200,
            holdout_samples=0,
            training_window_start=now - dt.timedelta(days=1),
            training_window_end=now,
            artifact_path=str(artifact),
            artifact_sha256=registry.sha256_file(artifact),
        )
        registry.activate(session, "v_cli", by="test")
    engine.dispose()
    grant(url, name="serve cli tests", token=TOKEN)
    return url


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_SERVE_"))}
    env.update(extra)
    return env


def _wait_for(path: str, status: int, proc: subprocess.Popen[Any], timeout_s: float = 180) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process {proc.pid} exited with {proc.returncode} before {path} answered")
        try:
            response = httpx.get(BASE + path, timeout=5)
            if response.status_code == status:
                return response
            last = response.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"{path} did not answer {status} within {timeout_s}s (last: {last!r})")


def _stop(proc: subprocess.Popen[Any], timeout_s: float = 60) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        raise AssertionError(f"process {proc.pid} ignored SIGTERM for {timeout_s}s") from None


def _assert_port_closed(timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(BASE + "/healthz", timeout=1)
        except httpx.HTTPError:
            return
        time.sleep(0.5)
    raise AssertionError("the app still answers after its Ray instance was stopped")


def _predict_with_registry_model() -> None:
    response = httpx.post(BASE + "/v1/predict", json=ITEM, headers=HEADERS, timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == "v_cli" and "fallback_reason" not in body, body


@pytest.fixture()
def logfile(tmp_path: Path) -> Iterator[Any]:
    with open(tmp_path / "process.log", "w+") as f:
        yield f
        f.seek(0)
        tail = f.read()[-4000:]
        if tail:
            print(tail)


def _listening(pids: set[int]) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket the processes ``pids`` hold (from /proc)."""
    by_inode: dict[str, tuple[str, int]] = {}
    for table, width in (("tcp", 4), ("tcp6", 16)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            hex_addr, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_addr)
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, width, 4))  # little-endian 32-bit words
            address = socket.inet_ntop(socket.AF_INET if width == 4 else socket.AF_INET6, words)
            by_inode[fields[9]] = (address, int(hex_port, 16))
    found = []
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        found += [by_inode[link[8:-1]] for link in links if link.startswith("socket:[") and link[8:-1] in by_inode]
    return found


def _haproxy_pids() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"/haproxy"):
                pids.add(int(entry.name))
    return pids


@pytest.mark.parametrize("mode", ["default", "haproxy"])
def test_serve_run_brings_up_the_graph(store: str, logfile: Any, mode: str) -> None:
    from ray_control.instance import serve_env

    proc = subprocess.Popen(
        [SERVE, "run", "serve_config.yaml"],
        cwd=REPO,
        env=_env(DATABASE_URL=store, **serve_env(mode)),
        stdout=logfile,
        stderr=subprocess.STDOUT,
    )
    try:
        assert _wait_for("/healthz", 200, proc).json() == {"status": "ok"}
        ready = _wait_for("/readyz", 200, proc, timeout_s=60).json()
        assert ready["model_version"] == "v_cli" and ready["store_reachable"]
        _predict_with_registry_model()
        if mode == "haproxy":
            # HAProxy serves 8000 and its stats and Prometheus ports, all on loopback only.
            listening = _listening(_haproxy_pids())
            assert ("127.0.0.1", 8000) in listening, listening
            assert {port for _, port in listening} >= {8000, 8404, 9101}, listening
            assert {address for address, _ in listening} == {"127.0.0.1"}, listening
    finally:
        code = _stop(proc)
    assert proc.poll() is not None, code
    _assert_port_closed()


def _replicas(details: dict[str, Any]) -> dict[str, set[str]]:
    deployments = details["applications"]["conflict_predictor"]["deployments"]
    return {name: {r["replica_id"] for r in d["replicas"]} for name, d in deployments.items()}


def _min_replicas(deployment: str) -> int:
    import yaml

    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    (found,) = [d for d in config["applications"][0]["deployments"] if d["name"] == deployment]
    return int(found["autoscaling_config"]["min_replicas"])


def _await_model(version: str, timeout_s: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            serving: dict[str, Any] = httpx.get(BASE + "/v1/models", headers=HEADERS, timeout=5).json()["serving"] or {}
            if serving.get("model_version") == version:
                return serving
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"model {version} not served within {timeout_s}s"
        time.sleep(0.5)


def _serving_pids(version: str, replicas: int, timeout_s: float = 90) -> set[int]:
    """The ModelInference processes that answer with ``version`` (the layout runs several)."""
    _await_model(version, timeout_s)
    deadline = time.monotonic() + timeout_s
    pids: set[int] = set()
    while len(pids) < replicas and time.monotonic() < deadline:
        serving = httpx.get(BASE + "/v1/models", headers=HEADERS, timeout=5).json()["serving"] or {}
        if serving.get("model_version") == version:
            pids.add(serving["pid"])
    return pids


def _publish_keeps_the_running_app(store: str, address: str, tmp_path: Path) -> None:
    """As conflictctl runs it: deployed with the store URL in its args, then a new model published."""
    from conflict_core.settings import Settings
    from ray_control.dashboard import serve_client
    from ray_control.serve_deploy import applier, load_config
    from training.publishing import publish_active_model

    client = serve_client(address)
    config = load_config(REPO / "serve_config.yaml", store)
    config["applications"][0]["args"]["feature_refresh_interval_s"] = 0.25  # differs from the file
    client.deploy_applications(config)
    deadline = time.monotonic() + 120
    while True:
        details = client.get_serve_details()
        app = details["applications"]["conflict_predictor"]
        submitted = app.get("deployed_app_config") or {}
        if app["status"] == "RUNNING" and submitted.get("args", {}).get("feature_refresh_interval_s") == 0.25:
            break
        assert time.monotonic() < deadline, f"redeploy did not finish: {app['status']}"
        time.sleep(0.5)
    before = _replicas(details)
    replicas = _min_replicas("ModelInference")
    pids = _serving_pids("v_cli", replicas)

    artifact = tmp_path / "model2.joblib"
    rng = np.random.default_rng(1)
    x = rng.random((200, len(ALL_FEATURES)))
    model = LogisticRegression().fit(x, (x[:, 1] > 0.5).astype(int))
    joblib.dump({"estimator": model, "feature_columns": list(ALL_FEATURES), "version": "v_cli2"}, artifact)
    config_copy = tmp_path / "serve_config.yaml"
    shutil.copy(REPO / "serve_config.yaml", config_copy)
    settings = Settings(database_url=store, serve_config_path=config_copy, dashboard_url=address)
    published = publish_active_model(
        settings,
        version="v_cli2",
        artifact_path=str(artifact),
        artifact_sha256=registry.sha256_file(artifact),
        apply=applier(address),
    )
    assert published.serve_config_updated and published.serve_app_reconfigured
    assert _serving_pids("v_cli2", replicas) == pids  # the same replica processes, reconfigured in place
    details = client.get_serve_details()
    assert _replicas(details) == before  # no deployment restarted
    kept = details["applications"]["conflict_predictor"]["deployed_app_config"]["args"]
    assert kept["database_url"] == store and kept["feature_refresh_interval_s"] == 0.25


def test_serve_deploy_onto_a_running_ray(
    store: str, tmp_path: Path, logfile: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _free_port()
    starter = (
        "import time, ray\n"
        f"ray.init(address='local', include_dashboard=True, dashboard_host='127.0.0.1', dashboard_port={port})\n"
        "print('ray up', flush=True)\n"
        "while True:\n"
        "    time.sleep(3600)\n"
    )
    ray_proc = subprocess.Popen(
        [sys.executable, "-c", starter],
        cwd=REPO,
        env=_env(DATABASE_URL=store),
        stdout=logfile,
        stderr=subprocess.STDOUT,
    )
    try:
        address = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert ray_proc.poll() is None, "the Ray starter exited"
            try:
                if httpx.get(address + "/api/version", timeout=2).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the dashboard did not come up"
            time.sleep(0.5)
        # The CLI sends ~/.ray/auth_token only when token auth is on in its own environment.
        deployed = subprocess.run(
            [SERVE, "deploy", "serve_config.yaml", "--address", address],
            cwd=REPO,
            env=_env(RAY_AUTH_MODE="token"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        _wait_for("/healthz", 200, ray_proc)
        assert _wait_for("/readyz", 200, ray_proc, timeout_s=60).json()["model_version"] == "v_cli"
        _predict_with_registry_model()
        # This process reaches the dashboard with the token the instance wrote, as conflictctl does.
        monkeypatch.setenv("RAY_AUTH_MODE", "unset below")  # recorded, so teardown undoes what the client sets
        monkeypatch.delenv("RAY_AUTH_MODE")
        _publish_keeps_the_running_app(store, address, tmp_path)
    finally:
        _stop(ray_proc)
    _assert_port_closed()
