"""``/setup?token=…``: the first-run page that ``zhongtai serve`` prints a link to.

It creates the first administrator (``identity.api.auth.run_setup``, as ``POST
/api/v1/auth/setup`` does) and then sends the browser to the sign-in form. Without
the right token, or once any user exists, it shows why and no form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio.to_thread
from litestar import Request, Response, get, post

from zhongtai.identity.guard import AccessDep, public
from zhongtai.platform import Platform
from zhongtai.ui.web import choose_language, html_response, ui_of
from zhongtai.web.params import PlatformDep

__all__ = ["ROUTES"]

# The page's URL carries the setup token: never send it on, never cache it.
HEADERS = {"Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
LIMITS = {"token": 512, "email": 320, "display_name": 200, "password": 4096}


def _render(
    platform: Platform,
    request: Request[Any, Any, Any],
    status: int,
    *,
    state: str,
    values: Mapping[str, str] | None = None,
    error: str = "",
) -> Response[str]:
    html = ui_of(platform).render(
        "core/setup.html",
        choose_language(request, None),
        state=state,
        values=values or {},
        error=error,
        minimum=platform.settings.identity.password_min_length,
    )
    response = html_response(html, status)
    response.headers.update(HEADERS)
    return response


def _refusal(platform: Platform, request: Request[Any, Any, Any], exc: Any) -> Response[str]:
    state = "done" if exc.status == 409 else "bad-link"
    return _render(platform, request, exc.status, state=state)


@get("/setup", opt=public(), include_in_schema=False)
async def setup_page(request: Request[Any, Any, Any], platform: PlatformDep) -> Response[str]:
    """The form, if the token is the setup token and no user exists yet."""
    from zhongtai.identity.api.auth import check_setup_allowed
    from zhongtai.identity.api.users import AccountError

    token = str(request.query_params.get("token") or "")[: LIMITS["token"]]

    def work() -> Response[str]:
        try:
            check_setup_allowed(platform, token or None)
        except AccountError as exc:
            return _refusal(platform, request, exc)
        return _render(platform, request, 200, state="form", values={"token": token})

    return await anyio.to_thread.run_sync(work)


@post("/setup", opt=public(), include_in_schema=False)
async def setup_submit(
    request: Request[Any, Any, Any], platform: PlatformDep, access: AccessDep
) -> Response[str]:
    """Create the administrator, or show the form again with what is wrong."""
    from zhongtai.identity.api.auth import check_setup_allowed, run_setup
    from zhongtai.identity.api.users import AccountError

    form = await request.form()
    values = {
        name: str(form.get(name) or "")[: LIMITS.get(name, LIMITS["password"])]
        for name in ("token", "email", "display_name", "password", "password_confirm")
    }
    access.audit(
        action="auth.setup", target_kind="user", detail={"email": values["email"], "via": "web"}
    )
    shown = {k: values[k] for k in ("token", "email", "display_name")}

    def work() -> Response[str]:
        gettext = ui_of(platform).gettext(choose_language(request, None))
        try:
            # Refusals first: without the token nobody gets the form back.
            check_setup_allowed(platform, values["token"])
            if values["password"] != values["password_confirm"]:
                message = gettext("The two passwords differ.")
                return _render(platform, request, 400, state="form", values=shown, error=message)
            user = run_setup(
                platform,
                token=values["token"],
                email=values["email"],
                password=values["password"],
                display_name=values["display_name"],
            )
        except AccountError as exc:
            if exc.status in (403, 409):
                return _refusal(platform, request, exc)
            field = exc.field.replace("_", " ").capitalize()
            error = f"{field}: {exc.message}."
            return _render(platform, request, exc.status, state="form", values=shown, error=error)
        access.audit(actor_user_id=user.id, target_id=user.id)
        return _render(platform, request, 201, state="created", values={"email": user.email})

    return await anyio.to_thread.run_sync(work)


ROUTES = [setup_page, setup_submit]
