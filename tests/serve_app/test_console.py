"""The console over HTTP, without Ray: every page × (no session, wrong scope, revoked, admin),
sessions, CSRF, security headers, the audited registry actions, filters, keyset pages, CSV."""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from conflict_core import tokens
from conflict_core.audit import ModelAudit
from conflict_core.store import ModelVersion, make_engine, make_session_factory, session_scope
from serve_app.console.app import ConsoleConfig, create_app
from serve_app.console.security import SECURITY_HEADERS
from tests.serve_app.console_store import ConsoleStore, build

PAGES = [
    "/admin/models",
    "/admin/models/v_good",
    "/admin/models/v_good/plots/roc.png",
    "/admin/actions/activate?version=v_fair",
    "/admin/actions/canary?version=v_fair&percent=10",
    "/admin/predictions",
    "/admin/predictions.csv",
    "/admin/monitoring",
    "/admin/jobs",
]
SECRET = "k3y-for-console-tests-7a9c2e4f1b8d6039"


def _app(store: ConsoleStore) -> Starlette:
    console = create_app(ConsoleConfig(store.settings, session_secret=SECRET))
    return Starlette(routes=[Mount("/admin", app=console)])


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> ConsoleStore:
    return build(tmp_path, database_url)


@pytest.fixture
def client(store: ConsoleStore) -> Iterator[TestClient]:
    with TestClient(_app(store), base_url="http://127.0.0.1") as c:
        yield c


def _csrf(client: TestClient, path: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert match, f"no CSRF field on {path}"
    return match.group(1)


def login(client: TestClient, token: str) -> int:
    csrf = _csrf(client, "/admin/login")
    response = client.post(
        "/admin/login", data={"token": token, "csrf_token": csrf, "next": ""}, follow_redirects=False
    )
    return response.status_code


@pytest.mark.parametrize("path", PAGES)
def test_each_page_needs_an_unrevoked_admin_session(client: TestClient, store: ConsoleStore, path: str) -> None:
    anonymous = client.get(path, follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/admin/login")

    assert login(client, store.reader) == 403  # a token without the admin scope
    assert client.get(path, follow_redirects=False).status_code == 303
    assert login(client, store.revoked_admin) == 401
    assert client.get(path, follow_redirects=False).status_code == 303

    assert login(client, store.admin) == 303
    page = client.get(path, follow_redirects=False)
    assert page.status_code == 200, page.text[:500]
    for header, value in SECURITY_HEADERS.items():
        assert page.headers[header] == value


@pytest.mark.parametrize(
    ("path", "form"),
    [
        ("/admin/actions/activate", {"version": "v_fair"}),
        ("/admin/actions/deactivate", {"version": "v_good"}),
        ("/admin/actions/rollback", {}),
        ("/admin/actions/shadow", {"version": "v_fair"}),
        ("/admin/actions/canary", {"version": "v_fair", "percent": "10"}),
        ("/admin/jobs", {"job": "retrain"}),
        ("/admin/logout", {}),
    ],
)
def test_each_form_post_needs_a_session_and_its_csrf_token(
    client: TestClient, store: ConsoleStore, path: str, form: dict[str, str]
) -> None:
    assert client.post(path, data=form, follow_redirects=False).status_code == 401
    assert login(client, store.admin) == 303
    refused = client.post(path, data=form, follow_redirects=False)
    assert refused.status_code == 403 and "CSRF" in refused.text
    wrong = client.post(path, data={**form, "csrf_token": "forged"}, follow_redirects=False)
    assert wrong.status_code == 403
    engine = make_engine(store.url)
    with session_scope(make_session_factory(engine)) as session:
        active = session.scalars(select(ModelVersion.version).where(ModelVersion.is_active)).all()
        challengers = session.scalars(select(ModelVersion.version).where(ModelVersion.is_challenger)).all()
        audited = session.scalars(select(ModelAudit)).all()
    engine.dispose()
    assert active == ["v_good"] and challengers == [] and audited == [], "a refused form changed the registry"


def test_login_sets_a_signed_httponly_samesite_cookie_with_an_expiry(client: TestClient, store: ConsoleStore) -> None:
    csrf = _csrf(client, "/admin/login")
    response = client.post("/admin/login", data={"token": store.admin, "csrf_token": csrf}, follow_redirects=False)
    cookie = response.headers["set-cookie"].lower()
    assert "conflict_console=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert f"max-age={store.settings.console_session_max_age_s}" in cookie
    assert store.admin.lower() not in cookie, "the token itself is in the cookie"
    # A cookie signed with another key is no session.
    other = TestClient(
        Starlette(
            routes=[
                Mount(
                    "/admin",
                    app=create_app(ConsoleConfig(store.settings, session_secret="an0ther-key-for-console-tests-5d1e")),
                )
            ]
        ),
        base_url="http://127.0.0.1",
    )
    other.cookies.update(client.cookies)
    assert other.get("/admin/models", follow_redirects=False).status_code == 303


def test_a_session_ends_soon_after_its_token_is_revoked(client: TestClient, store: ConsoleStore) -> None:
    assert login(client, store.admin) == 303
    assert client.get("/admin/models", follow_redirects=False).status_code == 200
    engine = make_engine(store.url)
    with session_scope(make_session_factory(engine)) as session:
        tokens.revoke(session, "ops-alice")
    engine.dispose()
    time.sleep(store.settings.token_cache_ttl_s + 0.1)
    assert client.get("/admin/models", follow_redirects=False).status_code == 303


def test_models_are_colour_coded_filtered_and_sorted(client: TestClient, store: ConsoleStore) -> None:
    login(client, store.admin)
    page = client.get("/admin/models").text
    cells = dict(re.findall(r'data-version="(v_\w+)".*?class="num roc (\w+)"', page, re.S))
    assert cells == {"v_good": "good", "v_fair": "fair", "v_poor": "poor"}
    by_auc = client.get("/admin/models?sort=roc_auc&order=asc").text
    assert re.findall(r'data-version="(v_\w+)"', by_auc) == ["v_poor", "v_fair", "v_good"]
    candidates = client.get("/admin/models?status=candidate&algorithm=logistic_regression").text
    assert re.findall(r'data-version="(v_\w+)"', candidates) == ["v_fair"]
    assert "created_from must be a date" in client.get("/admin/models?created_from=yesterday").text


def test_activation_is_confirmed_audited_and_written_to_the_serve_config(
    client: TestClient, store: ConsoleStore
) -> None:
    login(client, store.admin)
    confirm = client.get("/admin/actions/activate?version=v_fair")
    assert "v_good" in confirm.text and "v_fair" in confirm.text  # from → to, before anything changes
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', confirm.text).group(1)  # type: ignore[union-attr]
    done = client.post("/admin/actions/activate", data={"version": "v_fair", "csrf_token": csrf})
    assert done.status_code == 200 and "activated v_fair" in done.text
    config = yaml.safe_load(store.settings.serve_config_path.read_text())
    inference = next(d for d in config["applications"][0]["deployments"] if d["name"] == "ModelInference")
    assert inference["user_config"]["model_version"] == "v_fair"
    audit = re.search(r'<table id="audit">.*?</table>', done.text, re.S).group(0)  # type: ignore[union-attr]
    assert re.search(r"ops-alice</td><td>activate</td>\s*<td>v_good</td><td>v_fair", audit)

    rolled = client.post("/admin/actions/rollback", data={"csrf_token": csrf})
    assert "rolled back from v_fair to v_good" in rolled.text
    refused = client.post("/admin/actions/deactivate", data={"version": "v_poor", "csrf_token": csrf})
    assert "not active" in refused.text


def test_model_detail_shows_baseline_training_details_and_plots(client: TestClient, store: ConsoleStore) -> None:
    login(client, store.admin)
    page = client.get("/admin/models/v_good").text
    assert "0.9100" in page and "0.8900" in page  # this model next to the seed baseline
    assert "first model" in page and "param C" in page
    assert 'src="/admin/models/v_good/plots/roc.png"' in page
    assert client.get("/admin/models/v_good/plots/roc.png").headers["content-type"] == "image/png"
    assert client.get("/admin/models/v_good/plots/..%2Fstore.db").status_code == 404
    assert client.get("/admin/models/v_nope").status_code == 404


def test_predictions_filter_colour_and_page_by_key(client: TestClient, store: ConsoleStore) -> None:
    login(client, store.admin)
    page = client.get("/admin/predictions").text
    assert page.count("<tr>") == 51  # header + a page of 50
    assert {"good", "fair", "poor"} <= set(re.findall(r'class="num probability (\w+)"', page))
    seen: list[str] = []
    url = "/admin/predictions?risk_level=high&entity_type=task"
    while url:
        text = client.get(url).text
        seen += re.findall(r'class="risk">(\w+)<', text)
        older = re.search(r'href="(\?[^"]+)" id="older"', text)
        url = "/admin/predictions" + older.group(1).replace("&amp;", "&") if older else ""
    assert seen and set(seen) == {"high"} and len(seen) == 20  # 120 rows: every 3rd high, every 2nd task
    pending = client.get("/admin/predictions?outcome=pending").text
    assert set(re.findall(r'class="outcome" title="(\w+)"', pending)) == {"pending"}
    fallbacks = client.get("/admin/predictions?fallback_reason=no_active_model").text
    assert fallbacks.count("no_active_model</td>") == 30
    assert client.get("/admin/predictions?outcome=maybe").status_code == 400
    assert client.get("/admin/predictions?after=garbage").status_code == 400


def test_csv_download_is_the_filtered_view(client: TestClient, store: ConsoleStore) -> None:
    login(client, store.admin)
    response = client.get("/admin/predictions.csv?outcome=incorrect")
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert rows and {r["outcome"] for r in rows} == {"incorrect"}
    assert len(rows) == sum(1 for i in range(120) if i % 5 and not i % 2)


def test_monitoring_and_jobs_pages(client: TestClient, store: ConsoleStore) -> None:
    login(client, store.admin)
    monitoring = client.get("/admin/monitoring").text
    assert monitoring.count('<svg class="chart"') == 7 and "<polyline" in monitoring
    assert "user_conflict_rate" in monitoring and "firing" in monitoring and "resolved" in monitoring
    jobs = client.get("/admin/jobs").text
    assert "kept as a candidate" in jobs and 'id="submit-retrain"' in jobs
    assert "could not be asked" in jobs  # no Ray dashboard here: the page still renders


def test_logout_ends_the_session(client: TestClient, store: ConsoleStore) -> None:
    login(client, store.admin)
    csrf = _csrf(client, "/admin/models")
    assert client.post("/admin/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    assert client.get("/admin/models", follow_redirects=False).status_code == 303
