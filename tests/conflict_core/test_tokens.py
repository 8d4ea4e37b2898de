"""API tokens: stored hashed, shown once, scoped, revocable; the CLI; the settings that guard secrets."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from pydantic import SecretStr, ValidationError
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from conflict_core import db, tokens
from conflict_core.settings import Settings
from conflict_core.store import make_engine
from conflictctl.main import main


def test_a_token_is_stored_only_as_its_hash(session_factory: sessionmaker[Session], database_url: str) -> None:
    with session_factory.begin() as session:
        row, token = tokens.create(session, name="sync-server", scopes=["record", "predict", "predict"])
    assert token.startswith("cp_") and len(token) >= 40
    assert row.scopes == ["predict", "record"]
    engine = make_engine(database_url)
    with engine.connect() as connection:
        stored = " ".join(str(v) for r in connection.execute(text("SELECT * FROM api_token")) for v in r)
    engine.dispose()
    assert token not in stored and token[3:] not in stored and tokens.hash_token(token) in stored


def test_verify_knows_scopes_revocation_and_unknown_tokens(session_factory: sessionmaker[Session]) -> None:
    with session_factory.begin() as session:
        _, token = tokens.create(session, name="reader", scopes=["read"])
    with session_factory.begin() as session:
        info = tokens.verify(session, token)
        assert info is not None and info.allows("read") and not info.allows("predict")
        assert tokens.verify(session, token[:-1] + ("A" if token[-1] != "A" else "B")) is None
        assert tokens.verify(session, "not-a-token") is None
    with session_factory.begin() as session:
        assert session.scalars(select(tokens.ApiToken.last_used_at)).one() is not None
        assert [r.name for r in tokens.revoke(session, "reader")] == ["reader"]
    with session_factory.begin() as session:
        info = tokens.verify(session, token)
        assert info is not None and info.revoked and not info.allows("read")
        with pytest.raises(tokens.TokenError, match="no unrevoked token"):
            tokens.revoke(session, "reader")


def test_bad_scopes_and_names_are_refused(session_factory: sessionmaker[Session]) -> None:
    with session_factory.begin() as session:
        with pytest.raises(tokens.TokenError, match="unknown scope 'write'"):
            tokens.create(session, name="x", scopes=["write"])
        with pytest.raises(tokens.TokenError, match="at least one scope"):
            tokens.create(session, name="x", scopes=[])
        with pytest.raises(tokens.TokenError, match="non-empty name"):
            tokens.create(session, name="  ", scopes=["read"])


def test_cli_prints_the_token_alone_on_the_last_line_then_lists_and_revokes(sqlite_url: str) -> None:
    runner = CliRunner()
    created = runner.invoke(
        main,
        ["--database-url", sqlite_url, "tokens", "create", "--scope", "predict", "--scope", "read", "--name", "ci"],
    )
    assert created.exit_code == 0, created.output
    token = created.output.strip().splitlines()[-1]
    assert token.startswith("cp_") and " " not in token
    engine = make_engine(sqlite_url)
    with Session(engine) as session:
        info = tokens.verify(session, token, touch=False)
    assert info is not None and info.scopes == {"predict", "read"}
    listed = runner.invoke(main, ["--database-url", sqlite_url, "tokens", "list"])
    assert "ci" in listed.output and "predict,read" in listed.output and token not in listed.output
    revoked = runner.invoke(main, ["--database-url", sqlite_url, "tokens", "revoke", "ci"])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    with Session(engine) as session:
        info = tokens.verify(session, token, touch=False)
    engine.dispose()
    assert info is not None and info.revoked
    wrong = runner.invoke(main, ["--database-url", sqlite_url, "tokens", "create", "--scope", "root", "--name", "x"])
    assert wrong.exit_code != 0 and "root" in wrong.output


def test_the_migration_goes_down_and_up_again(database_url: str) -> None:
    db.downgrade(database_url, "0003_long_identifiers")
    db.upgrade(database_url)
    assert db.current_revision(database_url) == "api_tokens_console"


@pytest.mark.parametrize(
    "secret", ["short", "changeme-changeme-changeme-changeme", "x" * 40, "my-super-secret-value-for-the-console-0"]
)
def test_placeholder_or_short_session_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ValidationError, match="console_session_secret"):
        Settings(console_session_secret=SecretStr(secret))


def test_access_control_is_on_unless_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().access_control_enabled is True
    monkeypatch.setenv("CONFLICT_ACCESS_CONTROL_ENABLED", "false")
    assert Settings().access_control_enabled is False
    good = "8f2b6c1d9e4a7b3c5d0e1f2a3b4c5d6e7f8091a2"
    assert Settings(console_session_secret=SecretStr(good)).console_session_secret is not None


def test_secrets_are_not_handed_to_ray_jobs() -> None:
    from conflictctl.scheduler import runtime_env

    settings = Settings(
        api_token=SecretStr("cp_client-token"),
        console_session_secret=SecretStr("8f2b6c1d9e4a7b3c5d0e1f2a3b4c5d6e7f8091a2"),
    )
    env = runtime_env(settings)["env_vars"]
    assert "CONFLICT_API_TOKEN" not in env and "CONFLICT_CONSOLE_SESSION_SECRET" not in env
    assert env["CONFLICT_ACCESS_CONTROL_ENABLED"] == "True"
