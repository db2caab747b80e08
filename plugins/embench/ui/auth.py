"""Airflow's own authentication for the Benchmarks app.

Airflow 3's api-server mounts plugin FastAPI apps as they are: nothing authenticates them
unless they ask. Every route here depends on `require_user`, which is Airflow's
`airflow.api_fastapi.core_api.security.get_user`: the JWT from `Authorization: Bearer` or
the `_token` cookie the Airflow UI sets at login, validated by the configured auth manager.
Missing or expired token: 401; invalid: 403. HTML pages answer a missing login with a
redirect to the auth manager's login page (API routes keep the 401)."""

from __future__ import annotations

import logging
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request, status
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

log = logging.getLogger(__name__)


bearer_scheme = HTTPBearer(auto_error=False)


async def require_user(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Any:
    """The authenticated Airflow user, by Airflow's own `get_user` (raises 401/403)."""
    from airflow.api_fastapi.core_api.security import get_user

    return await get_user(request, None, bearer)


def login_url(request: Request) -> str:
    try:
        from airflow.api_fastapi.app import get_auth_manager

        return str(get_auth_manager().get_url_login(next_url=str(request.url)))
    except Exception:  # no auth manager initialised: Airflow's default path
        log.debug("no auth manager for a login URL", exc_info=True)
        return f"/auth/login?next={quote(str(request.url), safe='')}"


def wants_html(request: Request) -> bool:
    return "/api/" not in request.url.path and "text/html" in request.headers.get("accept", "")


async def auth_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == status.HTTP_401_UNAUTHORIZED and wants_html(request):
        return RedirectResponse(login_url(request), status_code=status.HTTP_303_SEE_OTHER)
    return JSONResponse(
        {"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )
