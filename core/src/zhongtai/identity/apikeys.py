"""API keys: ``zt_<prefix>_<secret>``, stored as a prefix and an HMAC of the whole key.

The prefix is public (listed, logged) and finds the row through a unique index;
the secret is 32 random bytes. Only ``HMAC-SHA256(secret_key, full_key)`` is kept,
so a copy of the table is useless without the platform's key. A keyed hash is
enough here, unlike passwords: the secret has 256 bits of entropy, so there is
nothing to brute-force, and HMAC costs microseconds where argon2 would cost tens
of milliseconds on every request.

Checking that a key's project and permissions are within what its creator holds is
the route's job (it knows the roles); a key is further narrowed at use by
:class:`~zhongtai.identity.principal.Principal`, which never widens the owner's
current holdings.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import Connection, String, bindparam, or_, select, update
from sqlalchemy.orm import Session

from zhongtai.hooks.events import utcnow
from zhongtai.identity.models import ApiKey, User
from zhongtai.identity.principal import Principal
from zhongtai.identity.tokens import hmac_hex

__all__ = [
    "KEY_PREFIX",
    "ApiKeyInputError",
    "ApiKeyNotFound",
    "InvalidApiKey",
    "KeyLookup",
    "create_api_key",
    "lookup_api_key",
    "parse_api_key",
    "principal_for_key",
    "revoke_api_key",
    "rotate_api_key",
    "touch_api_key",
    "verify_api_key",
]

KEY_PREFIX = "zt_"
# Lower-case letters and digits only: url-safe, and free of "_" so the prefix ends
# at the first underscore even though the secret may contain some.
_PREFIX_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_PREFIX_LENGTH = 10  # ~52 bits: collisions are rare, and retried
_SECRET_BYTES = 32
_KEY_RE = re.compile(r"zt_([a-z0-9]{8,12})_([A-Za-z0-9_-]{43,128})", re.ASCII)
# Anything longer is refused before any regex or HMAC work.
_MAX_KEY_LENGTH = 3 + 12 + 1 + 128
# ``last_used_at`` is advisory: writing it at most this often keeps verification
# from turning every authenticated request into a database write.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class InvalidApiKey(Exception):
    """A presented key is unknown, malformed, revoked, expired or its owner inactive.

    The API answers 401 for all of them; the message is for logs only.
    """


class ApiKeyInputError(ValueError):
    """Bad input to create a key; ``field`` names the offending field (for a 422)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ApiKeyNotFound(LookupError):
    """No key has this id."""


def _new_prefix() -> str:
    return "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(_PREFIX_LENGTH))


def _new_key() -> tuple[str, str]:
    prefix = _new_prefix()
    return prefix, f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(_SECRET_BYTES)}"


def _unused_prefix_and_key(session: Session) -> tuple[str, str]:
    # Checked before insert so a collision does not abort the caller's transaction;
    # a concurrent collision with the same 52-bit prefix would still fail at commit.
    for _ in range(5):
        prefix, key = _new_key()
        if session.scalar(select(ApiKey.id).where(ApiKey.prefix == prefix)) is None:
            return prefix, key
    raise RuntimeError("could not find an unused API key prefix")  # pragma: no cover


def parse_api_key(presented: str) -> tuple[str, str] | None:
    """Split a presented key into ``(prefix, full_key)``; None when it is not one of ours."""
    if not isinstance(presented, str) or len(presented) > _MAX_KEY_LENGTH:
        return None
    if not presented.isascii() or not presented.startswith(KEY_PREFIX):
        return None
    match = _KEY_RE.fullmatch(presented)
    if match is None:
        return None
    return match.group(1), presented


def _validate(
    *,
    name: str,
    permissions: Sequence[str] | None,
    expires_at: datetime | None,
    now: datetime,
) -> tuple[str, list[str] | None]:
    if not isinstance(name, str) or not name.strip():
        raise ApiKeyInputError("name", "must not be empty")
    name = name.strip()
    if len(name) > 200:
        raise ApiKeyInputError("name", "must be at most 200 characters")
    perms: list[str] | None = None
    if permissions is not None:
        # A bare string is a Sequence too; "data.read" must not become 9 permissions.
        if isinstance(permissions, str | bytes) or not isinstance(permissions, Sequence):
            raise ApiKeyInputError("permissions", "must be a list of permission names")
        perms = []
        for item in permissions:
            if not isinstance(item, str) or not item or len(item) > 128:
                raise ApiKeyInputError(
                    "permissions", "each must be a permission name of 1-128 characters"
                )
            if item not in perms:
                perms.append(item)
    if expires_at is not None:
        if not isinstance(expires_at, datetime) or expires_at.tzinfo is None:
            raise ApiKeyInputError("expires_at", "must be a timezone-aware date and time")
        if expires_at <= now:
            raise ApiKeyInputError("expires_at", "must be in the future")
    return name, perms


def create_api_key(
    session: Session,
    *,
    user_id: str,
    name: str,
    project_id: str | None = None,
    permissions: Sequence[str] | None = None,
    expires_at: datetime | None = None,
    secret: str,
    now: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for ``user_id``.

    The caller (the route) must first check that ``project_id`` and every entry of
    ``permissions`` are within what the creator holds; this function only checks
    their shape.

    Args:
        session: The caller's session; the caller commits.
        user_id: The owner; the key never acts with more than the owner holds.
        name: A label of 1-200 characters.
        project_id: Restrict the key to this project (None: all of the owner's).
        permissions: Restrict the key to these permissions (None: all of the owner's).
        expires_at: A timezone-aware time in the future, or None for no expiry.
        secret: The platform's secret key.
        now: The current time (tests).

    Returns:
        ``(row, plaintext key)``; the plaintext is shown once and never stored.

    Raises:
        ApiKeyInputError: A field is invalid; ``field`` names it.
    """
    name, perms = _validate(
        name=name, permissions=permissions, expires_at=expires_at, now=now or utcnow()
    )
    prefix, key = _unused_prefix_and_key(session)
    row = ApiKey(
        user_id=user_id,
        name=name,
        prefix=prefix,
        key_hash=hmac_hex(secret, key),
        project_id=project_id,
        permissions=perms,
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return row, key


def verify_api_key(
    session: Session, presented: str, *, secret: str, now: datetime | None = None
) -> ApiKey:
    """Find the key ``presented`` stands for and check it may be used now.

    The ORM flavour of :func:`lookup_api_key` (same checks), for code that wants the
    row; it also records the key's use in the caller's transaction.

    Args:
        session: The caller's session; commit it to keep ``last_used_at``.
        presented: The key as sent (``zt_…``, without ``Bearer``).
        secret: The platform's secret key.
        now: The current time (tests).

    Returns:
        The key's row.

    Raises:
        InvalidApiKey: Malformed, unknown, wrong secret, revoked, expired, or the
            owner is inactive.
    """
    current = now or utcnow()
    # The checks live in one place: the per-request path, lookup_api_key.
    found = lookup_api_key(session.connection(), presented, secret=secret, now=current)
    key = session.get(ApiKey, found.principal.api_key_id)
    assert key is not None  # just read in the same transaction
    if found.stale_at(current):
        key.last_used_at = current
    return key


def _get(session: Session, key_id: str) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise ApiKeyNotFound(key_id)
    return key


def revoke_api_key(session: Session, key_id: str, *, now: datetime | None = None) -> ApiKey:
    """Revoke a key; it stops working at once. Revoking twice keeps the first time.

    Raises:
        ApiKeyNotFound: No key has this id (the route checks ownership first).
    """
    key = _get(session, key_id)
    if key.revoked_at is None:
        key.revoked_at = now or utcnow()
        session.flush()
    return key


def rotate_api_key(
    session: Session, key_id: str, *, secret: str, now: datetime | None = None
) -> tuple[ApiKey, str]:
    """Give a key a new prefix and secret; the old string stops working at once.

    The row keeps its id, name, project, permissions and expiry, so listings and
    the audit log follow the key across rotations.

    Returns:
        ``(row, new plaintext key)``.

    Raises:
        ApiKeyNotFound: No key has this id.
        InvalidApiKey: The key is revoked or expired (rotating must not revive it).
    """
    key = _get(session, key_id)
    current = now or utcnow()
    if key.revoked_at is not None:
        raise InvalidApiKey("API key revoked")
    if key.expires_at is not None and key.expires_at <= current:
        raise InvalidApiKey("API key expired")
    prefix, plaintext = _unused_prefix_and_key(session)
    key.prefix = prefix
    key.key_hash = hmac_hex(secret, plaintext)
    key.last_used_at = None
    session.flush()
    return key, plaintext


# Built once: constructing the statement per request costs more than running it.
_LOOKUP = (
    select(
        ApiKey.id,
        ApiKey.user_id,
        ApiKey.key_hash,
        ApiKey.project_id,
        ApiKey.permissions,
        ApiKey.expires_at,
        ApiKey.revoked_at,
        ApiKey.last_used_at,
        User.is_active,
        User.is_superuser,
    )
    .join(User, User.id == ApiKey.user_id)
    .where(ApiKey.prefix == bindparam("prefix", type_=String))
)


class KeyLookup(NamedTuple):
    """A usable key as :func:`lookup_api_key` found it."""

    principal: Principal
    expires_at: datetime | None
    last_used_at: datetime | None

    def usable_at(self, now: datetime) -> bool:
        """Whether the key has not expired by ``now`` (what a cached lookup re-checks)."""
        return self.expires_at is None or self.expires_at > now

    def stale_at(self, now: datetime) -> bool:
        """Whether ``last_used_at`` is older than :data:`LAST_USED_RESOLUTION` at ``now``."""
        return self.last_used_at is None or now - self.last_used_at >= LAST_USED_RESOLUTION


def lookup_api_key(
    connection: Connection, presented: str, *, secret: str, now: datetime | None = None
) -> KeyLookup:
    """The principal a presented key acts as, read with one Core query (the per-request path).

    Same checks as :func:`verify_api_key`, without loading ORM objects or writing.

    Returns:
        The principal with the key's expiry and last use; when ``stale_at(now)``,
        the caller should :func:`touch_api_key`.

    Raises:
        InvalidApiKey: Malformed, unknown, wrong secret, revoked, expired, or the
            owner is inactive.
    """
    parsed = parse_api_key(presented)
    if parsed is None:
        raise InvalidApiKey("malformed API key")
    prefix, full_key = parsed
    row = connection.execute(_LOOKUP, {"prefix": prefix}).first()
    if row is None:
        raise InvalidApiKey("unknown API key")
    (key_id, user_id, key_hash, project_id, perms, expires_at, revoked_at, last_used) = row[:8]
    active, superuser = row[8], row[9]
    if not hmac.compare_digest(hmac_hex(secret, full_key), key_hash):
        raise InvalidApiKey("wrong API key secret")
    current = now or utcnow()
    if revoked_at is not None:
        raise InvalidApiKey("API key revoked")
    if expires_at is not None and expires_at <= current:
        raise InvalidApiKey("API key expired")
    if not active:
        raise InvalidApiKey("API key owner inactive")
    principal = Principal(
        user_id=user_id,
        is_superuser=bool(superuser),
        api_key_id=key_id,
        key_project_id=project_id,
        key_permissions=frozenset(perms) if perms is not None else None,
    )
    return KeyLookup(principal, expires_at, last_used)


def touch_api_key(connection: Connection, key_id: str, *, now: datetime | None = None) -> None:
    """Record that a key was used (advisory; at most once per :data:`LAST_USED_RESOLUTION`)."""
    current = now or utcnow()
    connection.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id)
        .where(
            or_(
                ApiKey.last_used_at.is_(None),
                ApiKey.last_used_at <= current - LAST_USED_RESOLUTION,
            )
        )
        .values(last_used_at=current)
    )


def principal_for_key(key: ApiKey, user: User) -> Principal:
    """The principal a request made with ``key`` acts as: the owner, narrowed by the key."""
    if key.user_id != user.id:
        raise ValueError("the key does not belong to this user")
    return Principal(
        user_id=user.id,
        is_superuser=user.is_superuser,
        api_key_id=key.id,
        key_project_id=key.project_id,
        key_permissions=frozenset(key.permissions) if key.permissions is not None else None,
    )
