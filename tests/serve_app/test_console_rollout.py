"""The console's rollout actions over HTTP, without Ray: shadow, canary, promote and abort, each
confirmed, CSRF-protected, admin-only and audited, reaching the registry and the live serve
config exactly as ``conflictctl models rollout`` does, and refused with a message (changing
nothing) when the step is not allowed."""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from conflict_core import rollout, serve_config
from conflict_core.audit import ModelAudit
from conflict_core.store import ModelVersion, RolloutDecision, make_engine, make_session_factory
from conflictctl.main import main
from serve_app.console.app import ConsoleConfig, create_app
from tests.serve_app.console_store import ConsoleStore, build

SECRET = "k3y-for-console-rollout-tests-3f8a1c"
STEPS = ("shadow", "canary", "promote", "abort")


@dataclass(frozen=True)
class State:
    """Everything a rollout step may change: the registry, its decisions, the audit trail, the live config."""

    registry: dict[str, tuple[str, bool, bool, float | None]]
    decisions: list[tuple[Any, ...]]
    audit: list[tuple[Any, ...]]
    user_config: dict[str, Any]


def state(store: ConsoleStore) -> State:
    engine = make_engine(store.url)
    try:
        with make_session_factory(engine)() as session:
            registry = {
                row.version: (row.rollout_stage, row.is_active, row.is_challenger, row.canary_percent)
                for row in session.scalars(select(ModelVersion))
            }
            decisions = [
                (
                    d.version,
                    d.action,
                    d.stage_before,
                    d.stage_after,
                    d.champion_version,
                    d.decided_by,
                    d.reason,
                    d.numbers,
                )
                for d in session.scalars(select(RolloutDecision).order_by(RolloutDecision.id))
            ]
            audit = [
                (a.actor, a.action, a.from_version, a.to_version, a.detail)
                for a in session.scalars(select(ModelAudit).order_by(ModelAudit.id))
            ]
    finally:
        engine.dispose()
    config = serve_config.read(store.settings.serve_config_path)
    return State(registry, decisions, audit, dict(serve_config.inference_user_config(config)))


def _client(store: ConsoleStore) -> TestClient:
    console = create_app(ConsoleConfig(store.settings, session_secret=SECRET))
    return TestClient(Starlette(routes=[Mount("/admin", app=console)]), base_url="http://127.0.0.1")


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> ConsoleStore:
    return build(tmp_path, database_url, predictions=0)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> ConsoleStore:
    return build(tmp_path, predictions=0)


@pytest.fixture
def client(store: ConsoleStore) -> Iterator[TestClient]:
    with _client(store) as c:
        yield c


@pytest.fixture
def sqlite_client(sqlite_store: ConsoleStore) -> Iterator[TestClient]:
    with _client(sqlite_store) as c:
        yield c


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "no CSRF field on the page"
    return match.group(1)


def login(client: TestClient, token: str) -> int:
    csrf = csrf_of(client.get("/admin/login").text)
    return client.post("/admin/login", data={"token": token, "csrf_token": csrf}, follow_redirects=False).status_code


def flash(page: str) -> str:
    match = re.search(r'id="flash">(.*?)</div>', page, re.S)
    assert match, "no message on the page"
    return html.unescape(match.group(1))


def confirm(client: TestClient, action: str, version: str, **query: str) -> Any:
    return client.get(f"/admin/actions/{action}", params={"version": version, **query})


def confirmed(client: TestClient, action: str, version: str, reason: str = "", **query: str) -> Any:
    """Open the confirmation page and submit its form as a browser would (its hidden fields as they are)."""
    page = confirm(client, action, version, **query)
    assert page.status_code == 200 and 'id="confirm"' in page.text, page.text[:800]
    form = re.search(r'<form method="post".*?</form>', page.text, re.S).group(0)  # type: ignore[union-attr]
    fields = {
        name: html.unescape(value) for name, value in re.findall(r'type="hidden" name="(\w+)" value="([^"]*)"', form)
    }
    return client.post(f"/admin/actions/{action}", data={**fields, "reason": reason})


def offered(page: str) -> dict[str, set[str]]:
    """The rollout buttons of each row of the models list."""
    rows = re.findall(r'<tr class="[^"]*" data-version="(\w+)">(.*?)</tr>', page, re.S)
    return {version: set(re.findall(r"rollout-(\w+)", cells)) for version, cells in rows}


def test_rollout_buttons_offer_only_the_allowed_steps(client: TestClient, store: ConsoleStore) -> None:
    assert login(client, store.admin) == 303
    assert offered(client.get("/admin/models").text) == {
        "v_good": set(),  # the champion
        "v_fair": {"shadow", "canary"},
        "v_poor": {"shadow", "canary"},
    }
    confirmed(client, "shadow", "v_fair")
    assert offered(client.get("/admin/models").text) == {
        "v_good": set(),
        "v_fair": {"canary", "promote", "abort"},
        "v_poor": set(),  # a second challenger is not allowed
    }
    confirmed(client, "canary", "v_fair", percent="10")
    assert offered(client.get("/admin/models").text)["v_fair"] == {"shadow", "canary", "promote", "abort"}
    detail = client.get("/admin/models/v_fair").text
    buttons = re.search(r'id="rollout-actions">(.*?)</p>', detail, re.S).group(1)  # type: ignore[union-attr]
    assert set(re.findall(r"rollout-(\w+)", buttons)) == {"shadow", "canary", "promote", "abort"}
    assert 'name="percent"' in buttons and 'value="10"' in buttons  # the current share, to change it
    assert 'id="rollout-actions"' not in client.get("/admin/models/v_poor").text

    confirmed(client, "promote", "v_fair")
    assert offered(client.get("/admin/models").text) == {
        "v_good": set(),  # retired: conflictctl cannot put it back into a rollout either
        "v_fair": set(),  # the new champion
        "v_poor": {"shadow", "canary"},
    }
    csrf = csrf_of(client.get("/admin/models").text)
    client.post("/admin/actions/deactivate", data={"version": "v_fair", "csrf_token": csrf})
    # No champion: there is nothing to compare a challenger with.
    assert offered(client.get("/admin/models").text) == {"v_good": set(), "v_fair": set(), "v_poor": set()}


def test_each_step_is_confirmed_then_reaches_the_registry_the_serve_config_and_the_audit_trail(
    client: TestClient, store: ConsoleStore
) -> None:
    login(client, store.admin)
    untouched = state(store)

    page = confirm(client, "shadow", "v_fair")
    assert re.search(r'id="stage-before">candidate<.*id="stage-after">shadow<', page.text, re.S)
    assert (
        "v_good, challenger v_fair in shadow" in page.text and "conflictctl models rollout v_fair --shadow" in page.text
    )
    assert state(store) == untouched, "the confirmation page changed something"

    done = confirmed(client, "shadow", "v_fair")
    assert done.status_code == 200 and done.url.path == "/admin/models"
    assert flash(done.text).startswith("shadow v_fair: candidate → shadow; serving v_good, challenger v_fair in shadow")
    assert "no running app to reconfigure" in flash(done.text)
    now = state(store)
    assert now.registry["v_fair"] == ("shadow", False, True, None) and now.registry["v_good"][:2] == ("active", True)
    challenger = now.user_config["challenger"]
    assert now.user_config["model_version"] == "v_good"
    assert (challenger["model_version"], challenger["mode"], challenger["percent"]) == ("v_fair", "shadow", 0.0)
    assert now.audit == [("ops-alice", "shadow", "v_good", "v_good", "v_fair: candidate → shadow")]
    assert now.decisions[-1][:6] == ("v_fair", "shadow", "candidate", "shadow", "v_good", "ops-alice")
    assert re.search(r'id="rollout-challenger">v_fair<.*id="rollout-mode">shadow<.*since 20\d\d-', done.text, re.S)
    assert "ops-alice</td><td>shadow</td>" in done.text and "v_fair: candidate → shadow</td>" in done.text

    # From the detail page, with a reason: back to the detail page.
    done = confirmed(client, "canary", "v_fair", reason="watch the night shift", percent="25", back="detail")
    assert done.url.path == "/admin/models/v_fair"
    assert "canary v_fair: shadow → canary at 25%" in flash(done.text)
    now = state(store)
    assert now.registry["v_fair"] == ("canary", False, True, 25.0)
    assert (now.user_config["challenger"]["mode"], now.user_config["challenger"]["percent"]) == ("canary", 25.0)
    assert now.audit[-1] == ("ops-alice", "canary", "v_good", "v_good", "v_fair: shadow → canary at 25%")
    assert now.decisions[-1][6:] == ("watch the night shift", {"percent": 25.0})
    assert re.search(r'id="rollout-mode">canary</span> at <span id="rollout-percent">25<', done.text)
    assert "watch the night shift" in done.text and '<th>percent</th><td class="num">25</td>' in done.text

    done = confirmed(client, "promote", "v_fair")
    assert "promote v_fair: canary → active; serving v_fair, no challenger" in flash(done.text)
    now = state(store)
    assert now.registry["v_fair"] == ("active", True, False, None) and now.registry["v_good"][:2] == ("retired", False)
    assert now.user_config["model_version"] == "v_fair" and now.user_config["challenger"] is None
    assert now.audit[-1] == ("ops-alice", "promote", "v_good", "v_fair", "v_fair: canary → active")

    confirmed(client, "shadow", "v_poor")
    done = confirmed(client, "abort", "v_poor", reason="wrong features")
    assert "abort v_poor: shadow → aborted; serving v_fair, no challenger" in flash(done.text)
    now = state(store)
    assert now.registry["v_poor"] == ("aborted", False, False, None)
    assert now.user_config["model_version"] == "v_fair" and now.user_config["challenger"] is None
    assert now.audit[-1] == ("ops-alice", "abort", "v_fair", "v_fair", "v_poor: shadow → aborted")
    assert now.decisions[-1][1:4] == ("abort", "shadow", "aborted") and now.decisions[-1][6] == "wrong features"
    assert [a[1] for a in now.audit] == ["shadow", "canary", "promote", "shadow", "abort"]


@pytest.mark.parametrize("percent", ["0", "0.5", "99.5", "100", "-3", "abc", "", "nan", "inf"])
def test_a_canary_share_outside_1_to_99_is_refused_naming_the_field(
    sqlite_client: TestClient, sqlite_store: ConsoleStore, percent: str
) -> None:
    login(sqlite_client, sqlite_store.admin)
    before = state(sqlite_store)
    expected = f"percent: the canary's share of users must be a number from 1 to 99, got {percent!r}"
    page = confirm(sqlite_client, "canary", "v_fair", percent=percent)
    assert page.status_code == 200 and page.url.path == "/admin/models" and flash(page.text) == expected
    csrf = csrf_of(page.text)
    posted = sqlite_client.post(
        "/admin/actions/canary", data={"version": "v_fair", "percent": percent, "csrf_token": csrf}
    )
    assert posted.status_code == 200 and flash(posted.text) == expected
    assert state(sqlite_store) == before


@pytest.mark.parametrize("percent", ["1", "99", "12.5"])
def test_a_canary_share_from_1_to_99_is_taken(
    sqlite_client: TestClient, sqlite_store: ConsoleStore, percent: str
) -> None:
    login(sqlite_client, sqlite_store.admin)
    confirmed(sqlite_client, "canary", "v_fair", percent=percent)
    assert state(sqlite_store).registry["v_fair"] == ("canary", False, True, float(percent))


def _tamper(store: ConsoleStore, version: str) -> None:
    (store.settings.data_dir / "models" / f"{version}.joblib").write_bytes(b"not the registered model")


@pytest.mark.parametrize(
    ("setup", "action", "version", "query", "problem"),
    [
        ([], "promote", "v_fair", {}, "v_fair is candidate; moving it to active needs one of: shadow, canary"),
        ([], "abort", "v_good", {}, "v_good is active; moving it to aborted needs one of: candidate, shadow, canary"),
        ([], "shadow", "v_good", {}, "v_good is active; moving it to shadow needs one of: candidate, canary"),
        ([], "shadow", "v_nope", {}, "no model version 'v_nope' in the registry"),
        ([], "shadow", "", {}, "version: shadow needs a model version"),
        (
            [("shadow", "v_fair")],
            "canary",
            "v_poor",
            {"percent": "10"},
            "v_fair is already the challenger (shadow); promote or abort it first",
        ),
        ([("shadow", "v_fair"), ("abort", "v_fair")], "shadow", "v_fair", {}, "v_fair is aborted"),
        ([("deactivate", "v_good")], "shadow", "v_fair", {}, "no model is active, so v_fair has no champion"),
        ([("tamper", "v_poor")], "shadow", "v_poor", {}, "v_poor.joblib has sha256"),
    ],
)
def test_a_step_that_is_not_allowed_comes_back_as_a_message_and_changes_nothing(
    client: TestClient,
    store: ConsoleStore,
    setup: list[tuple[str, str]],
    action: str,
    version: str,
    query: dict[str, str],
    problem: str,
) -> None:
    login(client, store.admin)
    for step, target in setup:
        if step == "tamper":
            _tamper(store, target)
        elif step == "deactivate":
            csrf = csrf_of(client.get("/admin/models").text)
            client.post("/admin/actions/deactivate", data={"version": target, "csrf_token": csrf})
        else:
            confirmed(client, step, target)
    before = state(store)
    page = confirm(client, action, version, **query)
    assert page.status_code == 200 and problem in flash(page.text), page.text[:600]
    posted = client.post(
        f"/admin/actions/{action}", data={"version": version, **query, "csrf_token": csrf_of(page.text)}
    )
    assert posted.status_code == 200 and problem in flash(posted.text)
    assert state(store) == before


@pytest.mark.parametrize("action", STEPS)
def test_a_step_needs_an_admin_session_and_the_forms_csrf_token(
    sqlite_client: TestClient, sqlite_store: ConsoleStore, action: str
) -> None:
    version, query = ("v_poor", {"percent": "10"}) if action == "canary" else ("v_poor", {})
    if action in ("promote", "abort"):  # they need a challenger: v_poor in shadow
        engine = make_engine(sqlite_store.url)
        with make_session_factory(engine).begin() as session:
            rollout.start_shadow(session, "v_poor", by="tests")
        engine.dispose()
    before = state(sqlite_store)
    form = {"version": version, **query}

    anonymous = sqlite_client.get(f"/admin/actions/{action}", params=form, follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/admin/login")
    assert sqlite_client.post(f"/admin/actions/{action}", data=form).status_code == 401
    assert login(sqlite_client, sqlite_store.reader) == 403  # the token lacks the admin scope
    assert sqlite_client.post(f"/admin/actions/{action}", data=form).status_code == 401
    assert login(sqlite_client, sqlite_store.admin) == 303
    missing = sqlite_client.post(f"/admin/actions/{action}", data=form)
    assert missing.status_code == 403 and "CSRF" in missing.text
    forged = sqlite_client.post(f"/admin/actions/{action}", data={**form, "csrf_token": "forged"})
    assert forged.status_code == 403
    assert state(sqlite_store) == before

    done = sqlite_client.post(
        f"/admin/actions/{action}", data={**form, "csrf_token": csrf_of(sqlite_client.get("/admin/models").text)}
    )
    assert done.status_code == 200 and flash(done.text).startswith(f"{action} v_poor:")
    assert state(sqlite_store).audit[-1][:2] == ("ops-alice", action)


def _portable(store: ConsoleStore, now: State) -> State:
    """``now`` without what differs between two stores by construction: the artifacts' folder, the decider."""
    root = str(store.settings.data_dir)

    def local(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: local(v) for k, v in value.items()}
        return value.replace(root, "<root>") if isinstance(value, str) else value

    decisions = [(*d[:5], *d[6:]) for d in now.decisions]  # all but decided_by
    return State(now.registry, decisions, [], local(now.user_config))


def test_the_console_and_conflictctl_reach_the_same_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    by_console, by_command = build(tmp_path / "console", predictions=0), build(tmp_path / "command", predictions=0)
    monkeypatch.setenv("DATABASE_URL", by_command.url)
    monkeypatch.setenv("CONFLICT_DATA_DIR", str(by_command.settings.data_dir))
    monkeypatch.setenv("CONFLICT_SERVE_CONFIG_PATH", str(by_command.settings.serve_config_path))
    monkeypatch.setenv("CONFLICT_DASHBOARD_URL", by_command.settings.dashboard_url)
    runner = CliRunner()
    steps = [
        ("shadow", "v_fair", None),
        ("canary", "v_fair", "30"),
        ("canary", "v_fair", "12.5"),
        ("promote", "v_fair", None),
        ("canary", "v_poor", "5"),
        ("shadow", "v_poor", None),
        ("abort", "v_poor", None),
    ]
    with _client(by_console) as client:
        login(client, by_console.admin)
        for action, version, percent in steps:
            done = confirmed(client, action, version, **({"percent": percent} if percent else {}))
            assert done.status_code == 200 and flash(done.text).startswith(f"{action} {version}:"), flash(done.text)
            flag = ["--canary", percent] if percent else [f"--{action}"]
            command = runner.invoke(main, ["models", "rollout", version, *flag])
            assert command.exit_code == 0, command.output
            assert _portable(by_console, state(by_console)) == _portable(by_command, state(by_command)), action
    final = state(by_console)
    assert final.registry["v_fair"][0] == "active" and final.registry["v_poor"][0] == "aborted"
    assert {d[5] for d in final.decisions} == {"ops-alice"}
    assert {d[5] for d in state(by_command).decisions} == {"conflictctl"}


def test_recorded_decisions_are_shown_with_their_numbers(client: TestClient, store: ConsoleStore) -> None:
    engine = make_engine(store.url)
    with make_session_factory(engine).begin() as session:
        rollout.start_shadow(session, "v_fair", by="tests")
        rollout.record(
            session,
            version="v_fair",
            action="stay",
            reason="not yet: 180 labelled for the challenger",
            by="rollout-decisions",
            now=dt.datetime.now(dt.UTC),
            champion_version="v_good",
            stage_before="shadow",
            stage_after="shadow",
            numbers={
                "champion": {"pr_auc": 0.4123456, "labelled": 300},
                "challenger": {"pr_auc": 0.5, "labelled": 180},
                "pr_auc_difference": {"low": -0.0123, "high": 0.1},
                "paired": True,
            },
            automatic=True,
        )
    engine.dispose()
    login(client, store.admin)
    for path in ("/admin/models", "/admin/models/v_fair"):
        page = client.get(path).text
        table = re.search(r'<table id="rollout-decisions">.*?</tbody>', page, re.S).group(0)  # type: ignore[union-attr]
        assert "rollout-decisions (automatic)" in table and "not yet: 180 labelled" in table
        for key, value in [
            ("champion.pr_auc", "0.4123"),
            ("champion.labelled", "300"),
            ("challenger.labelled", "180"),
            ("pr_auc_difference.low", "-0.0123"),
            ("paired", "True"),
        ]:
            assert f'<th>{key}</th><td class="num">{value}</td>' in table, key
    assert "not yet: 180 labelled" not in client.get("/admin/models/v_poor").text  # that page: v_poor's decisions
