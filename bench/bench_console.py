"""Console benchmark: every console page against a store with 1,000,000 prediction-log rows and
50 model versions, on SQLite and on PostgreSQL; the verdict is against 300 ms per page.

No Ray: the console's Starlette app runs in-process behind Starlette's TestClient (what a
browser waits for, minus the network). Run from the repo root:

    .venv/bin/python bench/bench_console.py [--rows 1000000] [--backends sqlite,postgresql] [--repeat 5]

PostgreSQL is the server at 127.0.0.1:5432 (``CONFLICT_TEST_POSTGRES_URL`` for another admin
URL); the benchmark creates its own database and drops it afterwards. Prints one table per
backend (median and worst of ``--repeat`` renders after one warm-up) and writes the results as
JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from serve_app.prediction_log import RECORD_COLUMNS  # noqa: E402

BUDGET_MS = 300.0
NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
VERSIONS = [f"v202605{d:02d}_{h:02d}0000" for d in range(1, 26) for h in (3, 15)]  # 50
ADMIN_URL = os.environ.get("CONFLICT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# The rows the serving path writes, without the rollout columns (no shadow or canary here),
# plus the outcome columns that the outcome job fills in later.
ROLLOUT_COLUMNS = ("variant", "challenger_version", "challenger_probability")
COLUMNS = (
    *(column for column in RECORD_COLUMNS if column not in ROLLOUT_COLUMNS),
    "actual_conflict_occurred",
    "prediction_correct",
)


def _rows(n: int, seed: int = 0) -> Iterator[tuple[Any, ...]]:
    """``n`` prediction-log rows over the 30 days before NOW (newest last), as column tuples.

    Most rows come from the last few versions; 2 % are heuristic fallbacks; 60 % have outcomes."""
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, 30 * 86400, n))
    version_index = np.minimum(49, 40 + (seconds * 10) // (30 * 86400))
    probability = rng.beta(1.2, 8.0, n)
    fallback = rng.random(n) < 0.02
    labelled = rng.random(n) < 0.6
    correct = rng.random(n) < 0.9
    users = rng.integers(0, 2000, n)
    entities = rng.integers(0, 20000, n)
    kinds = np.array(["task", "ticket", "form", "voice_note"])[rng.integers(0, 4, n)]
    features = '{"concurrent_editors": 0.0, "hours_since_last_sync": 3.5}'
    for i in range(n):
        p = float(probability[i])
        level = "high" if p >= 0.5 else "medium" if p >= 0.2 else "low"
        is_fallback = bool(fallback[i])
        yield (
            f"{i:032x}",
            "conflict_predictor",
            "heuristic_v1" if is_fallback else VERSIONS[version_index[i]],
            f"sync-{i}",
            f"u{users[i]:05d}",
            f"d{users[i]:05d}",
            str(kinds[i]),
            f"e{entities[i]:06d}",
            p >= 0.5,
            round(p, 6),
            level,
            {"low": "sync_now", "medium": "fetch_first", "high": "warn_user"}[level],
            features,
            "feature_lookup_failed" if is_fallback else None,
            NOW - dt.timedelta(days=30) + dt.timedelta(seconds=int(seconds[i])),
            bool(p > 0.3) if labelled[i] else None,
            bool(correct[i]) if labelled[i] else None,
        )


def _fill_sqlite(url: str, n: int) -> None:
    import sqlite3

    from sqlalchemy.engine import make_url

    connection = sqlite3.connect(make_url(url).database or "")
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=OFF")
    sql = f"INSERT INTO prediction_log ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    at = COLUMNS.index("created_at")
    batch: list[tuple[Any, ...]] = []
    for row in _rows(n):
        # The store keeps SQLite timestamps as naive UTC text (conflict_core.store.UTCDateTime).
        batch.append((*row[:at], row[at].replace(tzinfo=None).isoformat(sep=" "), *row[at + 1 :]))
        if len(batch) == 50_000:
            connection.executemany(sql, batch)
            batch.clear()
    connection.executemany(sql, batch)
    connection.commit()
    connection.execute("ANALYZE")
    connection.close()


def _fill_postgresql(url: str, n: int) -> None:
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as connection, connection.cursor() as cursor:
        with cursor.copy(f"COPY prediction_log ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in _rows(n):
                copy.write_row(row)
        connection.commit()
        connection.autocommit = True
        cursor.execute("VACUUM ANALYZE prediction_log")


def _fill_rest(url: str, root: Path) -> dict[str, str]:
    """50 model versions, 200 monitoring runs, 50 job runs, an audit trail; tokens: admin's clear value."""
    import joblib
    from sklearn.linear_model import LogisticRegression

    from conflict_core import audit, registry, tokens
    from conflict_core.features import ALL_FEATURES
    from conflict_core.store import AlertState, JobRun, MonitoringRun, make_engine, make_session_factory

    rng = np.random.default_rng(1)
    x = rng.random((100, len(ALL_FEATURES)))
    artifact = root / "model.joblib"
    model = LogisticRegression().fit(x, (x[:, 0] > 0.5).astype(int))
    joblib.dump({"estimator": model, "feature_columns": list(ALL_FEATURES), "version": "bench"}, artifact)
    sha = registry.sha256_file(artifact)
    engine = make_engine(url)
    with make_session_factory(engine).begin() as session:
        for i, version in enumerate(VERSIONS):
            roc = float(rng.uniform(0.55, 0.96))
            registry.register(
                session,
                version=version,
                algorithm=["hgb", "logistic_regression", "random_forest"][i % 3],
                params={"max_depth": 6, "learning_rate": 0.1},
                metrics={
                    "holdout": {"roc_auc": roc, "pr_auc": roc / 2, "brier": 0.05, "ece": 0.01},
                    "seed_baseline_holdout": {"roc_auc": 0.89, "pr_auc": 0.39, "brier": 0.13, "ece": 0.27},
                },
                feature_columns=list(ALL_FEATURES),
                train_samples=100_000 + i,
                holdout_samples=20_000,
                training_window_start=NOW - dt.timedelta(days=90),
                training_window_end=NOW,
                artifact_path=str(artifact),
                artifact_sha256=sha,
                report_path=str(root / "report" / "report.md"),
                gate_decision="kept as a candidate",
                created_at=NOW - dt.timedelta(days=25) + dt.timedelta(hours=12 * i),
            )
        registry.activate(session, VERSIONS[-1], by="bench", now=NOW)
        for i in range(200):
            session.add(
                MonitoringRun(
                    ran_at=NOW - dt.timedelta(hours=6 * (200 - i)),
                    model_version=VERSIONS[-1],
                    updated_count=5000,
                    labelled_count=30_000,
                    metrics={
                        "accuracy": 0.9,
                        "fallback_rate": 0.02,
                        "model": {"precision": 0.5, "recall": 0.8, "pr_auc": 0.6, "brier": 0.04, "ece": 0.02},
                        "drift": {"psi": {name: 0.01 * (j + 1) for j, name in enumerate(ALL_FEATURES)}},
                    },
                    alerts=[],
                )
            )
        session.add(AlertState(name="fallback_rate_high", firing=False, last_value=0.02, message="resolved"))
        for i in range(50):
            started = NOW - dt.timedelta(days=i)
            session.add(
                JobRun(
                    job=["retrain", "retention"][i % 2],
                    started_at=started,
                    finished_at=started + dt.timedelta(minutes=7),
                    status="succeeded",
                    summary={"headline": "kept as a candidate"},
                )
            )
            audit.record(session, actor="ops", action="activate", from_version=VERSIONS[i - 1], to_version=VERSIONS[i])
        admin = tokens.create(session, name="bench admin", scopes=["admin"])[1]
    engine.dispose()
    (root / "report").mkdir(exist_ok=True)
    (root / "report" / "report.md").write_text("# report\n")
    return {"admin": admin}


def _pages() -> list[tuple[str, str]]:
    mid = NOW - dt.timedelta(days=15)
    from urllib.parse import quote

    cursor = quote(f"{mid.isoformat()}|{10**9}")
    return [
        ("login", "/admin/login"),
        ("models", "/admin/models"),
        ("models, sorted by ROC-AUC, filtered", "/admin/models?status=candidate&algorithm=hgb&sort=roc_auc"),
        ("model detail", f"/admin/models/{VERSIONS[-1]}"),
        ("predictions, newest", "/admin/predictions"),
        ("predictions, page 15 days deep", f"/admin/predictions?after={cursor}"),
        ("predictions, model version", f"/admin/predictions?model_version={VERSIONS[45]}"),
        ("predictions, heuristic fallback", "/admin/predictions?fallback_reason=feature_lookup_failed"),
        ("predictions, risk high", "/admin/predictions?risk_level=high"),
        ("predictions, incorrect outcome", "/admin/predictions?outcome=incorrect"),
        ("predictions, entity type", "/admin/predictions?entity_type=voice_note"),
        (
            "predictions, time range + high + pending",
            f"/admin/predictions?since={(mid - dt.timedelta(hours=2)).strftime('%Y-%m-%dT%H:%M')}"
            f"&until={mid.strftime('%Y-%m-%dT%H:%M')}&risk_level=high&outcome=pending",
        ),
        ("predictions, rare combination", f"/admin/predictions?model_version={VERSIONS[0]}&risk_level=high"),
        ("monitoring", "/admin/monitoring"),
        ("jobs (no Ray dashboard)", "/admin/jobs"),
    ]


def _measure(url: str, root: Path, admin: str, repeat: int) -> list[dict[str, Any]]:
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    from conflict_core.settings import Settings
    from serve_app.console.app import ConsoleConfig, create_app

    settings = Settings(
        database_url=url,
        data_dir=root,
        serve_config_path=root / "serve_config.yaml",
        dashboard_url="http://127.0.0.1:9",  # nothing listens: the jobs page lists the store's runs only
    )
    app = Starlette(routes=[Mount("/admin", app=create_app(ConsoleConfig(settings, session_secret=uuid.uuid4().hex)))])
    results = []
    with TestClient(app, base_url="http://127.0.0.1") as client:
        login = client.get("/admin/login").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', login).group(1)  # type: ignore[union-attr]
        assert client.post("/admin/login", data={"token": admin, "csrf_token": csrf}).status_code == 200
        for name, path in _pages():
            response = client.get(path)  # warm-up: templates, statement caches, pages of the index
            assert response.status_code == 200, (path, response.status_code, response.text[:300])
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                response = client.get(path)
                times.append((time.perf_counter() - started) * 1000)
            rows = response.text.count("<tr")
            results.append(
                {"page": name, "path": path, "median_ms": statistics.median(times), "max_ms": max(times), "rows": rows}
            )
    return results


@contextmanager
def _backend(kind: str, root: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{root / 'store.db'}"
        return
    import psycopg

    admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    name = f"cp_bench_console_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--repeat", type=int, default=5)
    a = parser.parse_args()

    from conflict_core import db

    report: dict[str, Any] = {"rows": a.rows, "models": len(VERSIONS), "budget_ms": BUDGET_MS, "backends": {}}
    print(f"machine: {os.cpu_count()} CPUs; {a.rows:,} prediction-log rows, {len(VERSIONS)} model versions")
    for kind in a.backends.split(","):
        with tempfile.TemporaryDirectory(prefix="bench_console_") as tmp, _backend(kind, Path(tmp)) as url:
            root = Path(tmp)
            db.upgrade(url)
            started = time.perf_counter()
            (_fill_sqlite if kind == "sqlite" else _fill_postgresql)(url, a.rows)
            filled = time.perf_counter() - started
            admin = _fill_rest(url, root)["admin"]
            print(f"\n== {kind}: {a.rows:,} rows bulk-inserted in {filled:.1f} s ({a.rows / filled:,.0f} rows/s)")
            results = _measure(url, root, admin, a.repeat)
            print(f"{'page':<44} {'median ms':>10} {'max ms':>8} {'rows':>5}  verdict (< {BUDGET_MS:.0f} ms)")
            for r in results:
                verdict = "ok" if r["median_ms"] < BUDGET_MS else "SLOW"
                print(f"{r['page']:<44} {r['median_ms']:>10.1f} {r['max_ms']:>8.1f} {r['rows']:>5}  {verdict}")
            slow = [r["page"] for r in results if r["median_ms"] >= BUDGET_MS]
            print(
                f"{len(results) - len(slow)} of {len(results)} pages under {BUDGET_MS:.0f} ms"
                + (f"; over: {', '.join(slow)}" if slow else "")
            )
            report["backends"][kind] = {"fill_seconds": filled, "pages": results}
    out = REPO / "bench" / "results" / f"console_{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
