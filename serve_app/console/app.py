"""The console's Starlette app: login, models (with their rollout), model detail, predictions,
monitoring, jobs.

Every page needs a session logged in with an ``admin`` token; every state-changing form
carries the session's CSRF token; every response carries the security headers
(:mod:`serve_app.console.security`). Store reads run in worker threads.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from conflict_core import registry, tokens
from conflict_core.errors import ConflictPredictorError
from conflict_core.settings import Settings
from conflict_core.store import make_engine, make_session_factory
from serve_app.console import actions, queries
from serve_app.console.charts import line_chart
from serve_app.console.security import CSRF_FIELD, SecurityHeaders, SessionCheck, csrf_token, csrf_valid
from serve_app.heuristics import HEURISTIC_VERSION, FallbackReason, RiskLevel

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
T = TypeVar("T")

NAV = [("models", "Models"), ("predictions", "Predictions"), ("monitoring", "Monitoring"), ("jobs", "Jobs")]
LIVE_SERIES = [
    ("accuracy", "Accuracy", lambda m: m.get("accuracy")),
    ("precision", "Precision", lambda m: (m.get("model") or {}).get("precision")),
    ("recall", "Recall", lambda m: (m.get("model") or {}).get("recall")),
    ("pr_auc", "PR-AUC", lambda m: (m.get("model") or {}).get("pr_auc")),
    ("brier", "Brier score", lambda m: (m.get("model") or {}).get("brier")),
    ("ece", "Calibration error (ECE)", lambda m: (m.get("model") or {}).get("ece")),
    ("fallback_rate", "Fallback rate", lambda m: m.get("fallback_rate")),
]
CSV_COLUMNS = [
    "prediction_id",
    "created_at",
    "model_version",
    "user_id",
    "entity_type",
    "entity_id",
    "probability",
    "risk_level",
    "recommendation",
    "fallback_reason",
    "sync_id",
    "outcome",
]


@dataclass
class ConsoleConfig:
    """What the console needs: the settings (store, serve config, dashboard) and its cookie key."""

    settings: Settings
    session_secret: str | None = None
    https_only: bool = False
    page_size: int = 50
    _engine: Engine | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.session_secret is None:
            configured = self.settings.console_session_secret
            if configured is not None:
                self.session_secret = configured.get_secret_value()
            else:
                log.warning(
                    "console_session_secret is not set: console sessions are signed with a random key of this "
                    "process and end when it restarts (set CONFLICT_CONSOLE_SESSION_SECRET for more than one replica)"
                )
                self.session_secret = secrets.token_urlsafe(32)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        self._engine = make_engine(self.settings.database_url)
        return make_session_factory(self._engine)


class Console:
    """The route handlers, sharing one config, one template environment and one session check."""

    def __init__(self, config: ConsoleConfig):
        self.config = config
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.globals.update(
            auc_class=queries.auc_class,
            probability_class=queries.probability_class,
            flat_numbers=queries.flat_numbers,
            serving_text=actions.serving_text,
            nav=NAV,
        )
        self.session_check = SessionCheck(self._token_unrevoked, ttl_s=config.settings.token_cache_ttl_s)

    # ---------------------------------------------------------------- plumbing

    def _token_unrevoked(self, token_id: int) -> bool:
        with self.config.sessions() as session:
            row = session.get(tokens.ApiToken, token_id)
            return row is not None and row.revoked_at is None and tokens.Scope.ADMIN in row.scopes

    async def _read(self, work: Callable[[Session], T]) -> T:
        def run() -> T:
            with self.config.sessions() as session:
                return work(session)

        return await asyncio.to_thread(run)

    def _render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        context.update(
            request=request,
            user=request.scope.get("console_user"),
            csrf_field=CSRF_FIELD,
            csrf=csrf_token(request),
            current=name.removesuffix(".html"),
            flash=request.session.pop("flash", None),
        )
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    def _redirect(self, request: Request, name: str, flash: tuple[str, str] | None = None, **query: str) -> Response:
        if flash is not None:
            request.session["flash"] = list(flash)
        url = request.url_for(name).path + (f"?{urlencode(query)}" if query else "")
        return RedirectResponse(url, status_code=303)

    def page(self, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` for logged-in admins; others go to the login page (or get a 401 for non-GET)."""

        async def guarded(request: Request) -> Response:
            user = await asyncio.to_thread(self.session_check.user, request)
            if user is None:
                if request.method != "GET":
                    return self._render(request, "error.html", 401, problem="log in with an admin token first")
                return self._redirect(request, "login", next=request.url.path)
            request.scope["console_user"] = user
            if request.method == "POST":
                form = await request.form()
                if not csrf_valid(request, form):
                    return self._render(
                        request, "error.html", 403, problem="the form's CSRF token is missing or wrong; reload the page"
                    )
                request.scope["console_form"] = form
            return await handler(request)

        return guarded

    # ---------------------------------------------------------------- login

    async def login_page(self, request: Request) -> Response:
        return self._render(request, "login.html", next=request.query_params.get("next", ""))

    async def login(self, request: Request) -> Response:
        form = await request.form()
        if not csrf_valid(request, form):
            return self._render(request, "login.html", 403, error="the form's CSRF token is missing or wrong")
        token = str(form.get("token") or "").strip()

        def verify(session: Session) -> tokens.TokenInfo | None:
            info = tokens.verify(session, token)
            session.commit()
            return info

        info = await self._read(verify) if token else None
        if info is None or info.revoked:
            problem = "that token was revoked" if info is not None else "that is not a token this service issued"
            return self._render(request, "login.html", 401, error=problem)
        if tokens.Scope.ADMIN not in info.scopes:
            return self._render(request, "login.html", 403, error=f"the token {info.name!r} lacks the admin scope")
        request.session.clear()  # a fresh session (and CSRF token) at every login
        request.session.update(token_id=info.id, name=info.name, csrf=secrets.token_urlsafe(32))
        target = str(form.get("next") or "")
        root = request.url_for("models").path.rsplit("/", 1)[0]
        if target.startswith(root + "/") and "//" not in target:
            return RedirectResponse(target, status_code=303)
        return self._redirect(request, "models")

    async def logout(self, request: Request) -> Response:
        request.session.clear()
        return self._redirect(request, "login", flash=("ok", "logged out"))

    async def home(self, request: Request) -> Response:
        return self._redirect(request, "models")

    # ---------------------------------------------------------------- models

    async def models(self, request: Request) -> Response:
        q = request.query_params
        try:
            filters = queries.ModelFilters(
                status=q.get("status") or None,
                algorithm=q.get("algorithm") or None,
                created_from=_date(q.get("created_from"), "created_from"),
                created_to=_date(q.get("created_to"), "created_to"),
                sort=q.get("sort", "created_at") if q.get("sort") in queries.MODEL_SORTS else "created_at",
                descending=q.get("order", "desc") != "asc",
            )
        except ValueError as exc:
            return self._render(request, "error.html", 400, problem=str(exc))

        def read(session: Session) -> dict[str, Any]:
            rows = queries.models(session, filters)
            return {
                "rows": rows,
                "algorithms": queries.algorithms(session),
                "audit": queries.audit_trail(session),
                "previous": registry.previously_active(session),
                **_rollout_context(session, rows),
            }

        data = await self._read(read)
        return self._render(request, "models.html", filters=filters, holdout=queries.holdout, q=q, **data)

    async def model_detail(self, request: Request) -> Response:
        version = request.path_params["version"]

        def read(session: Session) -> tuple[Any, dict[str, Any]]:
            row = registry.get(session, version)
            return row, _rollout_context(session, [row], version=version)

        try:
            row, rollout_context = await self._read(read)
        except ConflictPredictorError as exc:
            return self._render(request, "error.html", 404, problem=str(exc))
        metrics = row.metrics or {}
        plots = sorted(p.name for p in _report_dir(row).glob("*.png")) if _report_dir(row).is_dir() else []
        return self._render(
            request,
            "model_detail.html",
            row=row,
            holdout=metrics.get("holdout") or {},
            baseline=metrics.get("seed_baseline_holdout") or {},
            other_metrics={k: v for k, v in metrics.items() if k not in ("holdout", "seed_baseline_holdout")},
            plots=plots,
            **rollout_context,
        )

    async def model_plot(self, request: Request) -> Response:
        version, name = request.path_params["version"], request.path_params["name"]
        try:
            row = await self._read(lambda session: registry.get(session, version))
        except ConflictPredictorError as exc:
            return self._render(request, "error.html", 404, problem=str(exc))
        folder = _report_dir(row)
        path = (folder / name).resolve()
        if path.suffix != ".png" or path.parent != folder.resolve() or not path.is_file():
            return self._render(request, "error.html", 404, problem=f"no plot {name!r} in the report of {version}")
        return FileResponse(path, media_type="image/png")

    async def confirm(self, request: Request) -> Response:
        action = request.path_params["action"]
        version = request.query_params.get("version") or None
        if action in actions.ROLLOUT_ACTIONS:
            return await self._confirm_rollout(request, action, version)
        try:
            from_version, to_version = await self._read(lambda session: actions.preview(session, action, version))
        except ConflictPredictorError as exc:
            return self._redirect(request, "models", flash=("error", str(exc)))
        return self._render(
            request, "confirm.html", action=action, version=version, from_version=from_version, to_version=to_version
        )

    async def act(self, request: Request) -> Response:
        form = request.scope["console_form"]
        action = request.path_params["action"]
        version = str(form.get("version") or "") or None
        actor = request.scope["console_user"]["name"]
        if action in actions.ROLLOUT_ACTIONS:
            return await self._act_rollout(request, action, version, actor)
        try:
            result = await asyncio.to_thread(
                actions.perform, self.config.sessions, self.config.settings, action, version, actor=actor
            )
        except ConflictPredictorError as exc:
            return self._redirect(request, "models", flash=("error", str(exc)))
        log.info("console: %s by %s: %s", action, actor, result.message())
        return self._redirect(request, "models", flash=("ok", result.message()))

    async def _confirm_rollout(self, request: Request, action: str, version: str | None) -> Response:
        back = request.query_params.get("back", "")
        actor = request.scope["console_user"]["name"]
        try:
            percent = actions.parse_percent(request.query_params.get("percent")) if action == "canary" else None
            change = await self._read(lambda session: actions.rehearse(session, action, version, percent, by=actor))
        except ConflictPredictorError as exc:
            return self._back(request, back, version, ("error", str(exc)))
        return self._render(request, "confirm_rollout.html", action=action, change=change, back=back)

    async def _act_rollout(self, request: Request, action: str, version: str | None, actor: str) -> Response:
        form = request.scope["console_form"]
        back = str(form.get("back") or "")
        try:
            percent = actions.parse_percent(form.get("percent")) if action == "canary" else None
            result = await asyncio.to_thread(
                actions.perform_rollout,
                self.config.sessions,
                self.config.settings,
                action,
                version,
                percent,
                actor=actor,
                reason=str(form.get("reason") or "").strip(),
            )
        except ConflictPredictorError as exc:
            return self._back(request, back, version, ("error", str(exc)))
        log.info("console: rollout %s by %s: %s", action, actor, result.message())
        return self._back(request, back, version, ("ok", result.message()))

    def _back(self, request: Request, back: str, version: str | None, flash: tuple[str, str]) -> Response:
        """To the page the action started from: the model's detail page, or the models list."""
        if back != "detail" or not version:
            return self._redirect(request, "models", flash=flash)
        request.session["flash"] = list(flash)
        return RedirectResponse(request.url_for("model_detail", version=version).path, status_code=303)

    # ---------------------------------------------------------------- predictions

    def _prediction_filters(self, request: Request) -> queries.PredictionFilters:
        q = request.query_params
        outcome = q.get("outcome") or None
        if outcome is not None and outcome not in queries.OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(queries.OUTCOMES)}, got {outcome!r}")
        return queries.PredictionFilters(
            model_version=q.get("model_version") or None,
            entity_type=q.get("entity_type") or None,
            risk_level=q.get("risk_level") or None,
            fallback_reason=q.get("fallback_reason") or None,
            outcome=outcome,
            since=_moment(q.get("since"), "since"),
            until=_moment(q.get("until"), "until"),
        )

    async def predictions(self, request: Request) -> Response:
        try:
            filters = self._prediction_filters(request)
            after_text = request.query_params.get("after")
            after = queries.Cursor.decode(after_text) if after_text else None
        except ValueError as exc:
            return self._render(request, "error.html", 400, problem=str(exc))

        def read(session: Session) -> tuple[queries.PredictionPage, list[str]]:
            page = queries.predictions(session, filters, after, limit=self.config.page_size)
            return page, queries.version_names(session)

        page, versions = await self._read(read)
        base = {k: v for k, v in request.query_params.items() if k != "after" and v}
        return self._render(
            request,
            "predictions.html",
            page=page,
            filters=filters,
            versions=[*versions, HEURISTIC_VERSION],
            risk_levels=[level.value for level in RiskLevel],
            fallback_reasons=[queries.NO_FALLBACK, *(reason.value for reason in FallbackReason)],
            outcomes=queries.OUTCOMES,
            outcome_of=queries.outcome_of,
            q=request.query_params,
            first_url="?" + urlencode(base),
            next_url="?" + urlencode({**base, "after": page.next_cursor.encode()}) if page.next_cursor else None,
            csv_url=request.url_for("predictions_csv").path + "?" + urlencode(base),
        )

    async def predictions_csv(self, request: Request) -> Response:
        try:
            filters = self._prediction_filters(request)
        except ValueError as exc:
            return self._render(request, "error.html", 400, problem=str(exc))
        sessions = self.config.sessions

        def lines() -> Iterator[str]:
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            writer.writerow(CSV_COLUMNS)
            with sessions() as session:
                for count, row in enumerate(queries.prediction_rows(session, filters), start=1):
                    writer.writerow(
                        [
                            row.prediction_id,
                            row.created_at.isoformat(),
                            row.model_version,
                            row.user_id,
                            row.entity_type,
                            row.entity_id,
                            f"{row.probability:.6f}",
                            row.risk_level,
                            row.recommendation,
                            row.fallback_reason or "",
                            row.sync_id or "",
                            queries.outcome_of(row),
                        ]
                    )
                    if count % 1000 == 0:
                        yield buffer.getvalue()
                        buffer.seek(0)
                        buffer.truncate()
            yield buffer.getvalue()

        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        return StreamingResponse(
            lines(),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="predictions_{stamp}.csv"'},
        )

    # ---------------------------------------------------------------- monitoring and jobs

    async def monitoring(self, request: Request) -> Response:
        def read(session: Session) -> tuple[list[Any], list[Any]]:
            return queries.monitoring_runs(session), queries.alerts(session)

        runs, alerts = await self._read(read)
        charts = [
            line_chart(
                title,
                [(run.ran_at, _number(pick(run.metrics or {}))) for run in runs],
                y_max=1.0 if key != "brier" else None,
                percent=key in ("fallback_rate",),
            )
            for key, title, pick in LIVE_SERIES
        ]
        latest = runs[-1] if runs else None
        psi: dict[str, Any] = ((latest.metrics or {}).get("drift") or {}).get("psi") or {} if latest else {}
        return self._render(
            request,
            "monitoring.html",
            charts=charts,
            latest=latest,
            psi=sorted(psi.items()),
            psi_threshold=self.config.settings.psi_alert_threshold,
            alerts=alerts,
            runs=runs[::-1][:20],
        )

    async def jobs(self, request: Request) -> Response:
        runs = await self._read(queries.job_runs)
        ray_jobs, ray_error = await self._ray_jobs()
        return self._render(
            request,
            "jobs.html",
            runs=runs,
            ray_jobs=ray_jobs,
            ray_error=ray_error,
            dashboard=self.config.settings.dashboard_url.rstrip("/"),
            jobs=actions.JOBS,
        )

    async def _ray_jobs(self) -> tuple[list[dict[str, Any]], str | None]:
        """The cluster's recent Ray Jobs (newest first), or why they could not be listed."""

        def read() -> list[dict[str, Any]]:
            from ray_control.dashboard import job_client

            listed = job_client(self.config.settings.dashboard_url).list_jobs()
            rows = []
            for job in listed:
                start, end = job.start_time, job.end_time
                rows.append(
                    {
                        "id": job.submission_id or job.job_id,
                        "status": str(job.status),
                        "entrypoint": job.entrypoint,
                        "started": dt.datetime.fromtimestamp(start / 1000, dt.UTC) if start else None,
                        "seconds": (end - start) / 1000 if start and end else None,
                    }
                )
            return sorted(rows, key=lambda r: r["started"] or dt.datetime.min.replace(tzinfo=dt.UTC), reverse=True)[:50]

        try:
            return await asyncio.wait_for(asyncio.to_thread(read), 3.0), None
        except Exception as exc:  # no cluster, no dashboard: the page still shows the store's runs
            return [], f"{type(exc).__name__}: {exc}"

    async def submit(self, request: Request) -> Response:
        form = request.scope["console_form"]
        job = str(form.get("job") or "")
        try:
            sid = await asyncio.to_thread(actions.submit_job, self.config.settings, job)
        except ConflictPredictorError as exc:
            return self._redirect(request, "jobs", flash=("error", str(exc)))
        log.info("console: %s submitted %s as Ray Job %s", request.scope["console_user"]["name"], job, sid)
        return self._redirect(request, "jobs", flash=("ok", f"submitted {job} as Ray Job {sid}"))


def create_app(config: ConsoleConfig) -> Starlette:
    """The console as an ASGI app (mount it at ``/admin``)."""
    console = Console(config)
    page = console.page
    routes = [
        Route("/", page(console.home), name="home"),
        Route("/login", console.login_page, methods=["GET"], name="login"),
        Route("/login", console.login, methods=["POST"], name="login_post"),
        Route("/logout", page(console.logout), methods=["POST"], name="logout"),
        Route("/models", page(console.models), name="models"),
        Route("/models/{version}", page(console.model_detail), name="model_detail"),
        Route("/models/{version}/plots/{name}", page(console.model_plot), name="model_plot"),
        Route("/actions/{action}", page(console.confirm), methods=["GET"], name="confirm"),
        Route("/actions/{action}", page(console.act), methods=["POST"], name="act"),
        Route("/predictions", page(console.predictions), name="predictions"),
        Route("/predictions.csv", page(console.predictions_csv), name="predictions_csv"),
        Route("/monitoring", page(console.monitoring), name="monitoring"),
        Route("/jobs", page(console.jobs), name="jobs"),
        Route("/jobs", page(console.submit), methods=["POST"], name="submit_job"),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    assert config.session_secret is not None
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(
            SessionMiddleware,
            secret_key=config.session_secret,
            session_cookie="conflict_console",
            max_age=config.settings.console_session_max_age_s,
            same_site="strict",
            https_only=config.https_only,
        ),
    ]
    return Starlette(routes=routes, middleware=middleware)


def _rollout_context(session: Session, rows: list[Any], version: str | None = None) -> dict[str, Any]:
    """The rollout panel (champion, challenger, decisions with their numbers) and each row's
    rollout buttons; the decisions of ``version`` only when given."""
    view = queries.rollout_view(session)
    return {
        "active": view.champion,
        "rollout_now": view,
        "decisions": queries.rollout_decisions(session, version=version),
        "steps": {
            row.version: actions.offered_steps(row, champion=view.champion, rival=view.challenger) for row in rows
        },
    }


def _report_dir(row: Any) -> Path:
    path = Path(row.report_path) if row.report_path else Path(row.artifact_path).parent / "report"
    return path if path.is_dir() else path.parent


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _date(text: str | None, name: str) -> dt.date | None:
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name} must be a date YYYY-MM-DD, got {text!r}") from None


def _moment(text: str | None, name: str) -> dt.datetime | None:
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name} must be a time YYYY-MM-DDTHH:MM (UTC), got {text!r}") from None
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
