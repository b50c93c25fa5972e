"""Identity API: API keys (create, list, revoke, rotate).

A key is ``zt_<prefix>_<secret>``, shown once when created or rotated and stored
only as a keyed hash (:mod:`zhongtai.identity.apikeys`). A key never holds more than
its creator: its project and permissions are checked against the creator's roles
here, and every request made with it is further narrowed to what the owner holds at
that moment.

Callers authenticated with an API key may list and revoke their owner's keys but not
create or rotate one: both mint a new secret, and a key narrowed to one project or a
few permissions must not be able to obtain a wider credential (403).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from litestar import delete, get, post
from litestar.exceptions import ClientException, NotFoundException, PermissionDeniedException
from litestar.params import JSONBody, PathParameter, QueryParameter
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from zhongtai.identity import access as rules
from zhongtai.identity.apikeys import (
    ApiKeyInputError,
    InvalidApiKey,
    create_api_key,
    revoke_api_key,
    rotate_api_key,
)
from zhongtai.identity.guard import Access, AccessDep, authenticated
from zhongtai.identity.models import ApiKey, OrgMember, User
from zhongtai.identity.permissions import APIKEY_CREATE, USERS_MANAGE
from zhongtai.identity.principal import Principal
from zhongtai.identity.roles import Permission
from zhongtai.web.pagination import page_for, paginate
from zhongtai.web.params import PlatformDep

TAGS = ["api-keys"]
KeyId = Annotated[str, PathParameter(min_length=1, max_length=64)]


class ApiKeyIn(BaseModel):
    """A key to create. Unknown fields are refused (400 naming them)."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    project: str | None = Field(default=None, min_length=1, max_length=64)
    # Omit for "all the creator holds"; an empty list would be a key that can do nothing.
    permissions: list[str] | None = Field(default=None, min_length=1, max_length=500)
    expires_at: datetime | None = None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _key_dict(key: ApiKey) -> dict[str, Any]:
    """What anyone may see of a key: never its hash, never the key itself."""
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "user": key.user_id,
        "project": key.project_id,
        "permissions": key.permissions,
        "expires_at": _iso(key.expires_at),
        "last_used_at": _iso(key.last_used_at),
        "revoked_at": _iso(key.revoked_at),
        "created_at": _iso(key.created_at),
    }


def _field_error(field: str, message: str, status: int = 400) -> ClientException:
    return ClientException(
        status_code=status,
        detail=f"invalid {field}: {message}",
        extra=[{"key": field, "message": message, "source": "body"}],
    )


def _refuse_api_key_caller(access: Access, what: str) -> None:
    if access.principal.api_key_id is not None:
        raise PermissionDeniedException(
            f"an API key cannot {what} API keys; authenticate with an access token"
        )


def _holds_somewhere(session: Session, principal: Principal, permission: Permission) -> bool:
    """Whether the principal holds ``permission`` on at least one target (one query)."""
    if permission.scope == "site" or principal.is_superuser:
        # Superusers hold everything; site-scope permissions are theirs alone.
        return principal.is_superuser and bool(
            session.scalar(select(User.is_active).where(User.id == principal.user_id))
        )
    if permission.scope == "org":
        orgs = (
            select(OrgMember.id)
            .join(User, User.id == OrgMember.user_id)
            .where(
                OrgMember.user_id == principal.user_id,
                User.is_active,
                OrgMember.role >= int(permission.min_role),
            )
        )
        return bool(session.scalar(select(exists(orgs))))
    return bool(session.scalar(select(exists(rules.visible_project_ids(principal, permission)))))


def _check_permissions(
    session: Session,
    access: Access,
    names: list[str],
    project_id: str | None,
) -> None:
    """Every named permission is declared and held by the creator where the key acts."""
    registry = access.platform.permissions
    principal = access.principal
    for name in names:
        if name not in registry:
            raise _field_error("permissions", f"{name!r} is not a declared permission")
        permission = registry.get(name)
        if project_id is not None:
            if permission.scope != "project":
                raise _field_error(
                    "permissions",
                    f"{name!r} is not a project permission; a key for one project cannot hold it",
                )
            held = rules.has_permission(session, principal, permission, project_id=project_id)
        else:
            held = _holds_somewhere(session, principal, permission)
        if not held:
            raise _field_error("permissions", f"you do not hold {name!r}", status=403)


@post("/api/v1/api-keys", tags=TAGS, sync_to_thread=True, opt=authenticated())
def create_key(
    platform: PlatformDep, access: AccessDep, data: JSONBody[ApiKeyIn]
) -> dict[str, Any]:
    """Create an API key for the caller; the response is the only time ``key`` is shown.

    ``project`` (a project id) limits the key to that project, where the caller must
    hold ``core.apikey.create`` (404 if they cannot see it, 403 if they may not).
    ``permissions`` limits it to named permissions the caller holds there (or, without
    a project, somewhere); an undeclared name is a 400 naming ``permissions``, one the
    caller lacks a 403. Without a project the caller must hold ``core.apikey.create``
    in some project, or be a superuser. ``expires_at`` is ISO 8601 with a timezone, in
    the future. Callers using an API key get 403: a key cannot mint another.
    """
    _refuse_api_key_caller(access, "create")
    principal = access.principal
    with platform.db.transaction() as session:
        if data.project is not None:
            access.require(session, project_id=data.project, permission=APIKEY_CREATE)
        elif not _holds_somewhere(session, principal, APIKEY_CREATE):
            raise PermissionDeniedException(f"requires the permission {APIKEY_CREATE.name}")
        if data.permissions is not None:
            _check_permissions(session, access, data.permissions, data.project)
        try:
            row, key = create_api_key(
                session,
                user_id=principal.user_id,
                name=data.name,
                project_id=data.project,
                permissions=data.permissions,
                expires_at=data.expires_at,
                secret=platform.secret_key,
            )
        except ApiKeyInputError as exc:
            raise _field_error(exc.field, exc.message) from None
        access.audit(
            action="apikey.create",
            target_kind="api_key",
            target_id=row.id,
            project_id=row.project_id,
            detail={"name": row.name, "prefix": row.prefix, "permissions": row.permissions},
        )
        return {**_key_dict(row), "key": key}


@get("/api/v1/api-keys", tags=TAGS, sync_to_thread=True, opt=authenticated())
def list_keys(
    platform: PlatformDep,
    access: AccessDep,
    user: Annotated[str | None, QueryParameter(min_length=1, max_length=64)] = None,
    limit: Annotated[int | None, QueryParameter()] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
) -> dict[str, Any]:
    """The caller's keys, revoked and expired ones included, oldest first, paginated.

    Superusers may pass ``user=<id>`` to list another user's keys (403 for others).
    """
    page = page_for(platform.settings, limit, cursor)
    owner = access.principal.user_id
    with platform.db.transaction() as session:
        if user is not None and user != owner:
            if not access.has(session, USERS_MANAGE):
                raise PermissionDeniedException("only superusers may list another user's keys")
            owner = user
        query = select(ApiKey).where(ApiKey.user_id == owner)
        return paginate(session, query, ApiKey.id, page).to_dict(_key_dict)


def _own_key(session: Session, access: Access, key_id: str, *, superuser_may: bool) -> ApiKey:
    """The key, if the caller owns it (or may act on anyone's); 404 otherwise."""
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFoundException("not found")
    if key.user_id != access.principal.user_id and not (
        superuser_may and access.has(session, USERS_MANAGE)
    ):
        # Another user's key looks as if it did not exist.
        raise NotFoundException("not found")
    return key


@delete("/api/v1/api-keys/{key_id:str}", tags=TAGS, sync_to_thread=True, opt=authenticated())
def revoke_key(platform: PlatformDep, access: AccessDep, key_id: KeyId) -> None:
    """Revoke one of the caller's keys (superusers: anyone's); it stops working at once.

    Revoking a revoked key succeeds and keeps the first revocation time. Another
    user's key is a 404.
    """
    with platform.db.transaction() as session:
        key = _own_key(session, access, key_id, superuser_may=True)
        access.audit(
            action="apikey.revoke",
            target_kind="api_key",
            target_id=key.id,
            project_id=key.project_id,
            detail={"prefix": key.prefix, "owner": key.user_id},
        )
        revoke_api_key(session, key.id)


@post(
    "/api/v1/api-keys/{key_id:str}/rotate",
    tags=TAGS,
    sync_to_thread=True,
    status_code=200,
    opt=authenticated(),
)
def rotate_key(platform: PlatformDep, access: AccessDep, key_id: KeyId) -> dict[str, Any]:
    """Replace a key's secret: the new ``key`` is shown once, the old one fails at once.

    The key keeps its id, name, project, permissions and expiry. Only the owner may
    rotate (for a superuser, another user's key is a 404: rotating would hand them
    that user's credential). A revoked or expired key is a 409; callers using an API
    key get 403.
    """
    _refuse_api_key_caller(access, "rotate")
    with platform.db.transaction() as session:
        key = _own_key(session, access, key_id, superuser_may=False)
        access.audit(
            action="apikey.rotate",
            target_kind="api_key",
            target_id=key.id,
            project_id=key.project_id,
        )
        try:
            row, plaintext = rotate_api_key(session, key.id, secret=platform.secret_key)
        except InvalidApiKey:
            reason = "revoked" if key.revoked_at is not None else "expired"
            raise ClientException(
                status_code=409,
                detail=f"the API key is {reason} and cannot be rotated",
                extra=[{"key": "key_id", "message": f"the key is {reason}", "source": "path"}],
            ) from None
        access.audit(detail={"prefix": row.prefix})
        return {**_key_dict(row), "key": plaintext}


ROUTES: list[Any] = [create_key, list_keys, revoke_key, rotate_key]
