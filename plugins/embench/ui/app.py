"""The Benchmarks app: HTML pages (runs, history, compare, run report) and a JSON API over
the results store, read-only, every route behind Airflow's authentication.

Mounted by plugins/benchmarks_plugin.py under /benchmarks in Airflow's api-server; runs on
its own too (`uvicorn --factory embench.ui.app:create_app`, which still needs an Airflow
token). All queries go through embench.store.queries (SQLAlchemy, bound parameters)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from embench.errors import EmbenchError
from embench.report import collect, html, resolve_ingest_keys
from embench.report.cost import CostRanking
from embench.report.render import plotly_path
from embench.store.detect import resolve_run
from embench.store.models import NUMERIC_FIELDS, Run, ScenarioRow
from embench.store.queries import (
    HISTORY_LIMIT_DEFAULT,
    HISTORY_LIMIT_MAX,
    RUNS_LIMIT_DEFAULT,
    RUNS_LIMIT_MAX,
    Page,
    RunFilter,
    compare_runs,
    list_runs,
    multi_target_pipeline_runs,
    recent_history,
    recent_runs,
)
from embench.ui.auth import auth_error_handler, require_user, wants_html
from embench.ui.db import read_only_engine, read_session
from embench.ui.render import render

STATUSES = ("complete", "incomplete", "failed")
HISTORY_METRICS = (
    "p99_ms",
    "p50_ms",
    "p95_ms",
    "p999_ms",
    "qps",
    "texts_per_s",
    "error_rate",
    "server_cpu_pct_mean",
    "server_rss_bytes_max",
)
OPENAPI_PATH = "/api/openapi.json"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # inline scripts carry the page's data; nothing is loaded from another origin
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline' "
    "'unsafe-eval'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "frame-ancestors 'self'",
}


def create_app(engine: Engine | None = None) -> FastAPI:
    """The app; `engine` defaults to a read-only engine on ui_database_url(), made on the
    first request (importing the plugin connects nothing).

    FastAPI serves its own OpenAPI document (and /docs, /redoc) as bare Starlette routes that
    the app's dependencies do not reach, so those are off and OPENAPI_PATH is a route of
    ours, behind `require_user` like every other; there are no /docs or /redoc pages (they
    would load Swagger/ReDoc from a CDN, which the Content-Security-Policy forbids)."""
    app = FastAPI(
        title="Embedding benchmarks",
        dependencies=[Depends(require_user)],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.engine = engine
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(EmbenchError, _embench_error)
    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    _routes(app)
    return app


# ----------------------------------------------------------------------------- helpers


def get_session(request: Request) -> Iterator[Session]:
    if request.app.state.engine is None:
        request.app.state.engine = read_only_engine()
    with read_session(request.app.state.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
RunsLimit = Annotated[
    int,
    Query(
        ge=1,
        le=RUNS_LIMIT_MAX,
        description=f"the newest N runs (1 to {RUNS_LIMIT_MAX}; more is refused with 422)",
    ),
]
HistoryLimit = Annotated[
    int,
    Query(
        ge=1,
        le=HISTORY_LIMIT_MAX,
        description=f"the newest N points (1 to {HISTORY_LIMIT_MAX}; more is refused with 422)",
    ),
]
TRUNCATED_HEADER = "X-Embench-Truncated"


def _page_headers(page: Page) -> dict[str, str]:
    """Headers of a limited listing: whether older rows were left off, and the limit."""
    return {
        TRUNCATED_HEADER: "true" if page.truncated else "false",
        "X-Embench-Limit": str(page.limit),
    }


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _page(request: Request, template: str, **context: Any) -> HTMLResponse:
    base = _base(request)
    return HTMLResponse(
        render(template, base=base, plotly_src=f"{base}/static/plotly.min.js", **context)
    )


def _when(value: str | None, name: str, end_of_day: bool = False) -> datetime | None:
    """An ISO date or time from a form ('' is none), in UTC; a date alone as `until`
    includes the whole day. Out of range (year 9999's last day as `until`, year 1 with an
    offset east of UTC) is refused like a malformed value."""
    if not value:
        return None
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            parsed = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return parsed + timedelta(days=1) if end_of_day else parsed
        parsed = datetime.fromisoformat(value)
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise HTTPException(
            400, f"{name}: expected an ISO date (YYYY-MM-DD) or date and time, got {value!r}"
        ) from exc


@contextmanager
def _naming(name: str) -> Iterator[None]:
    """Errors of the store about query parameter `name` (a run that is not stored, say)
    answered as 404/400 whose detail starts with the parameter's name."""
    try:
        yield
    except EmbenchError as exc:
        text = str(exc)
        raise HTTPException(
            404 if text.startswith("no stored run") else 400, f"{name}: {text}"
        ) from exc


def _resolve_runs(session: Session, **runs: str) -> None:
    """Each named run parameter resolves to a stored run (else 404 naming the parameter)."""
    for name, run in runs.items():
        with _naming(name):
            resolve_run(session, run)


def _blank(value: str | None) -> str | None:
    return value or None


def _filter(
    model: str | None,
    variant: str | None,
    status: str | None,
    since: str | None,
    until: str | None,
    runtime: str | None = None,
) -> RunFilter:
    if status and status not in STATUSES:
        raise HTTPException(400, f"status: expected one of {', '.join(STATUSES)}")
    return RunFilter(
        model=_blank(model),
        variant=_blank(variant),
        runtime=_blank(runtime),
        status=_blank(status),
        since=_when(since, "since"),
        until=_when(until, "until", end_of_day=True),
    )


def options(session: Session) -> dict[str, list[str]]:
    """Values for the filter menus."""

    def distinct(column: Any) -> list[str]:
        stmt = sa.select(column).where(column.is_not(None)).distinct().order_by(column)
        return [str(v) for v in session.scalars(stmt)]

    return {
        "models": distinct(Run.model),
        "variants": distinct(Run.variant),
        "runtimes": distinct(Run.runtime),
        "scenarios": distinct(ScenarioRow.name),
        "statuses": list(STATUSES),
        "metrics": [m for m in HISTORY_METRICS if m in NUMERIC_FIELDS],
    }


def history_chart(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Points grouped into series (variant/runtime/scenario) with the places where the
    baseline changed (library versions) and the judged points."""
    series: dict[str, dict[str, Any]] = {}
    changes: list[dict[str, Any]] = []
    for point in points:
        name = f"{point['variant']}/{point['runtime']}/{point['scenario']}"
        entry = series.setdefault(name, {"name": name, "points": []})
        previous = entry["points"][-1] if entry["points"] else None
        if previous is not None and previous["baseline_key"] != point["baseline_key"]:
            changes.append(
                {
                    "time": point["time"],
                    "series": name,
                    "from": previous["baseline_key"],
                    "to": point["baseline_key"],
                }
            )
        entry["points"].append(point)
    return {"series": list(series.values()), "baseline_changes": changes}


# ------------------------------------------------------------------------------ routes


def _routes(app: FastAPI) -> None:
    @app.get(OPENAPI_PATH, include_in_schema=False)
    def openapi(request: Request) -> JSONResponse:
        """The OpenAPI document, with the mount point (/benchmarks) as its server."""
        schema = app.openapi()
        root_path = _base(request)
        if root_path and root_path not in {s.get("url") for s in schema.get("servers", [])}:
            schema = {**schema, "servers": [{"url": root_path}, *schema.get("servers", [])]}
        return JSONResponse(schema)

    @app.get("/static/plotly.min.js", include_in_schema=False)
    def plotly() -> FileResponse:
        return FileResponse(
            plotly_path(),
            media_type="text/javascript",
            headers={"Cache-Control": "private, max-age=86400"},
        )

    # -- JSON API
    @app.get("/api/options")
    def api_options(session: SessionDep) -> dict[str, list[str]]:
        return options(session)

    @app.get("/api/runs")
    def api_runs(
        session: SessionDep,
        response: Response,
        model: str | None = None,
        variant: str | None = None,
        runtime: str | None = None,
        status: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: RunsLimit = RUNS_LIMIT_DEFAULT,
    ) -> list[dict[str, Any]]:
        """Runs, newest first; header X-Embench-Truncated: true when older ones matched
        beyond `limit`."""
        page = recent_runs(session, _filter(model, variant, status, since, until, runtime), limit)
        response.headers.update(_page_headers(page))
        return page.rows

    @app.get("/api/history")
    def api_history(
        session: SessionDep,
        response: Response,
        model: str,
        metric: str = "p99_ms",
        variant: str | None = None,
        scenario: str | None = None,
        runtime: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: HistoryLimit = HISTORY_LIMIT_DEFAULT,
    ) -> dict[str, Any]:
        """The newest `limit` points (oldest first, as charted); `truncated` (and header
        X-Embench-Truncated) says whether older points matched beyond it."""
        page = recent_history(
            session,
            metric,
            model=model,
            variant=_blank(variant),
            scenario=_blank(scenario),
            runtime=_blank(runtime),
            since=_when(since, "since"),
            until=_when(until, "until", end_of_day=True),
            limit=limit,
        )
        response.headers.update(_page_headers(page))
        return {
            "metric": metric,
            "model": model,
            "limit": page.limit,
            "truncated": page.truncated,
            "points": page.rows,
            **history_chart(page.rows),
        }

    @app.get("/api/compare")
    def api_compare(session: SessionDep, a: str, b: str) -> dict[str, Any]:
        _resolve_runs(session, a=a, b=b)
        return compare_runs(session, a, b)

    @app.get("/api/report")
    def api_report(session: SessionDep, run: str) -> dict[str, Any]:
        with _naming("run"):
            keys, title = resolve_ingest_keys(session, run)
        return collect(session, keys, title).to_dict()

    # -- pages
    @app.get("/", response_class=HTMLResponse)
    def runs_page(
        request: Request,
        session: SessionDep,
        model: str | None = None,
        variant: str | None = None,
        status: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: RunsLimit = RUNS_LIMIT_DEFAULT,
    ) -> HTMLResponse:
        page = recent_runs(session, _filter(model, variant, status, since, until), limit)
        chosen = {
            "model": model or "",
            "variant": variant or "",
            "status": status or "",
            "since": since or "",
            "until": until or "",
        }
        response = _page(
            request,
            "runs.html",
            runs=page.rows,
            options=options(session),
            chosen=chosen,
            limit=limit,
            truncated=page.truncated,
        )
        response.headers.update(_page_headers(page))
        return response

    @app.get("/history", response_class=HTMLResponse)
    def history_page(
        request: Request,
        session: SessionDep,
        model: str | None = None,
        metric: str = "p99_ms",
        variant: str | None = None,
        scenario: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: HistoryLimit = HISTORY_LIMIT_DEFAULT,
    ) -> HTMLResponse:
        menus = options(session)
        model = model or (menus["models"][0] if menus["models"] else None)
        chart: dict[str, Any] = {"series": [], "baseline_changes": []}
        page = Page([], limit, False)
        if model is not None:
            page = recent_history(
                session,
                metric,
                model=model,
                variant=_blank(variant),
                scenario=_blank(scenario),
                since=_when(since, "since"),
                until=_when(until, "until", end_of_day=True),
                limit=limit,
            )
            chart = history_chart(page.rows)
        chosen = {
            "model": model or "",
            "metric": metric,
            "variant": variant or "",
            "scenario": scenario or "",
            "since": since or "",
            "until": until or "",
        }
        response = _page(
            request,
            "history.html",
            options=menus,
            chosen=chosen,
            chart=chart,
            points=page.rows,
            limit=limit,
            truncated=page.truncated,
        )
        response.headers.update(_page_headers(page))
        return response

    @app.get("/compare", response_class=HTMLResponse)
    def compare_page(
        request: Request, session: SessionDep, a: str | None = None, b: str | None = None
    ) -> HTMLResponse:
        result = None
        if a and b:
            _resolve_runs(session, a=a, b=b)
            result = compare_runs(session, a, b)
        recent = list_runs(session, RunFilter(), limit=200)
        return _page(
            request,
            "compare.html",
            result=result,
            recent=recent,
            chosen={"a": a or "", "b": b or ""},
        )

    @app.get("/api/runtimes")
    def api_runtimes(session: SessionDep, run: str) -> list[dict[str, Any]]:
        with _naming("run"):
            keys, _ = resolve_ingest_keys(session, run)
        return [c.to_dict() for c in collect(session, keys, run).comparison]

    @app.get("/runtimes", response_class=HTMLResponse)
    def runtimes_page(
        request: Request, session: SessionDep, run: str | None = None
    ) -> HTMLResponse:
        recent = multi_target_pipeline_runs(session)
        run = run or (recent[0]["dag_run_id"] if recent else None)
        comparison: list[dict[str, Any]] = []
        tuning: list[dict[str, Any]] = []
        cost: list[CostRanking] = []
        cost_runs: list[dict[str, Any]] = []
        if run:
            with _naming("run"):
                keys, _ = resolve_ingest_keys(session, run)
            data = collect(session, keys, run)
            comparison = data.compared
            tuning = data.tuning
            cost = data.cost
            cost_runs = data.priced_runs
        return _page(
            request,
            "runtimes.html",
            recent=recent,
            chosen=run or "",
            comparison=comparison,
            tuning=tuning,
            cost=cost,
            cost_runs=cost_runs,
        )

    @app.get("/report", response_class=HTMLResponse)
    def report_page(request: Request, session: SessionDep, run: str) -> HTMLResponse:
        with _naming("run"):
            keys, title = resolve_ingest_keys(session, run)
        data = collect(session, keys, title)
        return HTMLResponse(html(data, plotly_src=f"{_base(request)}/static/plotly.min.js"))


# ---------------------------------------------------------------------- error handlers


def _error(request: Request, status_code: int, detail: str) -> Response:
    if wants_html(request):
        page = render("error.html", base=_base(request), status=status_code, detail=detail)
        return HTMLResponse(page, status_code=status_code)
    return JSONResponse({"detail": detail}, status_code=status_code)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code in (401, 403):
        return await auth_error_handler(request, exc)
    return _error(request, exc.status_code, str(exc.detail))


async def _embench_error(request: Request, exc: Exception) -> Response:
    text = str(exc)
    return _error(request, 404 if text.startswith("no stored run") else 400, text)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    detail = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
    )
    return _error(request, 422, detail)
