"""The environment that chooses Ray Serve's HTTP path before Ray starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def test_serve_env_names_each_ingress_mode_and_refuses_others() -> None:
    from ray_control.instance import serve_env

    assert serve_env("default") == {}
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
