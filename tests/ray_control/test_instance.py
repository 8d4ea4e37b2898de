"""The environment that chooses Ray Serve's HTTP path before Ray starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def test_serve_env_names_each_ingress_mode_and_refuses_others() -> None:
    from ray_control.instance import serve_env

    assert serve_env("default") == {"RAY_worker_niceness": "0"}
    # Replicas must not yield the CPU to every ordinary process on the machine (Ray's default is 15).
    assert all(serve_env(mode)["RAY_worker_niceness"] == "0" for mode in ("default", "throughput", "haproxy"))
    assert serve_env("throughput")["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in serve_env("throughput")
    haproxy = serve_env("haproxy")
    assert haproxy["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and haproxy["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    # HAProxy starts through the launcher that keeps its listeners on loopback.
    launcher = Path(haproxy["RAY_SERVE_HAPROXY_BINARY_PATH"])
    assert launcher.is_absolute() and launcher.name == "conflict-haproxy" and os.access(launcher, os.X_OK)
    with pytest.raises(ValueError, match="serve ingress mode"):
        serve_env("nginx")


def test_the_ingress_mode_is_a_validated_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from conflict_core.settings import Settings

    assert Settings().serve_ingress_mode == "haproxy"
    monkeypatch.setenv("CONFLICT_SERVE_INGRESS_MODE", "throughput")
    assert Settings().serve_ingress_mode == "throughput"
    monkeypatch.setenv("CONFLICT_SERVE_INGRESS_MODE", "fast")
    with pytest.raises(ValidationError, match="serve_ingress_mode"):
        Settings()


def test_haproxy_mode_replays_requests_whose_replica_died_mid_flight() -> None:
    """Ray reads the retry policy named by serve_env into the HAProxy config it writes."""
    import subprocess
    import sys

    from ray_control.instance import serve_env

    probe = "from ray.serve._private.haproxy import HAProxyConfig; print(HAProxyConfig().retry_on)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
    done = subprocess.run(
        [sys.executable, "-c", probe], env={**env, **serve_env("haproxy")}, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["conn-failure", "empty-response", "junk-response"]
    default = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert default.stdout.split() == ["conn-failure"]  # Ray's own default: connection failures only
