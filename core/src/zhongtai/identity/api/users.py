"""User accounts: the rules every way of creating one shares, and the superusers' API.

:func:`normalize_email`, :func:`check_password` and :func:`add_user` are the one place
that says what a valid account is; registration, first-run setup, the superusers'
``POST /api/v1/users`` and ``zhongtai users create`` all go through them, so they
refuse the same things with the same words. They raise :class:`AccountError`, which
names the offending field and carries the HTTP status the API answers with
(:meth:`AccountError.http`).

Routes (all ``core.users.manage``, a site-scope permission: superusers only, and an
API key only when it is not scoped to a project and lists that permission):

* ``GET /api/v1/users`` — paginated; ``q`` matches email or display name, ``active``
  filters on the active flag.
* ``GET /api/v1/users/{user_id}``
* ``POST /api/v1/users`` — create an account (optionally a superuser).
* ``PATCH /api/v1/users/{user_id}`` — display name, language, active and superuser
  flags. Deactivating ends the user's sessions at once; a superuser cannot
  deactivate themselves or drop their own superuser flag (409), so the site never
  loses its last administrator by accident.

Self-service (profile, password) lives in :mod:`zhongtai.identity.api.auth`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from litestar import get, patch, post
from litestar.exceptions import HTTPException, NotFoundException
from litestar.params import JSONBody, PathParameter, QueryParameter
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from zhongtai.identity.guard import AccessDep, requires
from zhongtai.identity.models import User
from zhongtai.identity.passwords import password_problems
from zhongtai.identity.permissions import USERS_MANAGE
from zhongtai.identity.tokens import revoke_all_for_user
from zhongtai.web.pagination import page_for, paginate
from zhongtai.web.params import PlatformDep

__all__ = [
    "LANGUAGES",
    "ROUTES",
    "AccountError",
    "Language",
    "WithEmail",
    "add_user",
    "check_password",
    "normalize_email",
    "user_dict",
]

Language = Literal["en", "zh-CN"]
LANGUAGES: tuple[str, ...] = ("en", "zh-CN")
EMAIL_MAX = 320
UserId = Annotated[str, PathParameter(min_length=1, max_length=64)]
DISPLAY_NAME_MAX = 200
# Wider than the password rule's own limit (1024), so an over-long password gets the
# rule's 422 rather than a schema 400; still bounds what argon2 is asked to hash.
PASSWORD_INPUT_MAX = 4096
# Deliberately loose: one "@", no spaces, a dot in the domain. Deliverability is the
# mail server's business; this only keeps obvious garbage out of a unique column.
_EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s.][^@\s]*$")


class AccountError(Exception):
    """An account cannot be created or changed as asked.

    Attributes:
        status: The HTTP status the API answers with (400, 403, 409, 422).
        field: The request field at fault (``email``, ``password``, ``invitation``…).
        message: What is wrong, fit to show the user.
    """

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.status = status
        self.field = field
        self.message = message

    def http(self) -> HTTPException:
        """The problem response for this error, naming the field."""
        return HTTPException(
            status_code=self.status,
            detail=f"{self.field}: {self.message}",
            extra=[{"key": self.field, "message": self.message}],
        )


def normalize_email(value: str) -> str:
    """The address as stored: trimmed and lower-cased.

    Raises:
        ValueError: It does not look like an email address.
    """
    email = value.strip().lower()
    if len(email) > EMAIL_MAX or not email.isprintable() or not _EMAIL_RE.match(email):
        raise ValueError("not a valid email address")
    return email


def check_password(password: str, *, min_length: int, email: str | None = None) -> None:
    """Apply the configured password rule.

    Raises:
        AccountError: 422 naming ``password`` and each rule it breaks.
    """
    problems = password_problems(password, min_length=min_length, email=email)
    if problems:
        raise AccountError(422, "password", "; ".join(problems))


def email_taken(session: Session, email: str) -> bool:
    return session.scalar(select(User.id).where(User.email == email)) is not None


def add_user(
    session: Session,
    *,
    email: str,
    password_hash: str,
    display_name: str = "",
    is_superuser: bool = False,
    language: str = "en",
) -> User:
    """Insert an account (``email`` already normalized, password already checked and hashed).

    Raises:
        AccountError: 409 naming ``email`` when the address is taken, including by a
            concurrent request (the unique index decides).
    """
    if email_taken(session, email):
        raise AccountError(409, "email", "already registered")
    user = User(
        email=email,
        display_name=display_name.strip(),
        password_hash=password_hash,
        is_superuser=is_superuser,
        language=language,
    )
    try:
        with session.begin_nested():
            session.add(user)
            session.flush()
    except IntegrityError:
        raise AccountError(409, "email", "already registered") from None
    return user


def user_dict(user: User) -> dict[str, Any]:
    """An account as the API shows it (never the password hash)."""
    return {
        "id": user.id,
        "email": user.email,
        "display_name": user.display_name,
        "language": user.language,
        "is_active": user.is_active,
        "is_superuser": user.is_superuser,
        "created_at": user.created_at.isoformat(),
        "updated_at": user.updated_at.isoformat() if user.updated_at else None,
    }


class WithEmail(BaseModel):
    """Base of request bodies with an ``email``: it is validated and normalized."""

    @field_validator("email", mode="after", check_fields=False)
    @classmethod
    def _email(cls, value: str) -> str:
        return normalize_email(value)


class UserCreate(WithEmail):
    """A new account made by a superuser."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    email: str = Field(min_length=3, max_length=EMAIL_MAX)
    password: str = Field(min_length=1, max_length=PASSWORD_INPUT_MAX)
    display_name: str = Field(default="", max_length=DISPLAY_NAME_MAX)
    is_superuser: bool = False
    language: Language = "en"


class UserUpdate(BaseModel):
    """Fields a superuser may change; those left out stay as they are."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    display_name: str | None = Field(default=None, max_length=DISPLAY_NAME_MAX)
    is_active: bool | None = None
    is_superuser: bool | None = None
    language: Language | None = None


def _get_user(session: Session, user_id: str) -> User:
    user = session.get(User, user_id) if len(user_id) <= 32 else None
    if user is None:
        raise NotFoundException("no such user")
    return user


@get("/api/v1/users", tags=["users"], sync_to_thread=True, opt=requires(USERS_MANAGE))
def list_users(
    platform: PlatformDep,
    access: AccessDep,
    q: Annotated[str | None, QueryParameter(max_length=200)] = None,
    active: Annotated[bool | None, QueryParameter()] = None,
    limit: Annotated[int | None, QueryParameter()] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
) -> dict[str, Any]:
    """Every account, oldest first; ``q`` matches email or display name (any case)."""
    page = page_for(platform.settings, limit, cursor)
    query = select(User)
    if q:
        needle = q.strip().lower()
        query = query.where(
            or_(
                User.email.contains(needle, autoescape=True),
                func.lower(User.display_name).contains(needle, autoescape=True),
            )
        )
    if active is not None:
        query = query.where(User.is_active.is_(active))
    with platform.db.transaction() as session:
        access.require(session)  # narrows API keys the guard lets through
        return paginate(session, query, User.id, page).to_dict(user_dict)


@get(
    "/api/v1/users/{user_id:str}",
    tags=["users"],
    sync_to_thread=True,
    opt=requires(USERS_MANAGE),
)
def get_user(platform: PlatformDep, access: AccessDep, user_id: UserId) -> dict[str, Any]:
    """One account (404 when there is none)."""
    with platform.db.transaction() as session:
        access.require(session)
        return user_dict(_get_user(session, user_id))


@post("/api/v1/users", tags=["users"], sync_to_thread=True, opt=requires(USERS_MANAGE))
def create_user(
    platform: PlatformDep, access: AccessDep, data: JSONBody[UserCreate]
) -> dict[str, Any]:
    """Create an account; 409 when the email is taken, 422 when the password is weak."""
    from zhongtai.identity.passwords import hash_password

    access.audit(action="user.create", target_kind="user", detail={"email": data.email})
    with platform.db.transaction() as session:
        access.require(session)
    try:
        check_password(
            data.password,
            min_length=platform.settings.identity.password_min_length,
            email=data.email,
        )
        hashed = hash_password(data.password)  # outside the transaction: it takes a while
        with platform.db.transaction() as session:
            user = add_user(
                session,
                email=data.email,
                password_hash=hashed,
                display_name=data.display_name,
                is_superuser=data.is_superuser,
                language=data.language,
            )
            access.audit(
                target_id=user.id, detail={"is_superuser": user.is_superuser, "via": "api"}
            )
            return user_dict(user)
    except AccountError as exc:
        raise exc.http() from None


@patch(
    "/api/v1/users/{user_id:str}",
    tags=["users"],
    sync_to_thread=True,
    opt=requires(USERS_MANAGE),
)
def update_user(
    platform: PlatformDep, access: AccessDep, user_id: UserId, data: JSONBody[UserUpdate]
) -> dict[str, Any]:
    """Change an account. Deactivating it revokes its refresh tokens (and its access
    tokens and API keys stop working on the next request, as the guard reads the flag).
    """
    changes = data.model_dump(exclude_none=True)
    access.audit(action="user.update", target_kind="user", target_id=user_id, detail=changes)
    with platform.db.transaction() as session:
        access.require(session)
        user = _get_user(session, user_id)
        if user.id == access.principal.user_id:
            if changes.get("is_active") is False:
                raise AccountError(409, "is_active", "you cannot deactivate yourself").http()
            if changes.get("is_superuser") is False:
                raise AccountError(
                    409, "is_superuser", "you cannot remove your own superuser flag"
                ).http()
        if "display_name" in changes:
            user.display_name = changes["display_name"].strip()
        if "language" in changes:
            user.language = changes["language"]
        if "is_superuser" in changes:
            user.is_superuser = changes["is_superuser"]
        if "is_active" in changes:
            if user.is_active and not changes["is_active"]:
                revoke_all_for_user(session, user.id)
            user.is_active = changes["is_active"]
        session.flush()
        return user_dict(user)


ROUTES: list[Any] = [list_users, get_user, create_user, update_user]
