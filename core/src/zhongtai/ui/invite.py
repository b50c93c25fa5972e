"""``/invite?token=…``: the page an invitation's ``accept_url`` opens.

Signed in as the invited address: one button joins the organization. Signed out: a
link to sign in and come back, and, where registration allows it, a form that creates
the account, accepts the invitation and signs in. Both go through the API's own
functions (``accept_invitation``, ``register``), so their rules hold here too.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import quote

import anyio.to_thread
from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.exceptions import HTTPException
from litestar.response import Redirect
from pydantic import ValidationError

from zhongtai.identity.browser import SESSION_COOKIE, csrf_ok, csrf_token, session_principal
from zhongtai.identity.guard import PRINCIPAL_SCOPE_KEY, Access, public
from zhongtai.identity.models import Organization, User
from zhongtai.platform import Platform
from zhongtai.ui.web import (
    LOGIN_CSRF_COOKIE,
    choose_language,
    html_response,
    secure,
    session_cookie,
    ui_of,
)
from zhongtai.web.params import PlatformDep

__all__ = ["ROUTES"]

TOKEN_MAX = 512


def _invitation(platform: Platform, token: str) -> tuple[Any, str, str] | str:
    """(invitation, organization name, role name), or why the token is no good."""
    from zhongtai.identity.api.auth import _invitation_for
    from zhongtai.identity.api.users import AccountError
    from zhongtai.identity.roles import Role

    try:
        with platform.db.transaction() as session:
            invitation = _invitation_for(session, platform, token, "token")
            org = session.get(Organization, invitation.org_id)
            session.expunge(invitation)
            return invitation, org.name if org else "", Role(invitation.role).name
    except AccountError as exc:
        return exc.message


def _page(
    platform: Platform,
    request: Request[Any, Any, Any],
    token: str,
    *,
    errors: Mapping[str, str] | None = None,
    values: Mapping[str, Any] | None = None,
    status: int = 200,
) -> Response[str]:
    found = _invitation(platform, token)
    cookie = request.cookies.get(SESSION_COOKIE) or ""
    principal = session_principal(platform, cookie) if cookie else None
    user = None
    if principal is not None:
        with platform.db.transaction() as session:
            user = session.get(User, principal.user_id)
    lang = choose_language(request, user)
    login_csrf = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
    context: dict[str, Any] = {
        "token": token,
        "errors": errors or {},
        "values": values or {},
        "user": user,
        "csrf": csrf_token(platform, cookie) if principal is not None else login_csrf,
        "next": quote(f"/invite?token={token}", safe=""),
        "registration": platform.settings.identity.registration,
        "minimum": platform.settings.identity.password_min_length,
    }
    if isinstance(found, str):
        context.update(problem=found)
        status = 400
    else:
        invitation, org, role = found
        context.update(problem="", email=invitation.email, org=org, role=role)
    html = ui_of(platform).render("core/invite.html", lang, **context)
    cookies = [
        Cookie(
            key=LOGIN_CSRF_COOKIE,
            value=login_csrf,
            path="/",
            httponly=True,
            samesite="strict",
            secure=secure(request),
        )
    ]
    return html_response(html, status, cookies)


@get("/invite", opt=public(), include_in_schema=False)
async def invite_page(request: Request[Any, Any, Any], platform: PlatformDep) -> Response[str]:
    token = str(request.query_params.get("token", ""))[:TOKEN_MAX]
    return await anyio.to_thread.run_sync(lambda: _page(platform, request, token))


@post("/invite", opt=public(), include_in_schema=False)
async def invite_submit(request: Request[Any, Any, Any], platform: PlatformDep) -> Response[Any]:
    """Accept as the signed-in user, or create the account (public route: the checks
    the guard makes elsewhere are made here)."""
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    token = form.get("token", "")[:TOKEN_MAX]
    offered = form.get("csrf_token", "")
    cookie = request.cookies.get(SESSION_COOKIE) or ""
    if form.get("action") == "accept":
        return await anyio.to_thread.run_sync(
            lambda: _accept(platform, request, token, cookie, offered)
        )
    expected = request.cookies.get(LOGIN_CSRF_COOKIE) or ""
    if not expected or not hmac.compare_digest(expected, offered):
        return html_response("reload the page and try again", 403)
    return await anyio.to_thread.run_sync(lambda: _register(platform, request, token, form))


def _accept(
    platform: Platform, request: Request[Any, Any, Any], token: str, cookie: str, offered: str
) -> Response[Any]:
    from zhongtai.identity.api.auth import AcceptIn, accept_invitation

    principal = session_principal(platform, cookie) if cookie else None
    if principal is None:
        return Redirect(f"/ui/login?next={quote(f'/invite?token={token}', safe='')}")
    if not csrf_ok(platform, cookie, offered):
        return html_response("missing or wrong CSRF token; reload the page", 403)
    request.scope[PRINCIPAL_SCOPE_KEY] = principal  # type: ignore[literal-required]
    access = Access(platform, request.scope, "authenticated")
    try:
        accept_invitation.fn(platform=platform, access=access, data=AcceptIn(token=token))
    except (HTTPException, ValidationError) as exc:
        detail = exc.detail if isinstance(exc, HTTPException) else "not a valid invitation"
        return _page(platform, request, token, errors={"token": str(detail)}, status=400)
    return Redirect("/ui/projects?flash=invitation+accepted", status_code=303)


def _register(
    platform: Platform, request: Request[Any, Any, Any], token: str, form: Mapping[str, str]
) -> Response[Any]:
    from zhongtai.identity.api.auth import RegisterIn, register
    from zhongtai.identity.browser import start_session

    values = {k: form.get(k, "") for k in ("display_name",)}
    if form.get("password") != form.get("password_again"):
        return _page(
            platform,
            request,
            token,
            errors={"password_again": "differs"},
            values=values,
            status=422,
        )
    found = _invitation(platform, token)
    if isinstance(found, str):
        return _page(platform, request, token, status=400)
    access = Access(platform, request.scope, "public")
    try:
        data = RegisterIn(
            email=found[0].email,
            password=form.get("password", ""),
            display_name=form.get("display_name", ""),
            invitation=token,
        )
        user = cast("dict[str, Any]", register.fn(platform=platform, access=access, data=data))
    except ValidationError as exc:
        errors = {str(e["loc"][0]) if e["loc"] else "_": e["msg"] for e in exc.errors()}
        return _page(platform, request, token, errors=errors, values=values, status=422)
    except HTTPException as exc:
        extra = exc.extra if isinstance(exc.extra, list) else []
        field = next((e.get("key") for e in extra if isinstance(e, dict)), None) or "_"
        return _page(
            platform,
            request,
            token,
            errors={str(field): str(exc.detail)},
            values=values,
            status=exc.status_code,
        )
    with platform.db.transaction() as session:
        cookie = start_session(session, platform, user["id"], request.headers.get("user-agent", ""))
    return Redirect(
        "/ui/projects?flash=invitation+accepted",
        status_code=303,
        cookies=[session_cookie(platform, request, cookie)],
    )


ROUTES = [invite_page, invite_submit]
