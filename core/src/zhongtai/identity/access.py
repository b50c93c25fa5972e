"""What a principal may do, decided in SQL.

Two kinds of question, one set of rules:

* **Lists.** :func:`visible_project_ids` returns one ``SELECT projects.id`` that a list
  endpoint puts in its ``WHERE`` (``Model.project_id.in_(visible_project_ids(...))``).
  List endpoints must filter with it and never call :func:`has_permission` per row:
  a permission check per row is the hot path that sank Datasette's
  ``permission_allowed`` (STYLE.md, pitfalls). 10,000 projects cost one statement.
* **One object.** :func:`has_permission` and :func:`require` answer for one project
  or organization with one small indexed query. :func:`require` raises
  :class:`NotFound` when the principal cannot even read the project, so another
  project's objects look as if they did not exist (404, never 403), and
  :class:`Forbidden` when it can read but not act (403).

The rules:

* A project membership's role wins over the organization's role in that project,
  in both directions (it may lower it): ``COALESCE(pm.role, om.role)``.
* Superusers hold every permission; site-scope permissions are theirs alone.
* An inactive user holds nothing (checked in the database, not trusted from the
  principal, so deactivation takes effect at once).
* An API key only narrows its owner: to ``key_project_id`` (such a key holds no
  organization- or site-scope permission) and to ``key_permissions``. The
  permission subset does not hide projects from :func:`require`: the key's owner can
  see the project, so an excluded permission is 403, not 404.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Hashable
from typing import Any, Protocol

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    String,
    and_,
    bindparam,
    false,
    func,
    select,
    union_all,
)
from sqlalchemy.orm import Session, aliased

from zhongtai.identity.models import Organization, OrgMember, Project, ProjectMember, User
from zhongtai.identity.permissions import ORG_READ, PROJECT_READ
from zhongtai.identity.principal import Principal
from zhongtai.identity.roles import Permission, Role


class NotFound(LookupError):
    """The principal cannot read the target: answer 404, as if it did not exist."""


class Forbidden(PermissionError):
    """The principal can read the target but lacks the permission: answer 403."""


def _active_user(user_id: str) -> ColumnElement[bool]:
    # Joined as a one-row table: an inactive or deleted user makes every query empty.
    return and_(User.id == user_id, User.is_active)


def _role_or_none(value: Any) -> Role | None:
    return None if value is None else Role(value)


def project_role(session: Session, user_id: str, project_id: str) -> Role | None:
    """The user's effective role in a project.

    Args:
        session: An open session.
        user_id: The user.
        project_id: The project.

    Returns:
        The project membership's role if there is one (it overrides the organization
        role, also downwards), else the role of the organization membership in the
        project's organization, else None (also when the project does not exist).
    """
    pm = aliased(ProjectMember)
    om = aliased(OrgMember)
    stmt = (
        select(func.coalesce(pm.role, om.role))
        .select_from(Project)
        .outerjoin(pm, and_(pm.project_id == Project.id, pm.user_id == user_id))
        .outerjoin(om, and_(om.org_id == Project.org_id, om.user_id == user_id))
        .where(Project.id == project_id)
    )
    return _role_or_none(session.scalar(stmt))


def org_role(session: Session, user_id: str, org_id: str) -> Role | None:
    """The user's role in an organization, or None without a membership.

    Args:
        session: An open session.
        user_id: The user.
        org_id: The organization.

    Returns:
        The organization membership's role, or None.
    """
    stmt = select(OrgMember.role).where(OrgMember.org_id == org_id, OrgMember.user_id == user_id)
    return _role_or_none(session.scalar(stmt))


def _nothing() -> Select[str]:
    # Still a SELECT of project ids, so callers can use it in IN (...) unchanged.
    return select(Project.id).where(false())


def key_admits(principal: Principal, permission: Permission, project_id: str | None) -> bool:
    """Whether the API key's own scope (if any) admits ``permission`` here."""
    if principal.key_project_id is not None and (
        permission.scope != "project" or project_id != principal.key_project_id
    ):
        return False
    return principal.key_permissions is None or permission.name in principal.key_permissions


def visible_project_ids(principal: Principal, permission: Permission) -> Select[str]:
    """The projects where ``principal`` holds ``permission``, as one SQL expression.

    List endpoints filter with it, e.g.
    ``select(Dataset).where(Dataset.project_id.in_(visible_project_ids(p, DATASET_READ)))``,
    and never check rows one by one. The query starts from the user's memberships
    (project memberships with a high enough role, UNION ALL the projects of
    organizations where the organization role is high enough and no project
    membership overrides it), so it costs what the user belongs to, not the number
    of projects: 100 visible of 10,000 is a fraction of a millisecond on SQLite.

    Args:
        principal: Who asks.
        permission: What they want to do there. For an organization-scope permission,
            the projects of organizations where the organization role holds it.

    Returns:
        ``SELECT projects.id …``; empty for an inactive user, a site-scope permission
        held by a non-superuser, or a key whose scope excludes the permission.
    """
    if sees_nothing(principal, permission):
        return _nothing()
    template, params = visible_project_ids_template(principal, permission)
    return template.params(params)


def visible_project_ids_template(
    principal: Principal, permission: Permission
) -> tuple[Select[Any], dict[str, Any]]:
    """:func:`visible_project_ids` as a cached statement and its parameters.

    For hot list endpoints that build their own statement once and execute it with
    parameters (building SQLAlchemy statements per request costs more than running
    them). Bind parameter names start with ``zt_``. The caller must first rule out
    the cases where :func:`visible_project_ids` returns nothing (use
    :func:`sees_nothing`).
    """
    if principal.is_superuser:
        kind = "all"
    elif permission.scope == "org":
        kind = "org"
    else:
        kind = "project"
    params: dict[str, Any] = {
        "zt_uid": principal.user_id,
        "zt_min_role": int(permission.min_role),
    }
    if principal.key_project_id is not None:
        params["zt_key_project"] = principal.key_project_id
    return _visible_template(kind, principal.key_project_id is not None), params


def sees_nothing(principal: Principal, permission: Permission) -> bool:
    """Whether ``permission`` is out of the principal's reach everywhere (no query needed)."""
    if principal.key_permissions is not None and permission.name not in principal.key_permissions:
        return True
    if principal.key_project_id is not None and permission.scope != "project":
        return True
    return permission.scope == "site" and not principal.is_superuser


@functools.cache
def _visible_template(kind: str, key_project: bool) -> Select[Any]:
    uid = bindparam("zt_uid", type_=String)
    min_role = bindparam("zt_min_role", type_=Integer)
    active = select(User.id).where(User.id == uid, User.is_active).exists()
    stmt: Select[Any]
    column: Any
    if kind == "all":
        stmt = select(Project.id).where(active)
        column = Project.id
    elif kind == "org":
        # The organization role alone decides: project memberships don't reach it.
        stmt = (
            select(Project.id)
            .join(OrgMember, OrgMember.org_id == Project.org_id)
            .where(OrgMember.user_id == uid, OrgMember.role >= min_role, active)
        )
        column = Project.id
    else:
        # Start from the user's memberships, not from every project: the
        # (user_id) indexes make this cost what the user belongs to, whatever the
        # number of projects. Same rule as COALESCE(pm.role, om.role) >= min_role:
        # a project membership decides where there is one (also downwards), the
        # organization role everywhere else.
        own = aliased(ProjectMember, name="zt_own_pm")
        direct = select(ProjectMember.project_id.label("id")).where(
            ProjectMember.user_id == uid, ProjectMember.role >= min_role
        )
        through_org = (
            select(Project.id.label("id"))
            .join(OrgMember, OrgMember.org_id == Project.org_id)
            .where(
                OrgMember.user_id == uid,
                OrgMember.role >= min_role,
                ~select(own.id).where(own.project_id == Project.id, own.user_id == uid).exists(),
            )
        )
        ids = union_all(direct, through_org).subquery("zt_visible")
        stmt = select(ids.c.id).where(active)
        column = ids.c.id
    if key_project:
        stmt = stmt.where(column == bindparam("zt_key_project", type_=String))
    return stmt


class Memo(Protocol):
    """Where answers about one target may be kept (the identity cache, per request)."""

    def get(self, key: Hashable) -> Any: ...

    def put(self, key: Hashable, value: Any) -> None: ...


@functools.cache
def _project_access_statement() -> Any:
    """Built once: constructing it costs more than running it."""
    uid = bindparam("zt_uid", type_=String)
    pm = aliased(ProjectMember, name="zt_pm")
    om = aliased(OrgMember, name="zt_om")
    return (
        select(func.coalesce(pm.role, om.role))
        .select_from(Project)
        .join(User, and_(User.id == uid, User.is_active.is_(True)))
        .outerjoin(pm, and_(pm.project_id == Project.id, pm.user_id == uid))
        .outerjoin(om, and_(om.org_id == Project.org_id, om.user_id == uid))
        .where(Project.id == bindparam("zt_project", type_=String))
    )


@functools.cache
def _org_access_statement() -> Any:
    uid = bindparam("zt_uid", type_=String)
    om = aliased(OrgMember, name="zt_om")
    return (
        select(om.role)
        .select_from(Organization)
        .join(User, and_(User.id == uid, User.is_active.is_(True)))
        .outerjoin(om, and_(om.org_id == Organization.id, om.user_id == uid))
        .where(Organization.id == bindparam("zt_org", type_=String))
    )


def _project_access(
    session: Session, principal: Principal, project_id: str, memo: Memo | None = None
) -> tuple[bool, Role | None]:
    """One query: whether the project exists for an active user, and the user's role there."""
    key = ("project-access", principal.user_id, project_id)
    if memo is not None and (hit := memo.get(key)) is not None:
        return hit  # type: ignore[no-any-return]
    params = {"zt_uid": principal.user_id, "zt_project": project_id}
    row = session.execute(_project_access_statement(), params).first()
    answer = (False, None) if row is None else (True, _role_or_none(row[0]))
    if memo is not None:
        memo.put(key, answer)
    return answer


def _org_access(
    session: Session, principal: Principal, org_id: str, memo: Memo | None = None
) -> tuple[bool, Role | None]:
    """One query: whether the organization exists for an active user, and the user's role."""
    key = ("org-access", principal.user_id, org_id)
    if memo is not None and (hit := memo.get(key)) is not None:
        return hit  # type: ignore[no-any-return]
    row = session.execute(
        _org_access_statement(), {"zt_uid": principal.user_id, "zt_org": org_id}
    ).first()
    answer = (False, None) if row is None else (True, _role_or_none(row[0]))
    if memo is not None:
        memo.put(key, answer)
    return answer


def _user_is_active(session: Session, user_id: str) -> bool:
    return bool(session.scalar(select(User.is_active).where(User.id == user_id)))


def _role_admits(principal: Principal, permission: Permission, role: Role | None) -> bool:
    return principal.is_superuser or (role is not None and role >= permission.min_role)


def _target(
    permission: Permission, project_id: str | None, org_id: str | None
) -> tuple[str | None, str | None]:
    if permission.scope == "project" and project_id is None:
        raise ValueError(f"{permission.name} is checked against a project: pass project_id")
    if permission.scope == "org" and org_id is None:
        raise ValueError(f"{permission.name} is checked against an organization: pass org_id")
    return project_id, org_id


def has_permission(
    session: Session,
    principal: Principal,
    permission: Permission,
    *,
    project_id: str | None = None,
    org_id: str | None = None,
    memo: Memo | None = None,
) -> bool:
    """Whether ``principal`` holds ``permission`` on one project or organization.

    The same rules as :func:`visible_project_ids`, for a single target; for lists use
    that function instead of calling this per row.

    Args:
        session: An open session.
        principal: Who asks.
        permission: What they want to do.
        project_id: The project, for a project-scope permission.
        org_id: The organization, for an organization-scope permission.

    Returns:
        True when the principal holds the permission there.

    Raises:
        ValueError: The target the permission's scope needs is missing.
    """
    project_id, org_id = _target(permission, project_id, org_id)
    if not key_admits(principal, permission, project_id):
        return False
    if permission.scope == "site":
        return principal.is_superuser and _user_is_active(session, principal.user_id)
    if permission.scope == "org":
        assert org_id is not None
        found, role = _org_access(session, principal, org_id, memo)
    else:
        assert project_id is not None
        found, role = _project_access(session, principal, project_id, memo)
    return found and _role_admits(principal, permission, role)


def require(
    session: Session,
    principal: Principal,
    permission: Permission,
    *,
    project_id: str | None = None,
    org_id: str | None = None,
    read_permission: Permission | None = None,
    memo: Memo | None = None,
) -> None:
    """Raise unless ``principal`` holds ``permission`` on the target.

    Resolve ``project_id`` from the stored object, never from the request.

    Args:
        session: An open session.
        principal: Who asks.
        permission: What they want to do.
        project_id: The project, for a project-scope permission.
        org_id: The organization, for an organization-scope permission.
        read_permission: What it takes to know the target exists; defaults to
            ``core.project.read`` or ``core.org.read`` by the permission's scope.
        memo: Keeps the caller's role on the target between requests (the identity
            cache); the answers are those of the database when the request began.

    Raises:
        NotFound: The principal cannot read the target (or it does not exist, or the
            user is inactive, or an API key is scoped to another project).
        Forbidden: It can read the target but lacks the permission; always for a
            site-scope permission and a non-superuser.
        ValueError: The target the permission's scope needs is missing.
    """
    project_id, org_id = _target(permission, project_id, org_id)
    if permission.scope == "site":
        if not has_permission(session, principal, permission):
            raise Forbidden(permission.name)
        return

    if permission.scope == "org":
        assert org_id is not None
        found, role = _org_access(session, principal, org_id, memo)
        read = read_permission or ORG_READ
    else:
        assert project_id is not None
        found, role = _project_access(session, principal, project_id, memo)
        read = read_permission or PROJECT_READ

    # Reading ignores the key's permission subset (see the module docstring) but not
    # its project: a key for project A must not learn that project B exists.
    reader = dataclasses.replace(principal, key_permissions=None)
    if not (found and key_admits(reader, read, project_id) and _role_admits(reader, read, role)):
        raise NotFound(project_id or org_id)
    if not (
        key_admits(principal, permission, project_id) and _role_admits(principal, permission, role)
    ):
        raise Forbidden(permission.name)
