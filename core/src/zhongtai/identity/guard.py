"""Who is calling, and whether the route lets them: the web face of identity.

Every route states its access in its ``opt`` (on the handler, or on its controller or
router, which Litestar merges down)::

    from zhongtai.identity.guard import AccessDep, public, requires

    @get("/healthz", opt=public())                         # no credentials needed
    @get("/api/v1/auth/me", opt=authenticated())           # any signed-in caller
    @get("/api/v1/data/datasets/{id:str}", opt=requires(DATASET_READ))
    def get_dataset(platform: PlatformDep, access: AccessDep, id: str) -> ...:
        with platform.db.transaction() as session:
            dataset = session.get(Dataset, id)
            # the project comes from the stored object, never from the request
            access.require(session, project_id=dataset.project_id if dataset else None)

The application-wide :func:`check_access` runs before every handler: public routes
pass; every other route needs ``Authorization: Bearer <access token or API key>``
(401 otherwise) and a site-scope permission needs a superuser (403). A route that
states nothing is refused (and :func:`undeclared_routes` lets start-up and the tests
find it first). Checks against one project or organization happen in the handler
through :class:`Access`, because only the handler knows the stored object; list
routes filter with :meth:`Access.visible_projects` in SQL.

Only the ``Authorization`` header identifies a caller. Headers such as
``X-Forwarded-User`` or ``X-User-Id`` are never read.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterator, Mapping
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias

import anyio.to_thread
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.di import Dependency
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from sqlalchemy import Select, String, bindparam, select
from sqlalchemy.orm import Session

from zhongtai.hooks.events import utcnow
from zhongtai.identity import access as rules
from zhongtai.identity.apikeys import (
    KEY_PREFIX,
    InvalidApiKey,
    KeyLookup,
    lookup_api_key,
    touch_api_key,
)
from zhongtai.identity.browser import (
    CSRF_FIELD,
    CSRF_HEADER,
    SESSION_COOKIE,
    csrf_ok,
    session_principal,
)
from zhongtai.identity.cache import identity_cache
from zhongtai.identity.models import User
from zhongtai.identity.principal import Principal
from zhongtai.identity.roles import Permission
from zhongtai.identity.tokens import AccessClaims, InvalidToken, verify_access_token

if TYPE_CHECKING:
    from datetime import datetime
    from types import EllipsisType

    from litestar import Litestar

    from zhongtai.identity.cache import IdentityCache
    from zhongtai.platform import Platform

log = logging.getLogger("zhongtai.identity")

ACCESS_OPT = "zt_access"
PUBLIC = "public"
AUTHENTICATED = "authenticated"
# Where the guard leaves what it learnt, and where handlers leave audit details.
PRINCIPAL_SCOPE_KEY = "zt_principal"
GENERATION_SCOPE_KEY = "zt_identity_generation"  # what the principal was read under
AUDIT_SCOPE_KEY = "zt_audit"  # present: the request gets an audit row
SESSION_SCOPE_KEY = "zt_browser_session"  # the cookie, when the caller is a signed-in browser
# Present: no audit row after the response, whatever the method. Set on requests a rate
# limit refused, so that a flood of them costs no writes (the access log and metrics
# still count them), and by routes that wrote their row themselves (Access.audit_row).
NO_AUDIT_SCOPE_KEY = "zt_no_audit"
AUDIT_CONTEXT_KEY = "zt_audit_context"  # what require() learnt: used only if there is a row

__all__ = [
    "ACCESS_OPT",
    "AUTHENTICATED",
    "PUBLIC",
    "Access",
    "AccessDep",
    "Unauthorized",
    "access_guard",
    "authenticate",
    "authenticated",
    "check_access",
    "public",
    "requires",
    "undeclared_routes",
]


def public() -> dict[str, Any]:
    """``opt`` for a route anyone may call (health, login, setup)."""
    return {ACCESS_OPT: PUBLIC}


def authenticated() -> dict[str, Any]:
    """``opt`` for a route any signed-in caller may call; the handler scopes what it shows."""
    return {ACCESS_OPT: AUTHENTICATED}


def requires(permission: Permission | str) -> dict[str, Any]:
    """``opt`` for a route guarded by a declared permission (checked by name at start-up)."""
    name = permission.name if isinstance(permission, Permission) else permission
    return {ACCESS_OPT: name}


class Unauthorized(NotAuthorizedException):
    """401 with ``WWW-Authenticate: Bearer``; the reason stays in the server's log."""

    def __init__(self, detail: str = "authentication required", reason: str | None = None) -> None:
        if reason:
            log.info("credentials refused: %s", reason)
        super().__init__(detail=detail, headers={"WWW-Authenticate": 'Bearer realm="zhongtai"'})


def _bearer(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization")
    if not header:
        return None
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise Unauthorized("use Authorization: Bearer <access token or API key>")
    return credentials.strip()


def authenticate(platform: Platform, credentials: str) -> Principal:
    """The principal a bearer credential stands for: an API key (``zt_…``) or an access token.

    The answer is as fresh as the database: a user's active and superuser flags and a
    key's scope and revocation are re-read whenever the identity generation moved
    (see :mod:`zhongtai.identity.cache`), so deactivating a user or revoking a key
    takes effect at once, in every server process. Records the key's use (at most
    once a minute).

    Raises:
        Unauthorized: The credential is malformed, unknown, expired or revoked, or its
            user is inactive (one answer for every reason).
    """
    principal, touch, _generation = _identify(platform, credentials)
    if touch:
        _touch(platform, touch)
    return principal


def _identify(
    platform: Platform, credentials: str, generation: int | EllipsisType | None = ...
) -> tuple[Principal, str | None, int | None]:
    """Read-only half of :func:`authenticate`: the principal, a key id to touch, and the
    identity generation the answer holds for (None: uncached).

    ``generation``: the counter as the caller read it just before (default: read it).
    """
    cache = identity_cache(platform)
    if generation is ...:
        generation = cache.generation()
    cached = _identify_cached(platform, credentials, generation)
    if cached is not None:
        return cached
    now = utcnow()
    if credentials.startswith(KEY_PREFIX):
        try:
            with platform.db.engine.connect() as connection:
                found = lookup_api_key(connection, credentials, secret=platform.secret_key, now=now)
        except InvalidApiKey as exc:
            raise Unauthorized("invalid API key", reason=str(exc)) from None
        cache.put("principal", credentials, generation, found)
        return _key_answer(cache, credentials, generation, found, now)
    claims = _claims(platform, credentials, now)
    with platform.db.engine.connect() as connection:
        row = connection.execute(_USER_FLAGS, {"user_id": claims.user_id}).first()
    if row is None or not row[0]:
        raise Unauthorized("invalid or expired access token", reason="user unknown or inactive")
    principal = Principal(user_id=claims.user_id, is_superuser=bool(row[1]))
    cache.put("principal", ("user", claims.user_id), generation, principal)
    return principal, None, generation


def _identify_cached(
    platform: Platform, credentials: str, generation: int | None
) -> tuple[Principal, str | None, int | None] | None:
    """:func:`_identify` from memory alone, or None where it needs the database."""
    if generation is None:
        return None
    cache = identity_cache(platform)
    now = utcnow()
    if credentials.startswith(KEY_PREFIX):
        found: KeyLookup | None = cache.get("principal", credentials, generation)
        if found is None or not found.usable_at(now):
            return None
        return _key_answer(cache, credentials, generation, found, now)
    claims = _claims(platform, credentials, now)
    principal: Principal | None = cache.get("principal", ("user", claims.user_id), generation)
    return None if principal is None else (principal, None, generation)


def _key_answer(
    cache: IdentityCache, credentials: str, generation: int | None, found: KeyLookup, now: datetime
) -> tuple[Principal, str | None, int | None]:
    if not found.stale_at(now):
        return found.principal, None, generation
    # This process records the use now; until the next minute, it need not again.
    cache.put("principal", credentials, generation, found._replace(last_used_at=now))
    return found.principal, found.principal.api_key_id, generation


def _claims(platform: Platform, credentials: str, now: datetime) -> AccessClaims:
    """The verified claims of an access token (verified once, then kept until expiry)."""
    cache = identity_cache(platform)
    claims: AccessClaims | None = cache.tokens.get(credentials) if cache.enabled else None
    if claims is None or claims.expires_at <= now:
        try:
            claims = verify_access_token(credentials, secret=platform.secret_key)
        except InvalidToken as exc:
            raise Unauthorized("invalid or expired access token", reason=str(exc)) from None
        if cache.enabled:
            cache.tokens.put(credentials, claims)
    return claims


_USER_FLAGS = select(User.is_active, User.is_superuser).where(
    User.id == bindparam("user_id", type_=String)
)


def _touch(platform: Platform, key_id: str) -> None:
    try:
        with platform.db.engine.begin() as connection:
            touch_api_key(connection, key_id)
    except Exception:  # advisory: never fail a request for it
        log.warning("could not record the use of API key %s", key_id, exc_info=True)


async def check_access(request: Request[Any, Any, Any]) -> None:
    """The application's ``before_request`` hook: authenticate, then check the route's access.

    A ``before_request`` hook rather than a Litestar guard: guards copy the route
    handler on every call, which costs more than the check on a public route. It runs
    before the request's parameters and body are parsed, so a caller without
    credentials learns nothing from validation errors. The app refuses to start a
    plugin whose routes set their own ``before_request`` (it would replace this one).
    """
    await access_guard(request, request.route_handler)


async def access_guard(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Authenticate ``connection`` and check the access ``handler`` states (see module doc)."""
    spec = handler.opt.get(ACCESS_OPT)
    if spec == PUBLIC:
        return
    if spec is None:
        # Start-up refuses such routes; this keeps one added later closed, not open.
        raise PermissionDeniedException("this route states no permission")
    platform: Platform = connection.app.state["platform"]
    credentials = _bearer(connection)
    if credentials is None:
        cookie = connection.cookies.get(SESSION_COOKIE)
        if not cookie:
            raise Unauthorized()
        await _browser(connection, platform, cookie)
        _check_site_permission(platform, connection.scope[PRINCIPAL_SCOPE_KEY], spec)  # type: ignore[literal-required]
        return
    if platform.db.is_embedded:
        # SQLite is a local file: an indexed read costs less than the hop to a
        # worker thread, and WAL readers never wait for writers. The rare write
        # (a key's last use) still goes to a thread.
        principal, touch, generation = _identify(platform, credentials)
        if touch:
            await anyio.to_thread.run_sync(_touch, platform, touch)
    else:
        # The counter is read from the loop; a cached answer then needs no worker
        # thread (on this path, every authenticated request).
        read = await identity_cache(platform).generation_async()
        found = _identify_cached(platform, credentials, read)
        if found is None:
            found = await anyio.to_thread.run_sync(_identify, platform, credentials, read)
        principal, touch, generation = found
        if touch:
            await anyio.to_thread.run_sync(_touch, platform, touch)
    connection.scope[PRINCIPAL_SCOPE_KEY] = principal  # type: ignore[literal-required]
    connection.scope[GENERATION_SCOPE_KEY] = generation  # type: ignore[literal-required]
    _check_site_permission(platform, principal, spec)


def _check_site_permission(platform: Platform, principal: Principal, spec: str) -> None:
    if spec != AUTHENTICATED:
        if spec not in platform.permissions:
            # Start-up unloads a plugin whose route names an undeclared permission.
            raise PermissionDeniedException(f"this route names an undeclared permission {spec!r}")
        permission = platform.permissions.get(spec)
        if permission.scope == "site" and not (
            principal.is_superuser and rules.key_admits(principal, permission, None)
        ):
            raise PermissionDeniedException(f"requires {permission.name}")


async def _browser(
    connection: ASGIConnection[Any, Any, Any, Any], platform: Platform, cookie: str
) -> None:
    """Authenticate by the web UI's session cookie; a state-changing request must also
    carry the session's CSRF token (see :mod:`zhongtai.identity.browser`)."""
    if platform.db.is_embedded:
        principal = session_principal(platform, cookie)
    else:
        principal = await anyio.to_thread.run_sync(session_principal, platform, cookie)
    if principal is None:
        raise Unauthorized("your session has ended; sign in again", reason="unknown session")
    if connection.scope.get("method") in _UNSAFE:
        offered = connection.headers.get(CSRF_HEADER)
        content_type = connection.headers.get("content-type", "")
        if (
            offered is None
            and isinstance(connection, Request)
            and content_type.startswith(
                ("application/x-www-form-urlencoded", "multipart/form-data")
            )
        ):
            form = await connection.form()
            value = form.get(CSRF_FIELD)
            offered = value if isinstance(value, str) else None
        if not csrf_ok(platform, cookie, offered):
            raise PermissionDeniedException("missing or wrong CSRF token; reload the page")
    connection.scope[PRINCIPAL_SCOPE_KEY] = principal  # type: ignore[literal-required]
    connection.scope[SESSION_SCOPE_KEY] = cookie  # type: ignore[literal-required]


_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class Access:
    """The caller of one request and the permission its route states; injected as ``access``."""

    def __init__(self, platform: Platform, scope: Mapping[str, Any], permission: str | None):
        self.platform = platform
        self._scope = scope
        self._permission = permission

    @property
    def principal(self) -> Principal:
        principal = self._scope.get(PRINCIPAL_SCOPE_KEY)
        if principal is None:
            raise Unauthorized()
        return principal  # type: ignore[no-any-return]

    @property
    def is_authenticated(self) -> bool:
        return self._scope.get(PRINCIPAL_SCOPE_KEY) is not None

    @property
    def client_addr(self) -> str | None:
        client = self._scope.get("client")
        return str(client[0]) if client else None

    def permission(self, permission: Permission | str | None = None) -> Permission:
        """A declared permission by name; by default the one the route states."""
        if isinstance(permission, Permission):
            return permission
        name = permission or self._permission
        if name is None or name in (PUBLIC, AUTHENTICATED):
            raise ValueError("this route states no permission; name the one to check")
        return self.platform.permissions.get(name)

    def require(
        self,
        session: Session,
        *,
        project_id: str | None = None,
        org_id: str | None = None,
        permission: Permission | str | None = None,
    ) -> None:
        """Raise unless the caller holds the permission on this project or organization.

        Pass the project of the stored object (``None`` when the object does not exist:
        that is a 404 like any other). Raises :class:`~zhongtai.identity.access.NotFound`
        (404) when the caller cannot even see the target, and
        :class:`~zhongtai.identity.access.Forbidden` (403) when it can but may not act.
        """
        perm = self.permission(permission)
        # Context for the audit row, if the request gets one (a read does not).
        context: dict[str, Any] = self._scope.setdefault(AUDIT_CONTEXT_KEY, {})  # type: ignore[attr-defined]
        if project_id is not None:
            context.setdefault("project_id", project_id)
        if org_id is not None:
            context.setdefault("org_id", org_id)
        if perm.scope == "project" and project_id is None:
            raise rules.NotFound(None)
        if perm.scope == "org" and org_id is None:
            raise rules.NotFound(None)
        rules.require(
            session, self.principal, perm, project_id=project_id, org_id=org_id, memo=self._memo()
        )

    def has(
        self,
        session: Session,
        permission: Permission | str | None = None,
        *,
        project_id: str | None = None,
        org_id: str | None = None,
    ) -> bool:
        """Whether the caller holds the permission on one target (never per row of a list)."""
        return rules.has_permission(
            session,
            self.principal,
            self.permission(permission),
            project_id=project_id,
            org_id=org_id,
            memo=self._memo(),
        )

    def _memo(self) -> rules.Memo | None:
        """The identity cache, at the generation this request was authenticated under."""
        generation = self._scope.get(GENERATION_SCOPE_KEY)
        if generation is None:
            return None
        return _RequestMemo(identity_cache(self.platform), generation)

    def remembered(self, key: Hashable) -> Any:
        """What :meth:`remember` kept for this caller, route permission and ``key``, or None.

        For answers that depend only on identity tables (the projects a caller sees, an
        organization's members): they stay valid until the next write to those tables,
        in any process (see :mod:`zhongtai.identity.cache`). ``key`` holds the request's
        parameters; the caller and the permission are added here, so one caller's
        answer is never another's.
        """
        generation = self._scope.get(GENERATION_SCOPE_KEY)
        return identity_cache(self.platform).get(
            "result", (self.principal, self._permission, key), generation
        )

    def remember(self, key: Hashable, value: Any) -> None:
        """Keep ``value`` for :meth:`remembered`, if nothing changed since authentication.

        Compute ``value`` after the request was authenticated (any handler code is):
        the generation read then is what the value is filed under.
        """
        generation = self._scope.get(GENERATION_SCOPE_KEY)
        identity_cache(self.platform).put(
            "result", (self.principal, self._permission, key), generation, value
        )

    def visible_projects(self, permission: Permission | str | None = None) -> Select[Any]:
        """``SELECT projects.id`` where the caller holds the permission: filter lists with it."""
        return rules.visible_project_ids(self.principal, self.permission(permission))

    def audit(
        self,
        *,
        action: str | None = None,
        target_kind: str | None = None,
        target_id: str | None = None,
        project_id: str | None = None,
        org_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
        actor_user_id: str | None = None,
    ) -> None:
        """Describe this request for its audit row (written when the response is sent).

        Mutating requests are audited without this call; it names the action and the
        target better than the route template can. Non-mutating routes that must be
        audited (a failed login is a POST anyway) call it to force a row.
        """
        entry: dict[str, Any] = self._scope.setdefault(AUDIT_SCOPE_KEY, {})  # type: ignore[attr-defined]
        values = {
            "action": action,
            "target_kind": target_kind,
            "target_id": target_id,
            "project_id": project_id,
            "org_id": org_id,
            "actor_user_id": actor_user_id,
        }
        entry.update({k: v for k, v in values.items() if v is not None})
        if detail:
            entry.setdefault("detail", {}).update(detail)

    def audit_row(self, status: int) -> dict[str, Any]:
        """This request's audit row as the app would write it after a ``status`` answer
        (the columns of ``audit_events``), for a route that writes it with the change
        it records, in the same transaction or statement: the row then commits with
        the change or not at all. Call :meth:`audit_written` once it has committed;
        until then (and if it never does) the app writes the row after the response,
        as for any request."""
        from zhongtai.identity.audit import request_values

        return request_values(self._scope, status)

    def audit_written(self) -> None:
        """The route committed its :meth:`audit_row`: the app writes no other."""
        self._scope[NO_AUDIT_SCOPE_KEY] = True  # type: ignore[index]  # the request's scope: mutable


class _RequestMemo:
    def __init__(self, cache: Any, generation: int) -> None:
        self._cache, self._generation = cache, generation

    def get(self, key: Hashable) -> Any:
        return self._cache.get("principal", key, self._generation)

    def put(self, key: Hashable, value: Any) -> None:
        self._cache.put("principal", key, self._generation, value)


def provide_access(
    request: Request[Any, Any, Any], platform: Annotated[Any, Dependency(kind="named")]
) -> Access:
    """Litestar dependency provider for ``access: AccessDep``.

    It takes ``platform`` (unused but for its order) so that Litestar resolves the two
    one after the other: dependencies at the same depth are resolved in an anyio task
    group, a task per dependency, which cost more than the rest of a small request.
    """
    spec = request.route_handler.opt.get(ACCESS_OPT)
    return Access(platform, request.scope, spec)


AccessDep: TypeAlias = Annotated[Access, Dependency(kind="named")]


def iter_route_handlers(app: Litestar) -> Iterator[tuple[str, str, BaseRouteHandler]]:
    """Every (method, path, handler) the application really routes, OPTIONS and HEAD included."""
    for route in app.routes:
        handlers: dict[Any, Any] = getattr(route, "route_handler_map", {}) or {}
        if handlers:
            for method, entry in handlers.items():
                handler = entry[0] if isinstance(entry, tuple) else entry
                yield str(method), route.path, handler
        else:
            for handler in getattr(route, "route_handlers", []):
                for method in sorted(getattr(handler, "http_methods", None) or {"WS"}):
                    yield str(method), route.path, handler


def undeclared_routes(app: Litestar) -> list[str]:
    """``"METHOD /path"`` of every route whose access is not stated, or names no permission."""
    platform: Platform = app.state["platform"]
    missing = []
    for method, path, handler in iter_route_handlers(app):
        spec = handler.opt.get(ACCESS_OPT)
        if spec in (PUBLIC, AUTHENTICATED):
            continue
        if spec is None or spec not in platform.permissions:
            missing.append(f"{method} {path}")
    return sorted(set(missing))
