"""The web UI's machinery: templates, languages, the routes built from panels, sign-in.

Every page is rendered on the server (Jinja, autoescaped) inside the core's layout;
htmx and the log viewer's script come from ``/ui/static``. Responses carry a
Content-Security-Policy without ``'unsafe-inline'``: no inline script or style.

Templates are looked up by ``<plugin>/<file>``: the core's under ``core/``, each
plugin's in its own package's ``templates/`` folder under its own name, so a plugin
cannot replace another's template by accident. Languages are gettext catalogs (the
core's ``locale/<lang>/LC_MESSAGES/zhongtai.po``, each plugin's
``locale/<lang>/LC_MESSAGES/<plugin>.po``), compiled when the app starts.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import secrets
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import anyio.to_thread
import jinja2
from litestar import Request, Response, Router, get, post
from litestar.datastructures import Cookie, ResponseHeader
from litestar.enums import MediaType
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.response import Redirect as LitestarRedirect
from litestar.static_files import create_static_files_router
from markupsafe import Markup
from sqlalchemy import select

from zhongtai.hooks.manager import PluginRecord
from zhongtai.identity.access import NotFound
from zhongtai.identity.browser import SESSION_COOKIE, csrf_token
from zhongtai.identity.guard import (
    SESSION_SCOPE_KEY,
    Access,
    AccessDep,
    authenticated,
    public,
)
from zhongtai.identity.models import Project, User
from zhongtai.platform import Platform, StashKey
from zhongtai.ui.panels import Panel, Redirect, View
from zhongtai.web.params import PlatformDep

log = logging.getLogger("zhongtai.ui")

__all__ = ["LANGUAGES", "UI", "ui_routes"]

# The codes users.language holds (as the API takes them) → their names in the menu.
LANGUAGES = {"en": "English", "zh-CN": "中文"}
PROJECT_COOKIE = "zt_project"
LOGIN_CSRF_COOKIE = "zt_login_csrf"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    ResponseHeader(name="Content-Security-Policy", value=CSP),
    ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
    ResponseHeader(name="X-Frame-Options", value="DENY"),
    ResponseHeader(name="Referrer-Policy", value="same-origin"),
]
CORE = "core"  # the template and static namespace of the built-in plugins


@dataclasses.dataclass(frozen=True)
class Entry:
    """A panel as the UI serves it."""

    plugin: str
    panel: Panel
    url: str  # the route (pages), "" for cards
    template: str  # namespaced: "<plugin>/<file>"

    @property
    def key(self) -> str:
        return f"{self.plugin}.{self.panel.name}"


class UI:
    """Templates, catalogs and panels of one app (kept in the platform's stash)."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.entries: list[Entry] = []
        loaders: dict[str, jinja2.BaseLoader] = {
            CORE: jinja2.PackageLoader("zhongtai.ui", "templates")
        }
        self.static: dict[str, Path] = {CORE: Path(str(resources.files("zhongtai.ui") / "static"))}
        self.catalogs: dict[str, Any] = {}
        plugin_dirs: dict[str, Path] = {}
        for record, panels in platform.plugins.call_each("register_panels"):
            namespace = CORE if record.builtin else record.name
            if not record.builtin:
                folder = _package_dir(record)
                if folder is not None:
                    plugin_dirs[record.name] = folder
                    if (folder / "templates").is_dir():
                        loaders[namespace] = jinja2.FileSystemLoader(folder / "templates")
                    if (folder / "static").is_dir():
                        self.static[namespace] = folder / "static"
            base = "/ui" if record.builtin else f"/ui/{record.name}"
            for panel in panels or []:
                if not isinstance(panel, Panel):
                    platform.plugins.unload(
                        record.name, f"register_panels: {panel!r} is not a zhongtai.ui.Panel"
                    )
                    break
                url = "" if panel.kind == "card" else base + panel.path.rstrip("/")
                self.entries.append(
                    Entry(record.name, panel, url or base, f"{namespace}/{panel.template}")
                )
        self.entries.sort(key=lambda e: (e.panel.order, e.key))
        self.env = jinja2.Environment(
            loader=jinja2.PrefixLoader(loaders),
            autoescape=True,
            extensions=["jinja2.ext.i18n"],
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals.update(static=_static_url, languages=LANGUAGES)
        self.env.filters["when"] = _when
        for lang in LANGUAGES:
            self.catalogs[lang] = _catalog(lang, plugin_dirs)

    @property
    def pages(self) -> list[Entry]:
        return [e for e in self.entries if e.panel.kind == "page"]

    @property
    def cards(self) -> list[Entry]:
        return [e for e in self.entries if e.panel.kind == "card"]

    def gettext(self, lang: str) -> Callable[[str], str]:
        catalog = self.catalogs.get(lang)
        return catalog.gettext if catalog is not None else (lambda s: s)

    def render(self, template: str, lang: str, **context: Any) -> Markup:
        """Render ``template`` in ``lang`` (the catalog's gettext for ``_()``); the
        result is safe HTML (everything in it was escaped when it was rendered)."""
        catalog = self.catalogs.get(lang)
        tmpl = self.env.get_template(template)
        plain = catalog.gettext if catalog is not None else (lambda s: s)
        ngettext = catalog.ngettext if catalog is not None else _ngettext

        def gettext(message: str, **values: Any) -> str:
            """``_("at least %(n)s", n=10)``: translated, then filled in."""
            text: str = plain(message)
            return text % values if values else text

        html = tmpl.render(_=gettext, gettext=gettext, ngettext=ngettext, lang=lang, **context)
        return Markup(html)  # noqa: S704 - autoescaped output of our own template


UI_KEY: StashKey[UI] = StashKey()


def _ngettext(singular: str, plural: str, n: int) -> str:
    return singular if n == 1 else plural


def _static_url(namespace: str, path: str) -> str:
    return f"/ui/static/{namespace}/{path}"


def _when(value: Any) -> str:
    """A timestamp as the UI shows it (UTC, to the second)."""
    if value is None:
        return "—"
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return text[:19].replace("T", " ") + " UTC"


def _package_dir(record: PluginRecord) -> Path | None:
    module = record.module or getattr(record.obj, "__module__", None)
    if not module:
        return None
    package = module.split(".", 1)[0]
    try:
        return Path(str(resources.files(package)))
    except (ModuleNotFoundError, TypeError):
        return None


def _catalog(lang: str, plugin_dirs: Mapping[str, Path]) -> Any:
    """The core's catalog for ``lang`` with each plugin's merged in (English: none)."""
    from babel.support import Translations

    merged = Translations()
    sources = [(Path(str(resources.files("zhongtai.ui"))), "zhongtai")]
    sources += [(folder, name) for name, folder in plugin_dirs.items()]
    for folder, domain in sources:
        language = lang.split("-")[0]  # zh-CN → the catalogs of locale/zh
        po = folder / "locale" / language / "LC_MESSAGES" / f"{domain}.po"
        if po.is_file():
            merged.merge(_compile(po, language))
    return merged


def _compile(po: Path, lang: str) -> Any:
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po
    from babel.support import Translations

    with po.open("rb") as fh:
        catalog = read_po(fh, locale=lang)
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return Translations(buffer)


def ui_of(platform: Platform) -> UI:
    return platform.stash[UI_KEY]


# ---------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------


def choose_language(request: Request[Any, Any, Any], user: User | None) -> str:
    """The user's language; before sign-in the ``zt_lang`` cookie, then Accept-Language."""
    if user is not None and user.language in LANGUAGES:
        return user.language
    cookie = request.cookies.get("zt_lang")
    if cookie in LANGUAGES:
        return cookie
    header = request.headers.get("accept-language", "")
    for part in header.split(","):
        tag = part.split(";")[0].strip().lower()
        if tag.startswith("zh"):
            return "zh-CN"  # the one Chinese the UI has: Simplified
        if tag.startswith("en"):
            return "en"
    return "en"


def secure(request: Request[Any, Any, Any]) -> bool:
    return request.url.scheme == "https"


def session_cookie(platform: Platform, request: Request[Any, Any, Any], token: str) -> Cookie:
    """The signed-in browser's cookie (see :mod:`zhongtai.identity.browser`)."""
    return Cookie(
        key=SESSION_COOKIE,
        value=token,
        path="/",
        httponly=True,
        samesite="lax",
        secure=secure(request),
        max_age=platform.settings.identity.session_ttl,
    )


def html_response(
    body: str, status: int = 200, cookies: list[Cookie] | None = None
) -> Response[str]:
    return Response(
        body,
        status_code=status,
        media_type=MediaType.HTML,
        cookies=cookies or [],
        headers={"Cache-Control": "no-store"},
    )


def _visible_projects(session: Any, access: Access) -> list[Project]:
    """The switcher's projects, by organization then name (each with ``org_name``)."""
    from zhongtai.identity.models import Organization

    rows = session.execute(
        select(Project, Organization.name)
        .join(Organization, Organization.id == Project.org_id)
        .where(Project.id.in_(access.visible_projects("core.project.read")))
        .order_by(Organization.name, Project.name)
        .limit(500)
    ).all()
    projects = []
    for project, org_name in rows:
        project.org_name = org_name
        projects.append(project)
    return projects


def _can_see(view: View, session: Any, entry: Entry) -> bool:
    permission = entry.panel.permission
    if permission is None:
        return True
    declared = view.platform.permissions.get(permission)
    if declared.scope == "site":
        return bool(view.access.principal.is_superuser)
    if declared.scope == "project":
        return view.project is not None and view.access.has(
            session, permission, project_id=view.project.id
        )
    return False


def _require(view: View, session: Any, entry: Entry) -> None:
    """Raise NotFound unless the caller may see ``entry`` (same page as a missing one)."""
    permission = entry.panel.permission
    if permission is None:
        return
    declared = view.platform.permissions.get(permission)
    if declared.scope == "project":
        if view.project is None:
            raise NotFound("no project")
        view.access.require(session, project_id=view.project.id, permission=permission)
    elif not _can_see(view, session, entry):
        raise NotFound(permission)


def build_view(
    request: Request[Any, Any, Any],
    platform: Platform,
    access: Access,
    session: Any,
    form: Mapping[str, Any] | None = None,
) -> tuple[View, User]:
    ui = ui_of(platform)
    user = session.get(User, access.principal.user_id)
    lang = choose_language(request, user)
    projects = _visible_projects(session, access)
    wanted = request.query_params.get("project") or request.cookies.get(PROJECT_COOKIE)
    current = next((p for p in projects if p.id == wanted), None)
    if current is None and request.query_params.get("project"):
        raise NotFound("project")  # a project this user cannot see: as if missing
    if current is None and projects:
        current = projects[0]
    view = View(
        request=request,
        platform=platform,
        access=access,
        locale=lang,
        gettext=ui.gettext(lang),
        project=current,
        projects=projects,
        params=dict(request.path_params),
        form=form or {},
    )
    return view, user


def page_html(
    view: View, user: User, session: Any, entry: Entry | None, body: Markup, flash: str = ""
) -> str:
    """``body`` inside the core's layout (navigation, switcher, user menu)."""
    ui = ui_of(view.platform)
    nav = [e for e in ui.pages if e.panel.in_nav and _can_see(view, session, e)]
    cookie = str(view.request.scope.get(SESSION_SCOPE_KEY) or "")
    return ui.render(
        "core/layout.html",
        view.locale,
        view=view,
        user=user,
        nav=nav,
        current=entry,
        body=body,
        flash=flash or view.request.query_params.get("flash", ""),
        csrf=csrf_token(view.platform, cookie) if cookie else "",
        title=entry.panel.title_in(view.locale) if entry else "",
    )


def render_entry(view: View, session: Any, entry: Entry, data: Mapping[str, Any]) -> Markup:
    """One panel's own HTML; a missing or failing template becomes an error box."""
    ui = ui_of(view.platform)
    cookie = str(view.request.scope.get(SESSION_SCOPE_KEY) or "")
    try:
        return ui.render(
            entry.template,
            view.locale,
            view=view,
            data=data,
            panel=entry.panel,
            csrf=csrf_token(view.platform, cookie) if cookie else "",
        )
    except Exception as exc:
        log.exception("panel %s failed to render", entry.key)
        return ui.render(
            "core/panel_error.html",
            view.locale,
            title=entry.panel.title_in(view.locale),
            error=f"{type(exc).__name__}: {exc}",
        )


def not_found_html(platform: Platform, request: Request[Any, Any, Any], user: User | None) -> str:
    ui = ui_of(platform)
    return ui.render("core/not_found.html", choose_language(request, user))


# ---------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------


def _page_handler(entry: Entry) -> list[Any]:
    """GET (and POST, with ``on_post``) routes of one page panel."""

    def work(
        request: Request[Any, Any, Any],
        platform: Platform,
        access: Access,
        form: Mapping[str, Any] | None,
    ) -> Response[Any]:
        with platform.db.transaction() as session:
            try:
                view, user = build_view(request, platform, access, session, form)
                _require(view, session, entry)
            except NotFound:
                someone = session.get(User, access.principal.user_id)
                return html_response(not_found_html(platform, request, someone), 404)
            data: Mapping[str, Any] = {}
            status = 200
            try:
                if form is not None and entry.panel.on_post is not None:
                    outcome = entry.panel.on_post(view)
                    if isinstance(outcome, Redirect):
                        target = outcome.url
                        if outcome.flash:
                            sep = "&" if "?" in target else "?"
                            target += sep + urlencode({"flash": outcome.flash})
                        return LitestarRedirect(path=target, status_code=303)
                    data = outcome
                    # A refused form: 422, whichever of the page's forms it was.
                    refused = any(v for k, v in outcome.items() if k.endswith("errors"))
                    status = 422 if refused else 200
                if entry.panel.context is not None:
                    data = {**entry.panel.context(view), **data}
            except NotFound:
                return html_response(not_found_html(platform, request, user), 404)
            body = render_entry(view, session, entry, data)
            html = page_html(view, user, session, entry, body)
        cookies = []
        if view.project is not None:
            cookies.append(
                Cookie(
                    key=PROJECT_COOKIE,
                    value=view.project.id,
                    path="/ui",
                    httponly=True,
                    samesite="lax",
                    secure=secure(request),
                )
            )
        return html_response(html, status, cookies)

    name = entry.key.replace(".", "-").replace("_", "-")

    @get(entry.url, name=f"ui-{name}", opt=authenticated(), include_in_schema=False)
    async def show(
        request: Request[Any, Any, Any], platform: PlatformDep, access: AccessDep
    ) -> Response[Any]:
        return await anyio.to_thread.run_sync(work, request, platform, access, None)

    handlers: list[Any] = [show]
    if entry.panel.on_post is not None:

        @post(entry.url, name=f"ui-{name}-post", opt=authenticated(), include_in_schema=False)
        async def submit(
            request: Request[Any, Any, Any], platform: PlatformDep, access: AccessDep
        ) -> Response[Any]:
            form = {k: v for k, v in (await request.form()).items() if k != "csrf_token"}
            return await anyio.to_thread.run_sync(work, request, platform, access, form)

        handlers.append(submit)
    return handlers


def _login_form(
    platform: Platform, request: Request[Any, Any, Any], *, email: str = "", error: str = ""
) -> Response[str]:
    ui = ui_of(platform)
    lang = choose_language(request, None)
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
    html = ui.render(
        "core/login.html",
        lang,
        email=email,
        error=error,
        csrf=token,
        next=_safe_next(request.query_params.get("next")),
        flash=request.query_params.get("flash", "") if not error else "",
    )
    cookie = Cookie(
        key=LOGIN_CSRF_COOKIE,
        value=token,
        path="/",
        httponly=True,
        samesite="strict",
        secure=secure(request),
    )
    return html_response(html, 401 if error else 200, [cookie])


def _safe_next(value: str | None) -> str:
    """Only a path of the UI itself: never another site."""
    if (
        value
        and value.startswith(("/ui", "/invite?"))
        and not value.startswith("//")
        and "\\" not in value
    ):
        return value
    return "/ui"


@get("/ui/login", opt=public(), include_in_schema=False)
async def login_page(request: Request[Any, Any, Any], platform: PlatformDep) -> Response[str]:
    return _login_form(platform, request)


@post("/ui/login", opt=public(), include_in_schema=False)
async def login_submit(
    request: Request[Any, Any, Any], platform: PlatformDep, access: AccessDep
) -> Response[Any]:
    """Check the password (as ``POST /api/v1/auth/login`` does) and start a session."""
    import hmac as _hmac

    form = await request.form()
    email = str(form.get("email") or "")[:320]
    password = str(form.get("password") or "")[:1024]
    offered = str(form.get("csrf_token") or "")
    expected = request.cookies.get(LOGIN_CSRF_COOKIE) or ""
    if not expected or not _hmac.compare_digest(expected, offered):
        gettext = ui_of(platform).gettext(choose_language(request, None))
        return _login_form(
            platform, request, email=email, error=gettext("Reload the page and try again.")
        )

    def check() -> str | None:
        from zhongtai.identity.api.auth import password_login

        return password_login(platform, access, email, password)

    try:
        user_id = await anyio.to_thread.run_sync(check)
    except HTTPException as exc:
        gettext = ui_of(platform).gettext(choose_language(request, None))
        if exc.status_code == 429:
            message = gettext("Too many failed attempts; try again later.")
        else:
            message = gettext("Wrong email or password.")
        return _login_form(platform, request, email=email, error=message)
    assert user_id is not None

    def start() -> str:
        from zhongtai.identity.browser import start_session

        with platform.db.transaction() as session:
            return start_session(session, platform, user_id, request.headers.get("user-agent", ""))

    token = await anyio.to_thread.run_sync(start)
    cookies = [
        session_cookie(platform, request, token),
        Cookie(key=LOGIN_CSRF_COOKIE, value="", path="/", max_age=0),
    ]
    return LitestarRedirect(
        path=_safe_next(str(form.get("next") or "")), status_code=303, cookies=cookies
    )


@post("/ui/logout", opt=authenticated(), include_in_schema=False)
async def logout_submit(request: Request[Any, Any, Any], platform: PlatformDep) -> Response[Any]:
    cookie = request.cookies.get(SESSION_COOKIE) or ""

    def end() -> None:
        from zhongtai.identity.browser import end_session

        with platform.db.transaction() as session:
            end_session(session, platform, cookie)

    await anyio.to_thread.run_sync(end)
    return LitestarRedirect(
        path="/ui/login",
        status_code=303,
        cookies=[Cookie(key=SESSION_COOKIE, value="", path="/", max_age=0)],
    )


@post("/ui/language", opt=authenticated(), include_in_schema=False)
async def choose_language_submit(
    request: Request[Any, Any, Any], platform: PlatformDep, access: AccessDep
) -> Response[Any]:
    """Keep the user's language (the user menu's choice)."""
    form = await request.form()
    lang = str(form.get("language") or "")
    if lang not in LANGUAGES:
        return html_response("unknown language", 400)

    def keep() -> None:
        with platform.db.transaction() as session:
            user = session.get(User, access.principal.user_id)
            if user is not None:
                user.language = lang

    await anyio.to_thread.run_sync(keep)
    back = _safe_next(str(form.get("next") or ""))
    cookie = Cookie(key="zt_lang", value=lang, path="/", samesite="lax", secure=secure(request))
    return LitestarRedirect(path=back, status_code=303, cookies=[cookie])


@get("/", opt=public(), include_in_schema=False)
async def root() -> LitestarRedirect:
    return LitestarRedirect(path="/ui", status_code=302)


@get("/ui/{rest:path}", opt=authenticated(), include_in_schema=False)
async def ui_not_found(request: Request[Any, Any, Any], platform: PlatformDep) -> Response[str]:
    """Any other address under ``/ui``: the UI's not-found page (signed-out: sign in)."""
    return html_response(not_found_html(platform, request, None), 404)


def _unauthorized(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """A page for a signed-out browser: to the sign-in form, and back afterwards."""
    if request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return LitestarRedirect(path=f"/ui/login?next={quote(target)}", status_code=303)
    return html_response("sign in again", 401)


def _ui_not_found(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    platform: Platform = request.app.state["platform"]
    return html_response(not_found_html(platform, request, None), 404)


def ui_routes(platform: Platform) -> list[Any]:
    """The UI's routes: sign-in, the panels' pages and every namespace's static files."""
    ui = UI(platform)
    platform.stash[UI_KEY] = ui
    handlers: list[Any] = [
        login_page,
        login_submit,
        logout_submit,
        choose_language_submit,
        ui_not_found,
    ]
    for entry in ui.pages:
        handlers += _page_handler(entry)
    statics = [
        create_static_files_router(
            path=f"/ui/static/{namespace}",
            directories=[folder],
            name=f"ui-static-{namespace}",
            opt=public(),
            include_in_schema=False,
            send_as_attachment=False,
            cache_control=None,
        )
        for namespace, folder in ui.static.items()
    ]
    from zhongtai.ui.invite import ROUTES as INVITE
    from zhongtai.ui.setup import ROUTES as SETUP

    return [
        root,
        *INVITE,
        Router(
            path="/",
            route_handlers=[*handlers, *SETUP, *statics],
            response_headers=SECURITY_HEADERS,
            exception_handlers={
                NotAuthorizedException: _unauthorized,
                NotFound: _ui_not_found,
            },
        ),
    ]
