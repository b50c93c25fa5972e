"""Identity API: organizations, their members and invitations.

Routes (``{org}`` is an organization's id or its slug; an id wins when both match):

=======  ==========================================  ==================================
GET      /api/v1/orgs                                 signed in: the caller's organizations
POST     /api/v1/orgs                                 signed in: create one, become owner
GET      /api/v1/orgs/{org}                           ``core.org.read``
PATCH    /api/v1/orgs/{org}                           ``core.org.write``
DELETE   /api/v1/orgs/{org}                           ``core.org.write`` and owner (or superuser)
GET      /api/v1/orgs/{org}/members                   ``core.org.read``
POST     /api/v1/orgs/{org}/members                   ``core.org.members.manage``
PATCH    /api/v1/orgs/{org}/members/{user_id}         ``core.org.members.manage``
DELETE   /api/v1/orgs/{org}/members/{user_id}         ``core.org.members.manage``
GET      /api/v1/orgs/{org}/invitations               ``core.org.members.manage``
POST     /api/v1/orgs/{org}/invitations               ``core.org.members.manage``
DELETE   /api/v1/orgs/{org}/invitations/{id}          ``core.org.members.manage``
=======  ==========================================  ==================================

Membership rules, for organizations and projects alike (superusers are exempt):

* Nobody grants a role above their own, and nobody changes or removes a member whose
  current role is above their own (an admin can neither make nor unmake an owner).
* An organization always keeps one owner: removing or demoting the last is a 409.

Deleting an organization deletes its projects, memberships and invitations (the
database cascades). Only its owners and superusers may: ``core.org.write`` is held by
admins too, so the handler checks the owner role on top of it.

A member of one of an organization's projects (but not of the organization) sees the
organization in ``GET /api/v1/orgs`` and can read it with ``GET /api/v1/orgs/{org}``,
but not its member list.

The helpers at the top (slugs, roles, users, row pagination, the grant rule) are
shared with :mod:`zhongtai.identity.api.projects`.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta
from typing import Annotated, Any

from litestar import delete, get, patch, post
from litestar.exceptions import (
    ClientException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.params import JSONBody, PathParameter, QueryParameter
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError
from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from zhongtai.hooks.events import utcnow
from zhongtai.identity.access import NotFound, org_role
from zhongtai.identity.guard import Access, AccessDep, authenticated, requires
from zhongtai.identity.models import Invitation, Organization, OrgMember, Project, User
from zhongtai.identity.permissions import (
    ORG_MEMBERS_MANAGE,
    ORG_READ,
    ORG_WRITE,
    PROJECT_READ,
)
from zhongtai.identity.roles import Role
from zhongtai.identity.tokens import hmac_hex
from zhongtai.web.pagination import page_for, paginate
from zhongtai.web.params import PlatformDep

__all__ = [
    "ROUTES",
    "SLUG_PATTERN",
    "PathRef",
    "RoleName",
    "Slug",
    "add_unique",
    "check_grant",
    "check_slug",
    "conflict",
    "contains",
    "find_user",
    "invalid",
    "parse_role",
    "resolve_org",
    "role_name",
    "slug_for",
    "slugify",
    "user_dict",
]

TAGS = ["identity"]
SLUG_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
ROLE_NAMES = ", ".join(Role.__members__)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


# --------------------------------------------------------------------------- helpers


def invalid(field: str, message: str, *, source: str = "body") -> ValidationException:
    """A 400 naming ``field``."""
    return ValidationException(
        detail=f"invalid {field}", extra=[{"key": field, "message": message, "source": source}]
    )


def conflict(field: str, message: str) -> ClientException:
    """A 409 naming ``field``."""
    return ClientException(
        status_code=409, detail=f"{field} {message}", extra=[{"key": field, "message": message}]
    )


def slugify(name: str) -> str:
    """A slug derived from a name: lower-case, runs of other characters become ``-``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:64].rstrip("-")


def check_slug(value: str) -> str:
    """``value`` if it is a valid slug; raise ``ValueError`` (for pydantic) otherwise."""
    if not SLUG_PATTERN.match(value):
        raise PydanticCustomError(
            "slug",
            "1-64 lower-case letters, digits and '-', starting and ending with a letter or digit",
        )
    return value


def slug_for(slug: str | None, name: str) -> str:
    """The given slug, or one derived from ``name`` (400 naming ``slug`` when none can be)."""
    if slug is not None:
        return slug
    derived = slugify(name)
    if not derived:
        raise invalid("slug", "cannot derive a slug from this name; give one")
    return derived


def parse_role(name: object) -> Role:
    """A role by name; ``ValueError`` (for pydantic) naming the roles otherwise."""
    if not isinstance(name, str):
        raise PydanticCustomError("role", "a role name: {roles}", {"roles": ROLE_NAMES})
    try:
        return Role.parse(name)
    except ValueError:
        raise PydanticCustomError(
            "role", "unknown role {name!r}; roles: {roles}", {"name": name, "roles": ROLE_NAMES}
        ) from None


# Body field types: a bad value is a 400 naming the field.
PathRef = Annotated[str, PathParameter(min_length=1, max_length=64)]  # an id or a slug
Slug = Annotated[str, AfterValidator(check_slug)]
RoleName = Annotated[Role, BeforeValidator(parse_role)]


def add_unique(session: Session, row: Any, field: str, message: str) -> None:
    """Add and flush ``row``; a unique-index clash (a concurrent request) is a 409 naming ``field``.

    Callers check for the clash first, for the common case; the savepoint keeps the
    transaction usable when the index still refuses the row.
    """
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        raise conflict(field, message) from None


_ROLE_NAMES = {int(role): role.name for role in Role}


def role_name(value: int | None) -> str | None:
    # A dict, not Role(value): the enum call costs more than the rest of a list row.
    return None if value is None else _ROLE_NAMES[value]


def contains(column: Any, text: str) -> ColumnElement[bool]:
    """Case-insensitive substring match, ``%`` and ``_`` taken literally."""
    return func.lower(column).contains(text.lower(), autoescape=True)


def user_dict(user: User) -> dict[str, Any]:
    return {"id": user.id, "email": user.email, "display_name": user.display_name}


def find_user(session: Session, user_id: str | None, email: str | None) -> User:
    """The user named by exactly one of ``user_id`` and ``email`` (400 / 404 naming it)."""
    if (user_id is None) == (email is None):
        raise invalid("user_id", "give exactly one of user_id and email")
    if user_id is not None:
        user = session.get(User, user_id)
        field, value = "user_id", user_id
    else:
        assert email is not None
        user = session.scalar(select(User).where(User.email == email.strip().lower()))
        field, value = "email", email
    if user is None:
        raise NotFoundException(
            detail=f"no user with {field} {value!r}",
            extra=[{"key": field, "message": "no such user"}],
        )
    return user


def check_grant(
    access: Access, own: Role | None, *, new: Role | None, current: Role | None = None
) -> None:
    """Refuse (403 naming ``role``) a grant above the caller's own role.

    Args:
        access: The caller; superusers may grant anything.
        own: The caller's role where the grant applies.
        new: The role to grant (None when removing).
        current: The target member's current role; it may not be above ``own`` either,
            so an admin can neither demote nor remove an owner.
    """
    if access.principal.is_superuser:
        return
    mine = own.name if own is not None else "none"
    if new is not None and (own is None or new > own):
        raise PermissionDeniedException(
            detail=f"you cannot grant a role above your own ({mine})",
            extra=[{"key": "role", "message": f"above your own role ({mine})"}],
        )
    if current is not None and (own is None or current > own):
        raise PermissionDeniedException(
            detail=f"you cannot change a member whose role is above your own ({mine})",
            extra=[{"key": "role", "message": f"the member's role is above yours ({mine})"}],
        )


def resolve_org(session: Session, ref: str) -> Organization | None:
    """The organization whose id or (failing that) slug is ``ref``."""
    org = session.get(Organization, ref)
    if org is None:
        org = session.scalar(select(Organization).where(Organization.slug == ref))
    return org


def _org_for(session: Session, access: Access, ref: str, permission: Any = None) -> Organization:
    """The organization ``ref``, after ``access.require`` on it (404 when unseen)."""
    org = resolve_org(session, ref)
    access.require(session, org_id=org.id if org else None, permission=permission)
    assert org is not None
    return org


def _org_dict(org: Organization, role: int | None = None) -> dict[str, Any]:
    return {
        "id": org.id,
        "slug": org.slug,
        "name": org.name,
        "created_at": org.created_at.isoformat(),
        "role": role_name(role),
    }


# --------------------------------------------------------------------------- organizations


class OrgIn(BaseModel):
    """A new organization; ``slug`` defaults to one derived from ``name``."""

    model_config = ConfigDict(defer_build=True, extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=200)
    slug: Slug | None = None


class OrgPatch(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", str_strip_whitespace=True)

    name: str | None = Field(default=None, min_length=1, max_length=200)
    slug: Slug | None = None


@get("/api/v1/orgs", tags=TAGS, sync_to_thread=True, opt=authenticated())
def list_orgs(
    platform: PlatformDep,
    access: AccessDep,
    q: Annotated[str | None, QueryParameter(max_length=200)] = None,
    limit: Annotated[int | None, QueryParameter()] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
) -> dict[str, Any]:
    """Organizations the caller belongs to, directly or through one of their projects.

    Superusers see all. A key scoped to a project sees that project's organization.
    Filter ``q``: a substring of the name or slug. Each item carries the caller's
    organization ``role`` (null without an organization membership).
    """
    page = page_for(platform.settings, limit, cursor)
    principal = access.principal
    query = select(Organization, OrgMember.role).outerjoin(
        OrgMember,
        and_(OrgMember.org_id == Organization.id, OrgMember.user_id == principal.user_id),
    )
    if not principal.is_superuser or principal.key_project_id is not None:
        # correlate(None): the subquery reads ``projects`` on its own, never the outer row.
        visible = access.visible_projects(PROJECT_READ).correlate(None)
        seen = [Organization.id.in_(select(Project.org_id).where(Project.id.in_(visible)))]
        keys = principal.key_permissions
        if principal.key_project_id is None and (keys is None or ORG_READ.name in keys):
            seen.append(OrgMember.id.is_not(None))
        query = query.where(or_(*seen))
    if q:
        query = query.where(or_(contains(Organization.name, q), contains(Organization.slug, q)))
    with platform.db.transaction() as session:
        page_rows = paginate(session, query, Organization.id, page, rows=True)
        rows, next_cursor = page_rows.items, page_rows.next_cursor
        return {"items": [_org_dict(o, r) for o, r in rows], "next_cursor": next_cursor}


@post("/api/v1/orgs", tags=TAGS, sync_to_thread=True, opt=authenticated())
def create_org(platform: PlatformDep, access: AccessDep, data: JSONBody[OrgIn]) -> dict[str, Any]:
    """Create an organization; the caller becomes its owner.

    Any signed-in user may. An API key scoped to a project, or limited to permissions
    without ``core.org.write``, may not (403). A taken slug is a 409 naming ``slug``.
    """
    principal = access.principal
    access.audit(action="org.create")
    keys = principal.key_permissions
    if principal.key_project_id is not None or (keys is not None and ORG_WRITE.name not in keys):
        raise PermissionDeniedException(detail="this API key cannot create organizations")
    slug = slug_for(data.slug, data.name)
    with platform.db.transaction() as session:
        if session.scalar(select(Organization.id).where(Organization.slug == slug)):
            raise conflict("slug", f"{slug!r} is already taken")
        org = Organization(name=data.name, slug=slug)
        add_unique(session, org, "slug", f"{slug!r} is already taken")
        session.add(OrgMember(org_id=org.id, user_id=principal.user_id, role=int(Role.owner)))
        access.audit(
            target_kind="org",
            target_id=org.id,
            org_id=org.id,
            detail={"slug": slug, "name": data.name},
        )
        return _org_dict(org, int(Role.owner))


@get("/api/v1/orgs/{org:str}", tags=TAGS, sync_to_thread=True, opt=requires(ORG_READ))
def get_org(platform: PlatformDep, access: AccessDep, org: PathRef) -> dict[str, Any]:
    """One organization, with the caller's role in it."""
    with platform.db.transaction() as session:
        found = resolve_org(session, org)
        if found is None:
            raise NotFound(org)
        if not access.has(session, org_id=found.id):
            # A member of one of its projects sees the organization (as in the list).
            visible = access.visible_projects(PROJECT_READ).correlate(None)
            in_org = select(Project.id).where(Project.org_id == found.id, Project.id.in_(visible))
            if session.scalar(in_org.limit(1)) is None:
                raise NotFound(org)
        role = org_role(session, access.principal.user_id, found.id)
        return _org_dict(found, None if role is None else int(role))


@patch("/api/v1/orgs/{org:str}", tags=TAGS, sync_to_thread=True, opt=requires(ORG_WRITE))
def update_org(
    platform: PlatformDep, access: AccessDep, org: PathRef, data: JSONBody[OrgPatch]
) -> dict[str, Any]:
    """Rename an organization or change its slug (a taken slug is a 409 naming ``slug``)."""
    access.audit(action="org.update", target_kind="org")
    with platform.db.transaction() as session:
        found = _org_for(session, access, org)
        access.audit(target_id=found.id)
        changes: dict[str, Any] = {}
        if data.slug is not None and data.slug != found.slug:
            taken = select(Organization.id).where(
                Organization.slug == data.slug, Organization.id != found.id
            )
            if session.scalar(taken):
                raise conflict("slug", f"{data.slug!r} is already taken")
            changes["slug"] = {"old": found.slug, "new": data.slug}
            found.slug = data.slug
        if data.name is not None and data.name != found.name:
            changes["name"] = {"old": found.name, "new": data.name}
            found.name = data.name
        access.audit(detail={"changes": changes})
        role = org_role(session, access.principal.user_id, found.id)
        return _org_dict(found, None if role is None else int(role))


@delete("/api/v1/orgs/{org:str}", tags=TAGS, sync_to_thread=True, opt=requires(ORG_WRITE))
def delete_org(platform: PlatformDep, access: AccessDep, org: PathRef) -> None:
    """Delete an organization with all its projects; owners and superusers only."""
    access.audit(action="org.delete", target_kind="org")
    with platform.db.transaction() as session:
        found = _org_for(session, access, org)
        access.audit(target_id=found.id, detail={"slug": found.slug, "name": found.name})
        if not access.principal.is_superuser:
            role = org_role(session, access.principal.user_id, found.id)
            if role != Role.owner:
                raise PermissionDeniedException(detail="only an owner can delete an organization")
        session.delete(found)


# --------------------------------------------------------------------------- members


class MemberIn(BaseModel):
    """A member to add: exactly one of ``user_id`` and ``email``, and a role name."""

    model_config = ConfigDict(defer_build=True, extra="forbid", str_strip_whitespace=True)

    user_id: str | None = Field(default=None, min_length=1, max_length=32)
    email: str | None = Field(default=None, min_length=3, max_length=320)
    role: RoleName


class RolePatch(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", str_strip_whitespace=True)

    role: RoleName


def _member_dict(member: OrgMember, user: User) -> dict[str, Any]:
    return {
        "user": user_dict(user),
        "role": Role(member.role).name,
        "created_at": member.created_at.isoformat(),
    }


def _owners(session: Session, org_id: str) -> list[str]:
    # FOR UPDATE (PostgreSQL): two owners demoting each other at once can't both pass.
    stmt = (
        select(OrgMember.user_id)
        .where(OrgMember.org_id == org_id, OrgMember.role == int(Role.owner))
        .with_for_update()
    )
    return list(session.scalars(stmt))


def _membership(session: Session, org_id: str, user_id: str) -> tuple[OrgMember, User]:
    row = session.execute(
        select(OrgMember, User)
        .join(User, User.id == OrgMember.user_id)
        .where(OrgMember.org_id == org_id, OrgMember.user_id == user_id)
    ).first()
    if row is None:
        raise NotFoundException(
            detail=f"user {user_id!r} is not a member",
            extra=[{"key": "user_id", "message": "not a member"}],
        )
    return row[0], row[1]


@get("/api/v1/orgs/{org:str}/members", tags=TAGS, sync_to_thread=True, opt=requires(ORG_READ))
def list_org_members(
    platform: PlatformDep,
    access: AccessDep,
    org: PathRef,
    q: Annotated[str | None, QueryParameter(max_length=320)] = None,
    role: Annotated[str | None, QueryParameter(max_length=32)] = None,
    limit: Annotated[int | None, QueryParameter()] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
) -> dict[str, Any]:
    """Members of an organization; filters ``q`` (email or name substring) and ``role``."""
    page = page_for(platform.settings, limit, cursor)
    role_filter = _query_role(role)
    with platform.db.transaction() as session:
        found = _org_for(session, access, org)
        query = (
            select(OrgMember, User)
            .join(User, User.id == OrgMember.user_id)
            .where(OrgMember.org_id == found.id)
        )
        if q:
            query = query.where(or_(contains(User.email, q), contains(User.display_name, q)))
        if role_filter is not None:
            query = query.where(OrgMember.role == int(role_filter))
        page_rows = paginate(session, query, OrgMember.id, page, rows=True)
        rows, next_cursor = page_rows.items, page_rows.next_cursor
        return {"items": [_member_dict(m, u) for m, u in rows], "next_cursor": next_cursor}


def _query_role(role: str | None) -> Role | None:
    if role is None:
        return None
    try:
        return parse_role(role)
    except ValueError as exc:
        raise invalid("role", str(exc), source="query") from None


@post(
    "/api/v1/orgs/{org:str}/members",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(ORG_MEMBERS_MANAGE),
)
def add_org_member(
    platform: PlatformDep, access: AccessDep, org: PathRef, data: JSONBody[MemberIn]
) -> dict[str, Any]:
    """Add a user to an organization with a role no higher than the caller's own."""
    access.audit(action="org.member.add")
    with platform.db.transaction() as session:
        found = _org_for(session, access, org)
        user = find_user(session, data.user_id, data.email)
        access.audit(
            target_kind="user",
            target_id=user.id,
            detail={"user_id": user.id, "new_role": data.role.name},
        )
        check_grant(access, org_role(session, access.principal.user_id, found.id), new=data.role)
        if org_role(session, user.id, found.id) is not None:
            raise conflict("user_id" if data.user_id else "email", "is already a member")
        member = OrgMember(org_id=found.id, user_id=user.id, role=int(data.role))
        add_unique(session, member, "user_id" if data.user_id else "email", "is already a member")
        return _member_dict(member, user)


@patch(
    "/api/v1/orgs/{org:str}/members/{user_id:str}",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(ORG_MEMBERS_MANAGE),
)
def update_org_member(
    platform: PlatformDep,
    access: AccessDep,
    org: PathRef,
    user_id: PathRef,
    data: JSONBody[RolePatch],
) -> dict[str, Any]:
    """Change a member's role; demoting the last owner is a 409."""
    access.audit(action="org.member.update", target_kind="user", target_id=user_id)
    with platform.db.transaction() as session:
        found = _org_for(session, access, org)
        member, user = _membership(session, found.id, user_id)
        old = Role(member.role)
        access.audit(detail={"user_id": user.id, "old_role": old.name, "new_role": data.role.name})
        own = org_role(session, access.principal.user_id, member.org_id)
        check_grant(access, own, new=data.role, current=old)
        if (
            old == Role.owner
            and data.role != Role.owner
            and _owners(session, member.org_id) == [user.id]
        ):
            raise conflict("role", "cannot demote the last owner of the organization")
        member.role = int(data.role)
        return _member_dict(member, user)


@delete(
    "/api/v1/orgs/{org:str}/members/{user_id:str}",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(ORG_MEMBERS_MANAGE),
)
def remove_org_member(
    platform: PlatformDep, access: AccessDep, org: PathRef, user_id: PathRef
) -> None:
    """Remove a member (their project memberships stay); the last owner cannot go (409)."""
    access.audit(action="org.member.remove", target_kind="user", target_id=user_id)
    with platform.db.transaction() as session:
        found = _org_for(session, access, org)
        member, user = _membership(session, found.id, user_id)
        old = Role(member.role)
        access.audit(detail={"user_id": user.id, "old_role": old.name})
        own = org_role(session, access.principal.user_id, member.org_id)
        check_grant(access, own, new=None, current=old)
        if old == Role.owner and _owners(session, member.org_id) == [user.id]:
            raise conflict("user_id", "cannot remove the last owner of the organization")
        session.delete(member)


# --------------------------------------------------------------------------- invitations


def _check_email(value: str) -> str:
    if not _EMAIL.match(value):
        raise PydanticCustomError("email", "not an email address")
    return value.lower()


class InvitationIn(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", str_strip_whitespace=True)

    email: Annotated[str, AfterValidator(_check_email)] = Field(min_length=3, max_length=320)
    role: RoleName


def _invitation_dict(invitation: Invitation) -> dict[str, Any]:
    return {
        "id": invitation.id,
        "email": invitation.email,
        "role": Role(invitation.role).name,
        "expires_at": invitation.expires_at.isoformat(),
        "created_at": invitation.created_at.isoformat(),
        "invited_by": invitation.invited_by,
    }


@post(
    "/api/v1/orgs/{org:str}/invitations",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(ORG_MEMBERS_MANAGE),
)
def create_invitation(
    platform: PlatformDep, access: AccessDep, org: PathRef, data: JSONBody[InvitationIn]
) -> dict[str, Any]:
    """Invite an email address to an organization with a role no higher than the caller's.

    The answer holds the token and ``accept_url`` once; only a keyed hash is stored.
    An earlier pending invitation of the same address to the same organization is
    replaced. A current member's address is a 409 naming ``email``.
    """
    access.audit(action="org.invitation.create")
    now: datetime = utcnow()
    with platform.db.transaction() as session:
        found = _org_for(session, access, org)
        access.audit(detail={"email": data.email, "role": data.role.name})
        check_grant(access, org_role(session, access.principal.user_id, found.id), new=data.role)
        member = select(OrgMember.id).join(User, User.id == OrgMember.user_id)
        if session.scalar(member.where(OrgMember.org_id == found.id, User.email == data.email)):
            raise conflict("email", "is already a member")
        for old in session.scalars(
            select(Invitation).where(
                Invitation.org_id == found.id,
                Invitation.email == data.email,
                Invitation.accepted_at.is_(None),
            )
        ):
            session.delete(old)
        token = secrets.token_urlsafe(32)
        invitation = Invitation(
            org_id=found.id,
            email=data.email,
            role=int(data.role),
            token_hash=hmac_hex(platform.secret_key, token),
            invited_by=access.principal.user_id,
            expires_at=now + timedelta(seconds=platform.settings.identity.invitation_ttl),
            created_at=now,
        )
        session.add(invitation)
        session.flush()
        access.audit(target_kind="invitation", target_id=invitation.id)
        return {
            **_invitation_dict(invitation),
            "token": token,
            "accept_url": f"{platform.settings.base_url}/invite?token={token}",
        }


@get(
    "/api/v1/orgs/{org:str}/invitations",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(ORG_MEMBERS_MANAGE),
)
def list_invitations(
    platform: PlatformDep,
    access: AccessDep,
    org: PathRef,
    limit: Annotated[int | None, QueryParameter()] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
) -> dict[str, Any]:
    """Pending (not accepted, not expired) invitations of an organization, without tokens."""
    page = page_for(platform.settings, limit, cursor)
    with platform.db.transaction() as session:
        found = _org_for(session, access, org)
        query = select(Invitation).where(
            Invitation.org_id == found.id,
            Invitation.accepted_at.is_(None),
            Invitation.expires_at > utcnow(),
        )
        page_rows = paginate(session, query, Invitation.id, page, rows=True)
        rows, next_cursor = page_rows.items, page_rows.next_cursor
        return {"items": [_invitation_dict(r[0]) for r in rows], "next_cursor": next_cursor}


@delete(
    "/api/v1/orgs/{org:str}/invitations/{invitation_id:str}",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(ORG_MEMBERS_MANAGE),
)
def revoke_invitation(
    platform: PlatformDep, access: AccessDep, org: PathRef, invitation_id: PathRef
) -> None:
    """Revoke an invitation: its link stops working."""
    access.audit(action="org.invitation.revoke", target_kind="invitation", target_id=invitation_id)
    with platform.db.transaction() as session:
        invitation = session.get(Invitation, invitation_id)
        # Authorize on the invitation's own organization; the path must name the same one.
        access.require(session, org_id=invitation.org_id if invitation else None)
        assert invitation is not None
        found = resolve_org(session, org)
        if found is None or found.id != invitation.org_id:
            raise NotFound(invitation_id)
        access.audit(detail={"email": invitation.email, "role": Role(invitation.role).name})
        session.delete(invitation)


# The app mounts all core routes through one Router (see zhongtai.web.app.build_app).
ROUTES: list[Any] = [
    list_orgs,
    create_org,
    get_org,
    update_org,
    delete_org,
    list_org_members,
    add_org_member,
    update_org_member,
    remove_org_member,
    create_invitation,
    list_invitations,
    revoke_invitation,
]
