"""The core's own panels: dashboard, projects, API keys and administration.

Each form goes through the same function as its API route (``handler.fn``), so the
rules, the audit row and the error messages are the API's; a refusal comes back as
``errors`` by field and the form is shown again with them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from litestar.exceptions import HTTPException
from markupsafe import Markup
from pydantic import BaseModel, ValidationError

from zhongtai.ui.panels import Panel, Redirect, View

__all__ = ["PANELS", "call_api", "render_cards"]

T = {
    "dashboard": {"en": "Dashboard", "zh": "仪表盘"},
    "projects": {"en": "Projects", "zh": "项目"},
    "keys": {"en": "API keys", "zh": "API 密钥"},
    "settings": {"en": "Project settings", "zh": "项目设置"},
    "account": {"en": "Your account", "zh": "我的账户"},
    "users": {"en": "Users", "zh": "用户"},
    "plugins": {"en": "Plugins", "zh": "插件"},
    "audit": {"en": "Audit log", "zh": "审计日志"},
    "activity": {"en": "Recent activity", "zh": "最近活动"},
}


def call_api(
    handler: Any, view: View, model: type[BaseModel] | None = None, **kwargs: Any
) -> tuple[Any, dict[str, str]]:
    """Run an API route's function for a form; return (result, errors by field).

    With ``model``, ``data`` (default: the form's non-empty fields) is validated into
    it first and passed as ``data``.
    """
    from zhongtai.identity.access import Forbidden
    from zhongtai.identity.guard import ACCESS_OPT, Access

    # The route's own permission: what the API function checks (and lists) with.
    access = Access(view.platform, view.request.scope, handler.opt.get(ACCESS_OPT))
    try:
        if model is not None:
            given = kwargs.pop("data", None)
            fields = given if given is not None else {k: v for k, v in view.form.items() if v}
            kwargs["data"] = model.model_validate(fields)
        return handler.fn(platform=view.platform, access=access, **kwargs), {}
    except ValidationError as exc:
        errors: dict[str, str] = {}
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "_"
            errors.setdefault(key, err["msg"])
        return None, errors
    except HTTPException as exc:
        extra = exc.extra if isinstance(exc.extra, list) else []
        field = next((e.get("key") for e in extra if isinstance(e, dict)), None) or "_"
        return None, {str(field): str(exc.detail)}
    except Forbidden as exc:
        return None, {"_": f"you may not do this here (it takes {exc})"}


def render_cards(view: View) -> list[Markup]:
    """The dashboard's cards the caller may see, each rendered on its own."""
    from zhongtai.ui.web import _can_see, render_entry, ui_of

    out = []
    with view.platform.db.transaction() as session:
        for entry in ui_of(view.platform).cards:
            if not _can_see(view, session, entry):
                continue
            try:
                data = entry.panel.context(view) if entry.panel.context else {}
            except Exception as exc:
                data = {"card_error": f"{type(exc).__name__}: {exc}"}
            out.append(render_entry(view, session, entry, data))
    return out


def _dashboard(view: View) -> Mapping[str, Any]:
    return {"cards": render_cards(view)}


# -- projects ------------------------------------------------------------------


def _projects(view: View) -> Mapping[str, Any]:
    from sqlalchemy import select

    from zhongtai.identity.api import projects
    from zhongtai.identity.guard import Access
    from zhongtai.identity.models import Organization, OrgMember
    from zhongtai.web.pagination import page_for

    reader = Access(view.platform, view.request.scope, "core.project.read")
    try:
        request = page_for(view.platform.settings, None, view.query.get("cursor") or None)
    except HTTPException:
        request = page_for(view.platform.settings, None, None)
    page = projects._list_page(view.platform, reader, None, view.query.get("q") or None, request)
    with view.platform.db.transaction() as session:
        orgs = session.execute(
            select(Organization.slug, Organization.name)
            .join(OrgMember, OrgMember.org_id == Organization.id)
            .where(OrgMember.user_id == view.access.principal.user_id)
            .order_by(Organization.name)
        ).all()
    return {"page": page, "orgs": orgs, "q": view.query.get("q") or ""}


def _create_project(view: View) -> Redirect | Mapping[str, Any]:
    from zhongtai.identity.api import orgs, projects

    if view.form.get("action") == "create-org":
        fields = {k: view.form.get(k) for k in ("name", "slug") if view.form.get(k)}
        _, errors = call_api(orgs.create_org, view, orgs.OrgIn, data=fields)
        if errors:
            return {**_projects(view), "org_errors": errors, "org_values": dict(view.form)}
        return Redirect("/ui/projects", flash="organization created")
    fields = {
        k: view.form.get(k) for k in ("org", "name", "slug", "description") if view.form.get(k)
    }
    created, errors = call_api(projects.create_project, view, projects.ProjectIn, data=fields)
    if errors:
        return {**_projects(view), "errors": errors, "values": dict(view.form)}
    return Redirect(f"/ui/projects?project={created['id']}", flash="project created")


def _settings(view: View) -> Mapping[str, Any]:
    """The current project's settings and members (members' roles as the API gives them)."""
    from zhongtai.identity.api import projects

    if view.project is None:
        from zhongtai.identity.access import NotFound

        raise NotFound("project")
    project, _ = call_api(projects.get_project, view, project=view.project.id)
    members, member_errors = call_api(
        projects.list_project_members,
        view,
        project=view.project.id,
        q=view.query.get("q") or None,
        inherited=None,
        limit=None,
        cursor=view.query.get("cursor") or None,
    )
    return {
        "project": project or {},
        "members": members or {"items": [], "next_cursor": None},
        "roles": ROLE_NAMES,
        "can_write": _holds(view, "core.project.write"),
        "can_manage": _holds(view, "core.project.members.manage"),
        "errors": member_errors,
    }


ROLE_NAMES = ("viewer", "developer", "maintainer", "admin", "owner")


def _holds(view: View, permission: str) -> bool:
    if view.project is None:
        return False
    with view.platform.db.transaction() as session:
        return view.access.has(session, permission, project_id=view.project.id)


def _settings_post(view: View) -> Redirect | Mapping[str, Any]:
    from zhongtai.identity.api import orgs, projects

    assert view.project is not None  # _require() let the request in
    project = view.project.id
    action = view.form.get("action")
    here = view.url("/ui/settings")
    if action == "update":
        # Only what the form sent; a field left empty is not a change (but the
        # description, which may be emptied).
        fields = {
            k: view.form[k]
            for k in ("name", "slug", "description")
            if k in view.form and (view.form[k] != "" or k == "description")
        }
        _, errors = call_api(
            projects.update_project, view, projects.ProjectPatch, data=fields, project=project
        )
        if errors:
            return {**_settings(view), "errors": errors, "values": dict(view.form)}
        return Redirect(here, flash="saved")
    if action == "add-member":
        data = {"email": view.form.get("email", ""), "role": view.form.get("role", "")}
        _, errors = call_api(
            projects.add_project_member, view, orgs.MemberIn, data=data, project=project
        )
        if errors:
            return {**_settings(view), "member_errors": errors, "member_values": data}
        return Redirect(here, flash="member added")
    user_id = str(view.form.get("user", ""))
    if action == "set-role":
        data = {"role": view.form.get("role", "")}
        _, errors = call_api(
            projects.update_project_member,
            view,
            orgs.RolePatch,
            data=data,
            project=project,
            user_id=user_id,
        )
    elif action == "remove-member":
        _, errors = call_api(projects.remove_project_member, view, project=project, user_id=user_id)
    else:
        errors = {"action": "unknown action"}
    if errors:
        return {**_settings(view), "member_errors": errors}
    return Redirect(here, flash="members changed")


# -- API keys --------------------------------------------------------------------


def _keys(view: View) -> Mapping[str, Any]:
    from zhongtai.identity.api import keys

    page, _ = call_api(
        keys.list_keys, view, user=None, limit=None, cursor=view.query.get("cursor") or None
    )
    return {"page": page or {"items": [], "next_cursor": None}}


def _keys_post(view: View) -> Redirect | Mapping[str, Any]:
    from zhongtai.identity.api import keys

    if view.form.get("action") == "revoke":
        _, errors = call_api(keys.revoke_key, view, key_id=str(view.form.get("key", "")))
        if errors:
            return {"errors": errors, **_keys(view)}
        return Redirect("/ui/keys", flash="key revoked")
    project = view.form.get("project") or None
    created, errors = call_api(
        keys.create_key,
        view,
        keys.ApiKeyIn,
        data={"name": view.form.get("name", ""), "project": project},
    )
    if errors:
        return {"errors": errors, "values": dict(view.form), **_keys(view)}
    return {"created": created, **_keys(view)}


# -- the signed-in user's account ------------------------------------------------


def _account(view: View) -> Mapping[str, Any]:
    from zhongtai.identity.models import User

    with view.platform.db.transaction() as session:
        user = session.get(User, view.access.principal.user_id)
        assert user is not None
        return {
            "email": user.email,
            "display_name": user.display_name,
            "minimum": view.platform.settings.identity.password_min_length,
        }


def _account_post(view: View) -> Redirect | Mapping[str, Any]:
    from zhongtai.identity.api import auth

    if view.form.get("action") == "profile":
        data = {"display_name": str(view.form.get("display_name", ""))}
        _, errors = call_api(auth.update_me, view, auth.ProfileIn, data=data)
        if errors:
            return {**_account(view), "errors": errors, "values": dict(view.form)}
        return Redirect("/ui/account", flash="saved")
    data = {
        "current_password": str(view.form.get("current_password", "")),
        "new_password": str(view.form.get("new_password", "")),
    }
    if data["new_password"] != view.form.get("new_password_again"):
        return {**_account(view), "password_errors": {"new_password_again": "differs"}}
    _, errors = call_api(auth.change_password, view, auth.PasswordIn, data=data)
    if errors:
        return {**_account(view), "password_errors": errors}
    # Every session of the account has ended, this one too: sign in with the new one.
    return Redirect("/ui/login", flash="password changed")


# -- administration -------------------------------------------------------------


def _users(view: View) -> Mapping[str, Any]:
    from zhongtai.identity.api import users

    page, errors = call_api(
        users.list_users,
        view,
        q=view.query.get("q") or None,
        active=None,
        limit=None,
        cursor=view.query.get("cursor") or None,
    )
    return {
        "page": page or {"items": [], "next_cursor": None},
        "errors": errors,
        "me": view.access.principal.user_id,
        "minimum": view.platform.settings.identity.password_min_length,
    }


def _users_post(view: View) -> Redirect | Mapping[str, Any]:
    """Create an account, or switch one's active or superuser flag (API rules apply:
    nobody deactivates or demotes themselves)."""
    from zhongtai.identity.api import users

    action = view.form.get("action")
    if action == "create":
        data = {
            "email": view.form.get("email", ""),
            "password": view.form.get("password", ""),
            "display_name": view.form.get("display_name", ""),
            "is_superuser": view.form.get("is_superuser") == "on",
        }
        _, errors = call_api(users.create_user, view, users.UserCreate, data=data)
        if errors:
            values = {k: v for k, v in view.form.items() if k != "password"}
            return {**_users(view), "create_errors": errors, "values": values}
        return Redirect("/ui/admin/users", flash="user created")
    flags = {
        "activate": {"is_active": True},
        "deactivate": {"is_active": False},
        "grant-superuser": {"is_superuser": True},
        "revoke-superuser": {"is_superuser": False},
    }
    if action not in flags:
        return {**_users(view), "errors": {"action": "unknown action"}}
    _, errors = call_api(
        users.update_user,
        view,
        users.UserUpdate,
        data=flags[str(action)],
        user_id=str(view.form.get("user", "")),
    )
    if errors:
        return {**_users(view), "errors": errors}
    return Redirect("/ui/admin/users", flash="user changed")


def _plugins(view: View) -> Mapping[str, Any]:
    records = sorted(view.platform.plugins.records.values(), key=lambda r: (not r.builtin, r.name))
    return {"plugins": [r.to_dict() | {"builtin": r.builtin} for r in records]}


AUDIT_FILTERS = ("actor", "action", "target_kind", "target_id", "project", "org", "outcome")


def _audit(view: View) -> Mapping[str, Any]:
    from zhongtai.identity.api import audit

    values = {k: view.query.get(k) or None for k in (*AUDIT_FILTERS, "since", "until")}
    try:
        filters = audit.provide_filters(**values)
    except HTTPException as exc:
        extra = exc.extra if isinstance(exc.extra, list) else []
        field = next((e.get("key") for e in extra if isinstance(e, dict)), None) or "_"
        return {"page": {"items": [], "next_cursor": None}, "errors": {field: exc.detail}}
    page, errors = call_api(
        audit.list_audit,
        view,
        filters=filters,
        limit=None,
        cursor=view.query.get("cursor") or None,
    )
    return {
        "page": page or {"items": [], "next_cursor": None},
        "errors": errors,
        "filters": {k: v or "" for k, v in values.items()},
    }


def _activity(view: View) -> Mapping[str, Any]:
    """The dashboard's recent activity: the current project's last audit rows."""
    from sqlalchemy import select

    from zhongtai.identity.models import AuditEvent

    if view.project is None:
        return {"items": []}
    with view.platform.db.transaction() as session:
        rows = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.project_id == view.project.id)
            .order_by(AuditEvent.id.desc())
            .limit(10)
        ).all()
        return {
            "items": [{"at": r.occurred_at, "action": r.action, "outcome": r.outcome} for r in rows]
        }


def _page(
    name: str,
    path: str,
    icon: str,
    order: int,
    context: Callable[[View], Mapping[str, Any]],
    **kwargs: Any,
) -> Panel:
    return Panel(
        name=name,
        title=T[name],
        path=path,
        template=f"{name}.html",
        icon=icon,
        order=order,
        context=context,
        **kwargs,
    )


PANELS = [
    _page("dashboard", "/", "home", 0, _dashboard),
    _page("projects", "/projects", "folder", 10, _projects, on_post=_create_project),
    _page(
        "settings",
        "/settings",
        "gear",
        70,
        _settings,
        on_post=_settings_post,
        permission="core.project.read",
    ),
    _page("keys", "/keys", "key", 80, _keys, on_post=_keys_post),
    _page("account", "/account", "user", 85, _account, on_post=_account_post, nav=False),
    _page(
        "users",
        "/admin/users",
        "users",
        90,
        _users,
        on_post=_users_post,
        permission="core.users.manage",
    ),
    _page("plugins", "/admin/plugins", "puzzle", 91, _plugins, permission="core.users.manage"),
    _page("audit", "/admin/audit", "list", 92, _audit, permission="core.users.manage"),
    Panel(
        name="activity",
        title=T["activity"],
        kind="card",
        template="activity_card.html",
        icon="list",
        order=50,
        permission="core.project.read",
        context=_activity,
    ),
]
