"""One local Ray instance (with its dashboard, for job submission) for all Ray Job tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from ray_control.instance import local_ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="package")
def dashboard() -> Iterator[str]:
    with local_ray(dashboard_port=_free_port(), num_cpus=2) as url:
        yield url
