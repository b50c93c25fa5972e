"""Identity API: projects and their members.

Routes (``{project}`` is a project id):

=======  ================================================  =================================
GET      /api/v1/projects                                   ``core.project.read`` (as a filter)
POST     /api/v1/projects                                   ``core.org.write`` on the org
GET      /api/v1/projects/{project}                         ``core.project.read``
PATCH    /api/v1/projects/{project}                         ``core.project.write``
DELETE   /api/v1/projects/{project}                         ``core.project.delete``
GET      /api/v1/projects/{project}/members                 ``core.project.members.read``
POST     /api/v1/projects/{project}/members                 ``core.project.members.manage``
PATCH    /api/v1/projects/{project}/members/{user_id}       ``core.project.members.manage``
DELETE   /api/v1/projects/{project}/members/{user_id}       ``core.project.members.manage``
=======  ================================================  =================================

A project the caller cannot read is a 404 on every route, and never appears in a list.
The list is one SQL statement filtered with
:meth:`~zhongtai.identity.guard.Access.visible_projects`, whatever the number of
projects.

Member routes manage *explicit* project memberships, which override the organization
role in the project in both directions. The member list also shows members who only
inherit a role from the organization (``inherited: true``); to change their role in
this project, add them. The rules of :mod:`zhongtai.identity.api.orgs` apply with the
caller's effective role in the project: no granting above it, and no changing a member
whose effective role is above it (so a project admin cannot demote an organization
owner in the project).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Annotated, Any

import anyio.to_thread
from litestar import MediaType, Response, delete, get, patch, post
from litestar.exceptions import NotFoundException
from litestar.params import JSONBody, QueryParameter
from litestar.serialization import encode_json
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Integer, String, and_, bindparam, func, or_, select, union
from sqlalchemy.orm import Session, aliased

from zhongtai.identity import access as rules
from zhongtai.identity.access import org_role, project_role
from zhongtai.identity.api.orgs import (
    MemberIn,
    PathRef,
    RolePatch,
    Slug,
    add_unique,
    check_grant,
    conflict,
    contains,
    find_user,
    resolve_org,
    role_name,
    slug_for,
    user_dict,
)
from zhongtai.identity.guard import Access, AccessDep, requires
from zhongtai.identity.models import Organization, OrgMember, Project, ProjectMember, User
from zhongtai.identity.permissions import (
    ORG_WRITE,
    PROJECT_DELETE,
    PROJECT_MEMBERS_MANAGE,
    PROJECT_MEMBERS_READ,
    PROJECT_READ,
    PROJECT_WRITE,
)
from zhongtai.identity.roles import Role
from zhongtai.web.pagination import PageRequest, encode_cursor, page_for, paginate
from zhongtai.web.params import PlatformDep

if TYPE_CHECKING:
    from zhongtai.platform import Platform

TAGS = ["identity"]


def _project_dict(project: Project, org_slug: str, role: int | None) -> dict[str, Any]:
    return {
        "id": project.id,
        "org": {"id": project.org_id, "slug": org_slug},
        "slug": project.slug,
        "name": project.name,
        "description": project.description,
        "created_at": project.created_at.isoformat(),
        "role": role_name(role),
    }


def _slug_taken(session: Session, org_id: str, slug: str, *, besides: str | None = None) -> bool:
    stmt = select(Project.id).where(Project.org_id == org_id, Project.slug == slug)
    if besides is not None:
        stmt = stmt.where(Project.id != besides)
    return session.scalar(stmt) is not None


def _project_for(
    session: Session, access: Access, project_id: str, permission: Any = None
) -> Project:
    """The project, after ``access.require`` on it (404 when the caller cannot read it)."""
    project = session.get(Project, project_id)
    access.require(session, project_id=project.id if project else None, permission=permission)
    assert project is not None
    return project


def _org_slug(session: Session, org_id: str) -> str:
    return session.scalar(select(Organization.slug).where(Organization.id == org_id)) or ""


def _role_value(role: Role | None) -> int | None:
    return None if role is None else int(role)


# --------------------------------------------------------------------------- projects


class ProjectIn(BaseModel):
    """A new project in organization ``org`` (id or slug); ``slug`` defaults from ``name``."""

    model_config = ConfigDict(defer_build=True, extra="forbid", str_strip_whitespace=True)

    org: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    slug: Slug | None = None
    description: str = Field(default="", max_length=10_000)


class ProjectPatch(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", str_strip_whitespace=True)

    name: str | None = Field(default=None, min_length=1, max_length=200)
    slug: Slug | None = None
    description: str | None = Field(default=None, max_length=10_000)


@get("/api/v1/projects", tags=TAGS, opt=requires(PROJECT_READ))
async def list_projects(
    platform: PlatformDep,
    access: AccessDep,
    org: Annotated[str | None, QueryParameter(min_length=1, max_length=64)] = None,
    q: Annotated[str | None, QueryParameter(max_length=200)] = None,
    limit: Annotated[int | None, QueryParameter()] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
) -> Response[bytes]:
    """Projects the caller can read, oldest first, paginated; one SQL statement.

    Filters: ``org`` (an organization id or slug; another organization's projects
    stay invisible), ``q`` (a substring of the name or slug). Each item carries the
    caller's effective ``role`` there (null for a superuser without a membership).

    The body is ``{"items": [...], "next_cursor": ...}``. Everything in it comes from
    identity tables, so the encoded page is kept until the next write to them
    (:meth:`Access.remember`): the project switcher asks for it on every page.
    """
    page = page_for(platform.settings, limit, cursor)
    key = ("projects", org, q, page.limit, page.after)
    body: bytes | None = access.remembered(key)
    if body is None:
        found = await anyio.to_thread.run_sync(_list_page, platform, access, org, q, page)
        body = encode_json(found)
        access.remember(key, body)
    return Response(body, media_type=MediaType.JSON)


def _list_page(
    platform: Platform, access: Access, org: str | None, q: str | None, page: PageRequest
) -> dict[str, Any]:
    principal = access.principal
    permission = access.permission()
    if rules.sees_nothing(principal, permission):
        return {"items": [], "next_cursor": None}
    visible, params = rules.visible_project_ids_template(principal, permission)
    statement = _list_statement(visible, org is not None, bool(q), page.after is not None)
    params.update(zt_limit=page.limit + 1)
    if org is not None:
        params["zt_org"] = org
    if q:
        params["zt_q"] = _like_pattern(q)
    if page.after is not None:
        params["zt_after"] = page.after
    # A plain connection: a read of columns needs none of the ORM session's work.
    with platform.db.engine.connect() as connection:
        rows = connection.execute(statement, params).all()
    more = len(rows) > page.limit
    rows = rows[: page.limit]
    return {
        "items": [
            {
                "id": pid,
                "org": {"id": org_id, "slug": org_slug},
                "slug": slug,
                "name": name,
                "description": description,
                "created_at": created_at.isoformat(),
                "role": role_name(role),
            }
            for pid, org_id, org_slug, slug, name, description, created_at, role in rows
        ],
        "next_cursor": encode_cursor(rows[-1][0]) if more and rows else None,
    }


def _like_pattern(text: str) -> str:
    """``%text%`` for a case-insensitive LIKE with ``\\`` escaping ``%``, ``_`` and itself."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@functools.lru_cache(maxsize=64)
def _list_statement(visible: Any, by_org: bool, by_text: bool, after: bool) -> Any:
    """The projects list, built once per shape and run with parameters.

    This is the hot list (issue 3 benchmarks it): building a SQLAlchemy statement per
    request costs more than running it, and loading ORM objects several times more.
    """
    uid = bindparam("zt_uid", type_=String)
    pm = aliased(ProjectMember, name="zt_pm")
    om = aliased(OrgMember, name="zt_om")
    query = (
        select(
            Project.id,
            Project.org_id,
            Organization.slug,
            Project.slug,
            Project.name,
            Project.description,
            Project.created_at,
            func.coalesce(pm.role, om.role),
        )
        .join(Organization, Organization.id == Project.org_id)
        .outerjoin(pm, and_(pm.project_id == Project.id, pm.user_id == uid))
        .outerjoin(om, and_(om.org_id == Project.org_id, om.user_id == uid))
        # correlate(None): the filter reads ``projects`` on its own, never the outer row.
        .where(Project.id.in_(visible.correlate(None)))
    )
    if by_org:
        # An id wins over a slug, as for /orgs/{org}; still part of the one statement.
        ref = bindparam("zt_org", type_=String)
        by_id = select(Organization.id).where(Organization.id == ref).scalar_subquery()
        by_slug = select(Organization.id).where(Organization.slug == ref).scalar_subquery()
        query = query.where(Project.org_id == func.coalesce(by_id, by_slug))
    if by_text:
        pattern = bindparam("zt_q", type_=String)
        query = query.where(
            or_(
                func.lower(Project.name).like(pattern, escape="\\"),
                func.lower(Project.slug).like(pattern, escape="\\"),
            )
        )
    if after:
        query = query.where(Project.id > bindparam("zt_after", type_=String))
    return query.order_by(Project.id).limit(bindparam("zt_limit", type_=Integer))


@post("/api/v1/projects", tags=TAGS, sync_to_thread=True, opt=requires(ORG_WRITE))
def create_project(
    platform: PlatformDep, access: AccessDep, data: JSONBody[ProjectIn]
) -> dict[str, Any]:
    """Create a project in an organization where the caller holds ``core.org.write``.

    An organization the caller cannot see is a 404; a slug taken in the organization
    a 409 naming ``slug``. Unless the caller is an organization owner or admin (who
    hold every project role through the organization), they become the project's
    owner.
    """
    access.audit(action="project.create")
    slug = slug_for(data.slug, data.name)
    uid = access.principal.user_id
    with platform.db.transaction() as session:
        org = resolve_org(session, data.org)
        access.require(session, org_id=org.id if org else None)
        assert org is not None
        if _slug_taken(session, org.id, slug):
            raise conflict("slug", f"{slug!r} is already taken in this organization")
        project = Project(org_id=org.id, slug=slug, name=data.name, description=data.description)
        add_unique(session, project, "slug", f"{slug!r} is already taken in this organization")
        own = org_role(session, uid, org.id)
        role = own
        if own is None or own < Role.admin:
            session.add(ProjectMember(project_id=project.id, user_id=uid, role=int(Role.owner)))
            role = Role.owner
        access.audit(
            target_kind="project",
            target_id=project.id,
            project_id=project.id,
            org_id=org.id,
            detail={"slug": slug, "name": data.name},
        )
        return _project_dict(project, org.slug, _role_value(role))


@get("/api/v1/projects/{project:str}", tags=TAGS, sync_to_thread=True, opt=requires(PROJECT_READ))
def get_project(platform: PlatformDep, access: AccessDep, project: PathRef) -> dict[str, Any]:
    """One project, with the caller's effective role in it."""
    with platform.db.transaction() as session:
        found = _project_for(session, access, project)
        role = project_role(session, access.principal.user_id, found.id)
        return _project_dict(found, _org_slug(session, found.org_id), _role_value(role))


@patch(
    "/api/v1/projects/{project:str}", tags=TAGS, sync_to_thread=True, opt=requires(PROJECT_WRITE)
)
def update_project(
    platform: PlatformDep, access: AccessDep, project: PathRef, data: JSONBody[ProjectPatch]
) -> dict[str, Any]:
    """Change a project's name, slug (409 naming ``slug`` when taken) or description."""
    access.audit(action="project.update", target_kind="project", target_id=project)
    with platform.db.transaction() as session:
        found = _project_for(session, access, project)
        changes: dict[str, Any] = {}
        if data.slug is not None and data.slug != found.slug:
            if _slug_taken(session, found.org_id, data.slug, besides=found.id):
                raise conflict("slug", f"{data.slug!r} is already taken in this organization")
            changes["slug"] = {"old": found.slug, "new": data.slug}
            found.slug = data.slug
        if data.name is not None and data.name != found.name:
            changes["name"] = {"old": found.name, "new": data.name}
            found.name = data.name
        if data.description is not None and data.description != found.description:
            changes["description"] = {"changed": True}
            found.description = data.description
        access.audit(org_id=found.org_id, detail={"changes": changes})
        role = project_role(session, access.principal.user_id, found.id)
        return _project_dict(found, _org_slug(session, found.org_id), _role_value(role))


@delete(
    "/api/v1/projects/{project:str}",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(PROJECT_DELETE),
)
def delete_project(platform: PlatformDep, access: AccessDep, project: PathRef) -> None:
    """Delete a project with its memberships and API keys."""
    access.audit(action="project.delete", target_kind="project", target_id=project)
    with platform.db.transaction() as session:
        found = _project_for(session, access, project)
        access.audit(org_id=found.org_id, detail={"slug": found.slug, "name": found.name})
        session.delete(found)


# --------------------------------------------------------------------------- members


def _member_dict(user: User, project_value: int | None, org_value: int | None) -> dict[str, Any]:
    effective = project_value if project_value is not None else org_value
    return {
        "user": user_dict(user),
        "role": role_name(effective),
        "project_role": role_name(project_value),
        "org_role": role_name(org_value),
        "inherited": project_value is None,
    }


def _explicit(session: Session, project_id: str, user_id: str) -> tuple[ProjectMember, User]:
    row = session.execute(
        select(ProjectMember, User)
        .join(User, User.id == ProjectMember.user_id)
        .where(ProjectMember.project_id == project_id, ProjectMember.user_id == user_id)
    ).first()
    if row is None:
        raise NotFoundException(
            detail=f"user {user_id!r} is not a member of this project",
            extra=[{"key": "user_id", "message": "not a project member"}],
        )
    return row[0], row[1]


@get(
    "/api/v1/projects/{project:str}/members",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(PROJECT_MEMBERS_READ),
)
def list_project_members(
    platform: PlatformDep,
    access: AccessDep,
    project: PathRef,
    q: Annotated[str | None, QueryParameter(max_length=320)] = None,
    inherited: Annotated[bool | None, QueryParameter()] = None,
    limit: Annotated[int | None, QueryParameter()] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
) -> dict[str, Any]:
    """Everyone with a role in the project: explicit members and those inherited from the org.

    One statement. Filters: ``q`` (email or name substring), ``inherited`` (true: only
    organization members without a project membership; false: only explicit members).
    """
    page = page_for(platform.settings, limit, cursor)
    with platform.db.transaction() as session:
        found = _project_for(session, access, project)
        pm = aliased(ProjectMember)
        om = aliased(OrgMember)
        members = union(
            select(ProjectMember.user_id).where(ProjectMember.project_id == found.id),
            select(OrgMember.user_id).where(OrgMember.org_id == found.org_id),
        )
        query = (
            select(User, pm.role, om.role)
            .outerjoin(pm, and_(pm.project_id == found.id, pm.user_id == User.id))
            .outerjoin(om, and_(om.org_id == found.org_id, om.user_id == User.id))
            .where(User.id.in_(members))
        )
        if q:
            query = query.where(or_(contains(User.email, q), contains(User.display_name, q)))
        if inherited is not None:
            query = query.where(pm.id.is_(None) if inherited else pm.id.is_not(None))
        page_rows = paginate(session, query, User.id, page, rows=True)
        rows, next_cursor = page_rows.items, page_rows.next_cursor
        return {
            "items": [_member_dict(u, p, o) for u, p, o in rows],
            "next_cursor": next_cursor,
        }


@post(
    "/api/v1/projects/{project:str}/members",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(PROJECT_MEMBERS_MANAGE),
)
def add_project_member(
    platform: PlatformDep, access: AccessDep, project: PathRef, data: JSONBody[MemberIn]
) -> dict[str, Any]:
    """Give a user an explicit role in the project (no higher than the caller's).

    The user need not belong to the organization. An explicit membership that
    already exists is a 409; a user who only inherits a role can be added (that sets
    their role in this project).
    """
    access.audit(action="project.member.add")
    with platform.db.transaction() as session:
        found = _project_for(session, access, project)
        user = find_user(session, data.user_id, data.email)
        access.audit(
            target_kind="user",
            target_id=user.id,
            org_id=found.org_id,
            detail={"user_id": user.id, "new_role": data.role.name},
        )
        field = "user_id" if data.user_id else "email"
        explicit = select(ProjectMember.id).where(
            ProjectMember.project_id == found.id, ProjectMember.user_id == user.id
        )
        if session.scalar(explicit) is not None:
            raise conflict(field, "is already a project member")
        current = project_role(session, user.id, found.id)
        if current is not None:
            access.audit(detail={"old_role": current.name})
        own = project_role(session, access.principal.user_id, found.id)
        check_grant(access, own, new=data.role, current=current)
        member = ProjectMember(project_id=found.id, user_id=user.id, role=int(data.role))
        add_unique(session, member, field, "is already a project member")
        org_value = session.scalar(
            select(OrgMember.role).where(
                OrgMember.org_id == found.org_id, OrgMember.user_id == user.id
            )
        )
        return _member_dict(user, member.role, org_value)


@patch(
    "/api/v1/projects/{project:str}/members/{user_id:str}",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(PROJECT_MEMBERS_MANAGE),
)
def update_project_member(
    platform: PlatformDep,
    access: AccessDep,
    project: PathRef,
    user_id: PathRef,
    data: JSONBody[RolePatch],
) -> dict[str, Any]:
    """Change an explicit member's role in the project."""
    access.audit(action="project.member.update", target_kind="user", target_id=user_id)
    with platform.db.transaction() as session:
        found = _project_for(session, access, project)
        member, user = _explicit(session, found.id, user_id)
        old = Role(member.role)
        access.audit(
            project_id=member.project_id,
            org_id=found.org_id,
            detail={"user_id": user.id, "old_role": old.name, "new_role": data.role.name},
        )
        own = project_role(session, access.principal.user_id, member.project_id)
        check_grant(access, own, new=data.role, current=old)
        member.role = int(data.role)
        return _member_dict(user, member.role, org_role(session, user.id, found.org_id))


@delete(
    "/api/v1/projects/{project:str}/members/{user_id:str}",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(PROJECT_MEMBERS_MANAGE),
)
def remove_project_member(
    platform: PlatformDep, access: AccessDep, project: PathRef, user_id: PathRef
) -> None:
    """Remove an explicit membership; an organization role, if any, applies again."""
    access.audit(action="project.member.remove", target_kind="user", target_id=user_id)
    with platform.db.transaction() as session:
        found = _project_for(session, access, project)
        member, user = _explicit(session, found.id, user_id)
        old = Role(member.role)
        access.audit(
            project_id=member.project_id,
            org_id=found.org_id,
            detail={"user_id": user.id, "old_role": old.name},
        )
        own = project_role(session, access.principal.user_id, member.project_id)
        check_grant(access, own, new=None, current=old)
        session.delete(member)


# The app mounts all core routes through one Router (see zhongtai.web.app.build_app).
ROUTES: list[Any] = [
    list_projects,
    create_project,
    get_project,
    update_project,
    delete_project,
    list_project_members,
    add_project_member,
    update_project_member,
    remove_project_member,
]
