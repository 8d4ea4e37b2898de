"""The console in a real headless Chromium (Debian's, driven by Playwright): log in, the
colour-coded models list, filtering predictions, a form posted without its CSRF token, a
canary started from the models list, log out; and, on a local Ray instance, an activation from
the console reaching the served app.

Screenshots of each page are saved under ``CONFLICT_TEST_ARTIFACTS`` (default: the system's
temporary folder's ``conflict-test-artifacts``), one folder per run; the path is printed.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from serve_app.console.app import ConsoleConfig, create_app
from tests.serve_app.console_store import ConsoleStore, build

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SECRET = "k3y-for-browser-tests-8b1d3f5a7c9e2046"
COLOURS = {"good": "rgb(10, 125, 40)", "fair": "rgb(196, 106, 0)", "poor": "rgb(196, 23, 27)"}


def _require_browser() -> None:
    problem = None
    if not CHROMIUM.is_file():
        problem = f"{CHROMIUM} is missing (scripts/setup.sh installs Debian's chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "playwright is not installed (pip install -e '.[dev]')"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)


@pytest.fixture(scope="module")
def shots() -> Path:
    root = os.environ.get("CONFLICT_TEST_ARTIFACTS") or Path(tempfile.gettempdir()) / "conflict-test-artifacts"
    folder = Path(root) / f"console-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ConsoleStore]]:
    """The console (no Ray) on a loopback port, over a store with models and predictions."""
    store = build(tmp_path_factory.mktemp("console"))
    app = Starlette(routes=[Mount("/admin", app=create_app(ConsoleConfig(store.settings, session_secret=SECRET)))])
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the console did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", store
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _login(page: Any, base: str, token: str) -> None:
    page.goto(base + "/admin/models")
    assert "/admin/login" in page.url  # sent to log in first
    page.fill("#token", token)
    page.click("#login")
    page.wait_for_url("**/admin/models")


def test_console_in_a_browser(browser: Any, served: tuple[str, ConsoleStore], shots: Path) -> None:
    base, store = served
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.goto(base + "/admin/login")
    page.fill("#token", store.reader)
    page.click("#login")
    assert "lacks the admin scope" in page.inner_text("#login-error")
    page.screenshot(path=str(shots / "01-login-refused.png"))

    _login(page, base, store.admin)
    page.screenshot(path=str(shots / "02-models.png"), full_page=True)
    for version, band in {"v_good": "good", "v_fair": "fair", "v_poor": "poor"}.items():
        cell = page.locator(f'tr[data-version="{version}"] td.roc')
        assert cell.evaluate("e => getComputedStyle(e).color") == COLOURS[band], version

    page.click('a[href="/admin/models/v_good"]')
    assert page.locator("#performance").is_visible()
    assert page.locator("img.plot").evaluate("e => e.naturalWidth") == 1  # the report plot loaded
    page.screenshot(path=str(shots / "03-model-detail.png"), full_page=True)

    page.goto(base + "/admin/predictions")
    page.select_option("select[name=risk_level]", "high")
    page.select_option("select[name=outcome]", "incorrect")
    page.click("#apply-filters")
    page.wait_for_url("**risk_level=high**")
    risks = page.locator("#predictions td.risk").all_inner_texts()
    outcomes = page.locator("#predictions td.outcome").all_inner_texts()
    assert risks and set(risks) == {"high"} and all("incorrect" in o for o in outcomes)
    colours = page.locator("#predictions td.probability").evaluate_all(
        "cells => cells.map(e => getComputedStyle(e).color)"
    )
    assert set(colours) == {COLOURS["poor"]}  # 70 % is red
    page.screenshot(path=str(shots / "04-predictions-filtered.png"), full_page=True)

    page.goto(base + "/admin/monitoring")
    assert page.locator("svg.chart").count() == 7
    page.screenshot(path=str(shots / "05-monitoring.png"), full_page=True)
    page.goto(base + "/admin/jobs")
    page.screenshot(path=str(shots / "06-jobs.png"), full_page=True)

    # A confirmation form whose CSRF token was stripped is refused and changes nothing.
    page.goto(base + "/admin/actions/activate?version=v_fair")
    page.screenshot(path=str(shots / "07-confirm.png"))
    page.locator("main input[name=csrf_token]").evaluate("e => e.remove()")
    page.click("#confirm")
    assert "CSRF token is missing or wrong" in page.inner_text("#problem")
    page.screenshot(path=str(shots / "08-csrf-refused.png"))
    page.goto(base + "/admin/models")
    assert page.inner_text("#active-version") == "v_good"

    # A canary from the models list: its share, the confirmation, the rollout panel.
    row = page.locator('tr[data-version="v_fair"]')
    row.locator("input[name=percent]").fill("15")
    row.locator("button.rollout-canary").click()
    page.wait_for_url("**/admin/actions/canary**")
    assert page.inner_text("#stage-after") == "canary at 15%"
    page.screenshot(path=str(shots / "09-confirm-canary.png"))
    page.click("#confirm")
    page.wait_for_selector("#flash")
    assert page.inner_text("#flash").startswith("canary v_fair: candidate → canary at 15%"), page.inner_text("#flash")
    assert page.inner_text("#rollout-challenger") == "v_fair" and page.inner_text("#rollout-percent") == "15"
    assert page.locator('tr[data-version="v_fair"] .rollout-promote').is_visible()
    page.screenshot(path=str(shots / "10-canary-running.png"), full_page=True)

    page.click("#logout")
    page.wait_for_url("**/admin/login")
    page.goto(base + "/admin/models")
    assert "/admin/login" in page.url
    page.screenshot(path=str(shots / "11-logged-out.png"))
    context.close()


@pytest.mark.ray
@pytest.mark.slow
def test_activation_from_the_console_reaches_the_served_app(browser: Any, tmp_path: Path, shots: Path) -> None:
    import ray
    from ray import serve

    from conflict_core import registry, serve_config
    from conflict_core.store import make_engine, make_session_factory
    from conflictctl.console_access import fill_console_args
    from ray_control.serve_deploy import deploy_config, load_config, wait_until_running
    from tests.conftest import grant

    store = build(tmp_path)
    settings = store.settings.model_copy(update={"dashboard_url": "http://127.0.0.1:8265"})
    engine = make_engine(store.url)
    with make_session_factory(engine)() as session:
        active = registry.get(session, "v_good")
        serve_config.set_model(
            settings.serve_config_path,
            version=active.version,
            artifact_path=active.artifact_path,
            artifact_sha256=active.artifact_sha256,
        )
    engine.dispose()
    reader = grant(store.url, "read", name="browser test reader")
    config = load_config(settings.serve_config_path, store.url)
    config["applications"][0]["args"]["log_spool_dir"] = str(tmp_path / "spool")
    fill_console_args(config, settings)

    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_port=8265, log_to_driver=False)
    try:
        deploy_config(config)
        wait_until_running()
        headers = {"Authorization": f"Bearer {reader}"}
        serving = httpx.get("http://127.0.0.1:8000/v1/models", headers=headers, timeout=10).json()["serving"]
        assert serving["model_version"] == "v_good"

        page = browser.new_page(viewport={"width": 1400, "height": 900})
        _login(page, "http://127.0.0.1:8000", store.admin)
        page.click('tr[data-version="v_fair"] a.button')
        page.click("#confirm")
        page.wait_for_selector("#flash")
        assert "activated v_fair" in page.inner_text("#flash"), page.inner_text("#flash")
        assert "running app reconfigured" in page.inner_text("#flash")
        page.screenshot(path=str(shots / "12-activated-on-ray.png"), full_page=True)
        deadline = time.monotonic() + 90
        while True:
            body = httpx.get("http://127.0.0.1:8000/v1/models", headers=headers, timeout=10).json()
            if (body["serving"] or {}).get("model_version") == "v_fair":
                break
            assert time.monotonic() < deadline, f"/v1/models still serves {body['serving']}"
            time.sleep(0.5)
        assert "ops-alice" in page.goto("http://127.0.0.1:8000/admin/models").text()  # type: ignore[union-attr]
        page.close()
    finally:
        serve.shutdown()
        ray.shutdown()
