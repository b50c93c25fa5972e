"""Signing in and everything around it: tokens, registration, invitations, first-run setup.

Routes (access in brackets):

* ``POST /api/v1/auth/login`` [public] — ``{email, password}`` → an access token and a
  refresh token. Unknown email, wrong password and inactive account get the same 401
  in about the same time (argon2 runs against a dummy hash when there is no user).
  Failed attempts count against the account and the client address
  (:mod:`zhongtai.identity.throttle`); while either is locked the answer is 429 with
  ``Retry-After``, decided before any password is checked.
* ``POST /api/v1/auth/refresh`` [public] — rotate a refresh token; a reused one
  revokes its whole family (401).
* ``POST /api/v1/auth/logout`` [authenticated] — revoke one refresh token of the
  caller's, or all of them with ``{"all": true}``.
* ``GET /api/v1/auth/me`` / ``PATCH /api/v1/auth/me`` [authenticated] — who the
  caller is (memberships, and the API key's scope when one is used); change the
  display name or language.
* ``POST /api/v1/auth/password`` [authenticated, not API keys] — change the password;
  every refresh token of the user is revoked.
* ``POST /api/v1/auth/register`` [public] — self-registration, as
  ``ZHONGTAI_IDENTITY__REGISTRATION`` allows (``off`` by default: 403).
* ``POST /api/v1/auth/invitations/accept`` [authenticated] — join an organization
  with an invitation token (created at ``POST /api/v1/orgs/{org}/invitations``).
* ``POST /api/v1/auth/setup`` [public] — create the first
  administrator with the setup token; refused (409) once any user exists. The
  ``/setup`` page the printed link opens is the web UI's (:mod:`zhongtai.ui.setup`).

The setup token is ``HMAC(secret_key, "zhongtai-setup-v1")``: stateless, so every
worker computes the same one, and useless once a user exists. When there is no user
the identity plugin's ``startup`` hook prints the link (:func:`announce_setup`).
"""

from __future__ import annotations

import hmac
import math
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import click
from litestar import get, patch, post
from litestar.exceptions import (
    PermissionDeniedException,
    TooManyRequestsException,
)
from litestar.params import JSONBody
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from zhongtai.hooks.events import utcnow
from zhongtai.identity import throttle
from zhongtai.identity.api.users import (
    DISPLAY_NAME_MAX,
    EMAIL_MAX,
    PASSWORD_INPUT_MAX,
    AccountError,
    Language,
    WithEmail,
    add_user,
    check_password,
    normalize_email,
    user_dict,
)
from zhongtai.identity.guard import Access, AccessDep, Unauthorized, authenticated, public
from zhongtai.identity.models import (
    Invitation,
    Organization,
    OrgMember,
    Project,
    ProjectMember,
    RefreshToken,
    User,
)
from zhongtai.identity.passwords import hash_password, needs_rehash, verify_password
from zhongtai.identity.roles import Role
from zhongtai.identity.tokens import (
    InvalidToken,
    create_refresh_token,
    hmac_hex,
    issue_access_token,
    revoke_all_for_user,
    revoke_refresh_token,
    rotate_refresh_token,
)
from zhongtai.web.params import PlatformDep

if TYPE_CHECKING:
    from zhongtai.platform import Platform

__all__ = ["ROUTES", "SETUP_TOKEN_CONTEXT", "announce_setup", "setup_token"]

SETUP_TOKEN_CONTEXT = "zhongtai-setup-v1"  # noqa: S105 (HMAC context, not a secret)
TOKEN_INPUT_MAX = 512
_LOGIN_FAILED = "invalid email or password"


# ---------------------------------------------------------------------------
# Request bodies
# ---------------------------------------------------------------------------


class LoginIn(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    # Not normalized beyond trim/lower-case: a malformed address is just a failed login.
    email: str = Field(min_length=1, max_length=EMAIL_MAX)
    password: str = Field(min_length=1, max_length=PASSWORD_INPUT_MAX)


class RefreshIn(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    refresh_token: str = Field(min_length=1, max_length=TOKEN_INPUT_MAX)


class LogoutIn(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", populate_by_name=True)

    refresh_token: str | None = Field(default=None, min_length=1, max_length=TOKEN_INPUT_MAX)
    all_sessions: bool = Field(default=False, alias="all")


class RegisterIn(WithEmail):
    """Self-registration. Anything else (``is_superuser``, ``role``, ``org``…) is a 400."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    email: str = Field(min_length=3, max_length=EMAIL_MAX)
    password: str = Field(min_length=1, max_length=PASSWORD_INPUT_MAX)
    display_name: str = Field(default="", max_length=DISPLAY_NAME_MAX)
    invitation: str | None = Field(default=None, min_length=1, max_length=TOKEN_INPUT_MAX)


class AcceptIn(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    token: str = Field(min_length=1, max_length=TOKEN_INPUT_MAX)


class SetupIn(WithEmail):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    token: str = Field(max_length=TOKEN_INPUT_MAX)
    email: str = Field(min_length=3, max_length=EMAIL_MAX)
    password: str = Field(min_length=1, max_length=PASSWORD_INPUT_MAX)
    display_name: str = Field(default="", max_length=DISPLAY_NAME_MAX)


class ProfileIn(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    display_name: str | None = Field(default=None, max_length=DISPLAY_NAME_MAX)
    language: Language | None = None


class PasswordIn(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    current_password: str = Field(min_length=1, max_length=PASSWORD_INPUT_MAX)
    new_password: str = Field(min_length=1, max_length=PASSWORD_INPUT_MAX)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _token_pair(platform: Platform, session: Session, user_id: str) -> dict[str, Any]:
    ids = platform.settings.identity
    refresh = create_refresh_token(
        session, user_id, secret=platform.secret_key, ttl=timedelta(seconds=ids.refresh_token_ttl)
    )
    return _response_tokens(platform, user_id, refresh)


def _response_tokens(platform: Platform, user_id: str, refresh: str) -> dict[str, Any]:
    ttl = platform.settings.identity.access_token_ttl
    return {
        "access_token": issue_access_token(
            user_id, secret=platform.secret_key, ttl=timedelta(seconds=ttl)
        ),
        "refresh_token": refresh,
        "token_type": "bearer",
        "expires_in": ttl,
    }


def _throttle_args(platform: Platform) -> dict[str, Any]:
    ids = platform.settings.identity
    return {
        "max_failures": ids.login_max_failures,
        "window": timedelta(seconds=ids.login_window),
        "lockout": timedelta(seconds=ids.login_lockout),
    }


def _refuse_if_locked(platform: Platform, keys: list[str]) -> None:
    """429 with ``Retry-After`` while any of ``keys`` is locked."""
    with platform.db.transaction() as session:
        wait = throttle.check(session, keys, now=utcnow())
    if wait is not None:
        seconds = max(1, math.ceil(wait))
        raise TooManyRequestsException(
            detail=f"too many failed attempts; try again in {seconds} seconds",
            headers={"Retry-After": str(seconds)},
        )


def _record_failure(platform: Platform, keys: list[str]) -> None:
    with platform.db.transaction() as session:
        throttle.record_failure(session, keys, now=utcnow(), **_throttle_args(platform))


def _require_user_session(access: AccessDep, what: str) -> str:
    """The caller's user id; API keys may not manage the account that owns them."""
    principal = access.principal
    if principal.api_key_id is not None:
        raise PermissionDeniedException(f"API keys cannot {what}; sign in as the user")
    return principal.user_id


def _invitation_for(session: Session, platform: Platform, token: str, field: str) -> Invitation:
    """The pending invitation ``token`` stands for, or an AccountError(400) naming ``field``."""
    invitation = session.scalar(
        select(Invitation).where(Invitation.token_hash == hmac_hex(platform.secret_key, token))
    )
    if invitation is None:
        raise AccountError(400, field, "not a valid invitation")
    if invitation.accepted_at is not None:
        raise AccountError(400, field, "this invitation has already been used")
    if invitation.expires_at <= utcnow():
        raise AccountError(400, field, "this invitation has expired")
    return invitation


def _accept(session: Session, invitation: Invitation, user: User, email: str, field: str) -> None:
    """Join ``user`` to the invitation's organization and mark the invitation used.

    Never lowers a role the user already holds in the organization.
    """
    if invitation.email.strip().lower() != email:
        raise AccountError(400, field, "this invitation was sent to a different email address")
    # Claim it with a conditional UPDATE: of two concurrent acceptances one wins.
    claimed = session.execute(
        update(Invitation)
        .where(Invitation.id == invitation.id, Invitation.accepted_at.is_(None))
        .values(accepted_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise AccountError(400, field, "this invitation has already been used")
    member = session.scalar(
        select(OrgMember).where(OrgMember.org_id == invitation.org_id, OrgMember.user_id == user.id)
    )
    if member is None:
        session.add(OrgMember(org_id=invitation.org_id, user_id=user.id, role=invitation.role))
    elif member.role < invitation.role:
        member.role = invitation.role
    session.flush()


# ---------------------------------------------------------------------------
# Login, tokens, logout
# ---------------------------------------------------------------------------


@post("/api/v1/auth/login", tags=["auth"], status_code=200, sync_to_thread=True, opt=public())
def login(platform: PlatformDep, access: AccessDep, data: JSONBody[LoginIn]) -> dict[str, Any]:
    """Exchange an email and password for an access token and a refresh token."""
    user_id = password_login(platform, access, data.email, data.password)
    with platform.db.transaction() as session:
        return _token_pair(platform, session, user_id)


def password_login(platform: Platform, access: Access, email: str, password: str) -> str:
    """Check a sign-in (throttled, audited); return the user's id.

    The API's login and the web UI's sign-in form both come here.

    Raises:
        Unauthorized: wrong email or password, or an inactive account (one answer).
        TooManyRequestsException: too many failures; ``Retry-After`` says how long.
    """
    email = email.strip().lower()
    access.audit(action="auth.login", detail={"email": email[:EMAIL_MAX]})
    keys = throttle.keys_for(email, access.client_addr)
    _refuse_if_locked(platform, keys)
    with platform.db.transaction() as session:
        row = session.execute(
            select(User.id, User.password_hash, User.is_active).where(User.email == email)
        ).first()
    stored = row.password_hash if row is not None else None
    # Always spend the argon2 time, whether or not the account exists.
    valid = verify_password(stored, password)
    if row is not None:
        access.audit(target_kind="user", target_id=row.id)
    if not valid or row is None or not row.is_active:
        # The account is the target; whoever typed the password is not known.
        _record_failure(platform, keys)
        raise Unauthorized(_LOGIN_FAILED)
    access.audit(actor_user_id=row.id)
    assert stored is not None
    rehashed = hash_password(password) if needs_rehash(stored) else None
    with platform.db.transaction() as session:
        throttle.record_success(session, throttle.email_key(email))
        if rehashed is not None:
            session.execute(
                update(User)
                .where(User.id == row.id, User.password_hash == stored)
                .values(password_hash=rehashed)
            )
    return str(row.id)


@post("/api/v1/auth/refresh", tags=["auth"], status_code=200, sync_to_thread=True, opt=public())
def refresh(platform: PlatformDep, access: AccessDep, data: JSONBody[RefreshIn]) -> dict[str, Any]:
    """Exchange a refresh token for a new pair; the old refresh token stops working.

    Presenting a refresh token that was already exchanged revokes every token of its
    login (someone else holds a copy) and answers 401.
    """
    access.audit(action="auth.refresh")
    ttl = timedelta(seconds=platform.settings.identity.refresh_token_ttl)
    refused: InvalidToken | None = None
    with platform.db.transaction() as session:
        try:
            user_id, new_token = rotate_refresh_token(
                session, data.refresh_token, secret=platform.secret_key, ttl=ttl
            )
        except InvalidToken as exc:
            # Caught inside the transaction so a family revoked for reuse is committed.
            refused = exc
    if refused is not None:
        access.audit(detail={"reason": type(refused).__name__})
        raise Unauthorized("invalid or expired refresh token")
    access.audit(actor_user_id=user_id)
    return _response_tokens(platform, user_id, new_token)


@post(
    "/api/v1/auth/logout",
    tags=["auth"],
    status_code=204,
    sync_to_thread=True,
    opt=authenticated(),
)
def logout(
    platform: PlatformDep, access: AccessDep, data: JSONBody[LogoutIn | None] = None
) -> None:
    """End sessions: the given refresh token's login, or every login with ``{"all": true}``.

    A refresh token that is not the caller's is ignored, and so is an empty body.
    Access tokens already issued stay valid until they expire (minutes); clients
    drop them. API keys have no sessions: revoke the key instead (403).
    """
    user_id = _require_user_session(access, "end the user's sessions")
    data = data or LogoutIn()
    access.audit(action="auth.logout", detail={"all": data.all_sessions})
    with platform.db.transaction() as session:
        if data.all_sessions:
            revoke_all_for_user(session, user_id)
        elif data.refresh_token is not None:
            owner = session.scalar(
                select(RefreshToken.user_id).where(
                    RefreshToken.token_hash == hmac_hex(platform.secret_key, data.refresh_token)
                )
            )
            if owner == user_id:
                revoke_refresh_token(session, data.refresh_token, secret=platform.secret_key)


# ---------------------------------------------------------------------------
# The caller's own account
# ---------------------------------------------------------------------------


@get("/api/v1/auth/me", tags=["auth"], sync_to_thread=True, opt=authenticated())
def me(platform: PlatformDep, access: AccessDep) -> dict[str, Any]:
    """The caller's account, organization and project memberships, and API key scope."""
    principal = access.principal
    with platform.db.transaction() as session:
        user = session.get(User, principal.user_id)
        if user is None:  # deleted between the guard and here
            raise Unauthorized()
        orgs = session.execute(
            select(Organization.id, Organization.slug, Organization.name, OrgMember.role)
            .join(OrgMember, OrgMember.org_id == Organization.id)
            .where(OrgMember.user_id == user.id)
            .order_by(Organization.slug)
        ).all()
        projects = session.execute(
            select(
                Project.id,
                Project.slug,
                Project.name,
                Project.org_id,
                Organization.slug,
                ProjectMember.role,
            )
            .join(ProjectMember, ProjectMember.project_id == Project.id)
            .join(Organization, Organization.id == Project.org_id)
            .where(ProjectMember.user_id == user.id)
            .order_by(Organization.slug, Project.slug)
        ).all()
        body = user_dict(user)
    body["orgs"] = [
        {"id": o[0], "slug": o[1], "name": o[2], "role": _role_name(o[3])} for o in orgs
    ]
    body["projects"] = [
        {
            "id": p[0],
            "slug": p[1],
            "name": p[2],
            "org_id": p[3],
            "org_slug": p[4],
            "role": _role_name(p[5]),
        }
        for p in projects
    ]
    body["api_key"] = (
        None
        if principal.api_key_id is None
        else {
            "id": principal.api_key_id,
            "project_id": principal.key_project_id,
            "permissions": (
                sorted(principal.key_permissions) if principal.key_permissions is not None else None
            ),
        }
    )
    return body


def _role_name(value: int) -> str:
    try:
        return Role(value).name
    except ValueError:
        return str(value)


@patch("/api/v1/auth/me", tags=["auth"], sync_to_thread=True, opt=authenticated())
def update_me(
    platform: PlatformDep, access: AccessDep, data: JSONBody[ProfileIn]
) -> dict[str, Any]:
    """Change the caller's display name or language (``en``, ``zh-CN``)."""
    changes = data.model_dump(exclude_none=True)
    user_id = access.principal.user_id
    access.audit(
        action="user.profile.update", target_kind="user", target_id=user_id, detail=changes
    )
    with platform.db.transaction() as session:
        user = session.get(User, user_id)
        if user is None:
            raise Unauthorized()
        if "display_name" in changes:
            user.display_name = changes["display_name"].strip()
        if "language" in changes:
            user.language = changes["language"]
        session.flush()
        return user_dict(user)


@post(
    "/api/v1/auth/password",
    tags=["auth"],
    status_code=204,
    sync_to_thread=True,
    opt=authenticated(),
)
def change_password(platform: PlatformDep, access: AccessDep, data: JSONBody[PasswordIn]) -> None:
    """Change the caller's password; every refresh token of the account is revoked.

    A wrong current password counts as a failed login (so a stolen access token
    cannot be used to guess the password) and answers 400 naming ``current_password``.
    """
    user_id = _require_user_session(access, "change passwords")
    access.audit(action="user.password.change", target_kind="user", target_id=user_id)
    with platform.db.transaction() as session:
        row = session.execute(
            select(User.email, User.password_hash).where(User.id == user_id)
        ).first()
    if row is None:
        raise Unauthorized()
    keys = throttle.keys_for(row.email, access.client_addr)
    _refuse_if_locked(platform, keys)
    if not verify_password(row.password_hash, data.current_password):
        _record_failure(platform, keys)
        raise AccountError(400, "current_password", "is not correct").http()
    try:
        check_password(
            data.new_password,
            min_length=platform.settings.identity.password_min_length,
            email=row.email,
        )
    except AccountError as exc:
        raise exc.http() from None
    hashed = hash_password(data.new_password)
    with platform.db.transaction() as session:
        throttle.record_success(session, throttle.email_key(row.email))
        session.execute(
            update(User).where(User.id == user_id).values(password_hash=hashed, updated_at=utcnow())
        )
        revoke_all_for_user(session, user_id)


# ---------------------------------------------------------------------------
# Registration and invitations
# ---------------------------------------------------------------------------


@post("/api/v1/auth/register", tags=["auth"], sync_to_thread=True, opt=public())
def register(
    platform: PlatformDep, access: AccessDep, data: JSONBody[RegisterIn]
) -> dict[str, Any]:
    """Create an account, as ``ZHONGTAI_IDENTITY__REGISTRATION`` allows.

    ``off``: 403. ``invite``: only with a valid ``invitation`` token sent to this
    email. ``open``: anyone; an invitation still grants its organization role. The
    new account is never a superuser.
    """
    access.audit(
        action="auth.register",
        target_kind="user",
        detail={"email": data.email, "with_invitation": data.invitation is not None},
    )
    mode = platform.settings.identity.registration
    if mode == "off":
        raise PermissionDeniedException("self-registration is turned off on this server")
    try:
        if mode == "invite" and data.invitation is None:
            raise AccountError(403, "invitation", "registration on this server needs an invitation")
        check_password(
            data.password,
            min_length=platform.settings.identity.password_min_length,
            email=data.email,
        )
        if data.invitation is not None:
            with platform.db.transaction() as session:  # fail fast, before argon2
                _invitation_for(session, platform, data.invitation, "invitation")
        hashed = hash_password(data.password)
        with platform.db.transaction() as session:
            invitation = (
                _invitation_for(session, platform, data.invitation, "invitation")
                if data.invitation is not None
                else None
            )
            if invitation is not None and invitation.email.strip().lower() != data.email:
                raise AccountError(
                    400, "invitation", "this invitation was sent to a different email address"
                )
            user = add_user(
                session, email=data.email, password_hash=hashed, display_name=data.display_name
            )
            if invitation is not None:
                _accept(session, invitation, user, data.email, "invitation")
                access.audit(org_id=invitation.org_id)
            access.audit(actor_user_id=user.id, target_id=user.id)
            return user_dict(user)
    except AccountError as exc:
        raise exc.http() from None


@post(
    "/api/v1/auth/invitations/accept",
    tags=["auth"],
    status_code=200,
    sync_to_thread=True,
    opt=authenticated(),
)
def accept_invitation(
    platform: PlatformDep, access: AccessDep, data: JSONBody[AcceptIn]
) -> dict[str, Any]:
    """Join the invitation's organization with its role, as the signed-in user.

    The invitation must have been sent to the caller's email; a used, expired or
    unknown token is a 400 naming ``token``.
    """
    user_id = _require_user_session(access, "accept invitations")
    access.audit(action="invitation.accept", target_kind="invitation")
    try:
        with platform.db.transaction() as session:
            user = session.get(User, user_id)
            if user is None:
                raise Unauthorized()
            invitation = _invitation_for(session, platform, data.token, "token")
            access.audit(target_id=invitation.id, org_id=invitation.org_id)
            _accept(session, invitation, user, user.email, "token")
            org = session.get(Organization, invitation.org_id)
            role = session.scalar(
                select(OrgMember.role).where(
                    OrgMember.org_id == invitation.org_id, OrgMember.user_id == user_id
                )
            )
            return {
                "org": {
                    "id": invitation.org_id,
                    "slug": org.slug if org else None,
                    "name": org.name if org else None,
                },
                "role": _role_name(role if role is not None else invitation.role),
            }
    except AccountError as exc:
        raise exc.http() from None


# ---------------------------------------------------------------------------
# First-run setup
# ---------------------------------------------------------------------------


def setup_token(secret_key: str) -> str:
    """The first-run setup token of a platform (the same in every worker)."""
    return hmac_hex(secret_key, SETUP_TOKEN_CONTEXT)


def setup_url(platform: Platform) -> str:
    return f"{platform.settings.base_url}/setup?token={setup_token(platform.secret_key)}"


def _any_user(session: Session) -> bool:
    return session.scalar(select(User.id).limit(1)) is not None


def announce_setup(platform: Platform) -> bool:
    """Print the setup link to stderr when no user exists (the identity ``startup`` hook).

    Printed with click rather than logged: log masking would hide the token, and
    the operator needs to read it. Returns whether it printed.
    """
    with platform.db.transaction() as session:
        if _any_user(session):
            return False
    click.echo(
        f"zhongtai: no users yet — open {setup_url(platform)} to create the first administrator"
        " (or run `zhongtai users create --superuser`)",
        err=True,
    )
    return True


def _lock_for_first_user(session: Session) -> None:
    """Serialize first-user creation so two setups cannot both see an empty table."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        # Conflicts with itself and with INSERTs, not with reads.
        session.execute(text("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE"))
    else:
        # SQLite: any write statement takes the database's single write lock, which
        # the other transaction then waits for (busy_timeout) before it reads.
        session.execute(update(User).where(User.id.is_(None)).values(is_active=True))


def check_setup_allowed(platform: Platform, token: str | None) -> None:
    """Raise unless setup may run now with ``token``.

    Raises:
        AccountError: 409 when a user exists already (whatever the token), 403 naming
            ``token`` when it is missing or not the setup token.
    """
    with platform.db.transaction() as session:
        if _any_user(session):
            raise AccountError(409, "token", "setup is already done; sign in instead")
    expected = setup_token(platform.secret_key)
    if not token or not hmac.compare_digest(token.encode(), expected.encode()):
        raise AccountError(403, "token", "not the setup token printed at start-up")


def run_setup(
    platform: Platform, *, token: str, email: str, password: str, display_name: str
) -> User:
    """Create the first user, a superuser, if ``token`` is the setup token.

    Raises:
        AccountError: 409 when a user exists already, 403 naming ``token`` when it is
            wrong, 400 naming ``email``, 422 naming ``password``.
    """
    check_setup_allowed(platform, token)
    try:
        address = normalize_email(email)
    except ValueError as exc:
        raise AccountError(400, "email", str(exc)) from None
    check_password(
        password, min_length=platform.settings.identity.password_min_length, email=address
    )
    hashed = hash_password(password)
    with platform.db.transaction() as session:
        _lock_for_first_user(session)
        if _any_user(session):
            raise AccountError(409, "token", "setup is already done; sign in instead")
        return add_user(
            session,
            email=address,
            password_hash=hashed,
            display_name=display_name,
            is_superuser=True,
        )


@post("/api/v1/auth/setup", tags=["auth"], sync_to_thread=True, opt=public())
def setup(platform: PlatformDep, access: AccessDep, data: JSONBody[SetupIn]) -> dict[str, Any]:
    """Create the first administrator with the setup token (refused once any user exists)."""
    access.audit(
        action="auth.setup", target_kind="user", detail={"email": data.email, "via": "api"}
    )
    try:
        user = run_setup(
            platform,
            token=data.token,
            email=data.email,
            password=data.password,
            display_name=data.display_name,
        )
    except AccountError as exc:
        raise exc.http() from None
    access.audit(actor_user_id=user.id, target_id=user.id)
    return user_dict(user)


ROUTES: list[Any] = [
    login,
    refresh,
    logout,
    me,
    update_me,
    change_password,
    register,
    accept_invitation,
    setup,
]
