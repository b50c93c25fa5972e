"""Access tokens (short-lived JWTs) and rotating refresh tokens (opaque, stored hashed).

Access tokens are HS256 JWTs signed with the platform's secret key. Verification
accepts exactly one algorithm, so neither ``alg: none`` nor an RS256 header over a
secret used as HMAC material (algorithm confusion) can get through, and every
failure is the one :class:`InvalidToken`: the API answers 401 whatever the reason,
the message only helps the log.

Refresh tokens are random strings; the database keeps only an HMAC of each, so a
leaked table cannot be replayed. Each login starts a *family*; a refresh marks the
presented token used and issues the next one of the same family. Presenting a used
token again means two parties hold the same token (one of them a thief), so the
whole family is revoked, as the OAuth 2.0 Security BCP (RFC 9700, 4.14.2) advises.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from zhongtai.hooks.events import utcnow
from zhongtai.identity.models import BrowserSession, RefreshToken, User
from zhongtai.metadata.ids import new_id

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "AccessClaims",
    "InvalidToken",
    "RefreshTokenReused",
    "create_refresh_token",
    "hmac_hex",
    "issue_access_token",
    "revoke_all_for_user",
    "revoke_refresh_token",
    "rotate_refresh_token",
    "verify_access_token",
]

ACCESS_TOKEN_TYPE = "access"  # noqa: S105 (a claim value, not a secret)
DEFAULT_ISSUER = "zhongtai"
DEFAULT_AUDIENCE = "zhongtai-api"
# One algorithm, fixed here and never read from the token's header.
_ALGORITHMS = ["HS256"]
_REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]
# Longer than anything we issue by far; refusing earlier keeps a huge header from
# costing base64 and JSON work on every request.
_MAX_TOKEN_LENGTH = 8192


class InvalidToken(Exception):
    """A token is not acceptable (the API answers 401; the message is for logs only)."""


class RefreshTokenReused(InvalidToken):
    """A refresh token that was already rotated came back; its family is now revoked.

    The revocation has been written to the session: the caller must commit it (catch
    the error inside the transaction) or the thief's copy stays valid.
    """


@dataclasses.dataclass(frozen=True)
class AccessClaims:
    """What a verified access token says."""

    user_id: str
    expires_at: datetime
    token_id: str


def hmac_hex(secret: str, value: str) -> str:
    """HMAC-SHA256 of ``value`` under ``secret``, as 64 hex digits.

    A keyed hash rather than a plain one: without the secret key, a copy of the
    table is no help in guessing or checking tokens. Microseconds, unlike argon2, so
    it can run on every request.
    """
    if not secret:
        raise ValueError("the secret key is empty")
    return hmac.new(secret.encode(), value.encode(), hashlib.sha256).hexdigest()


def issue_access_token(
    principal_user_id: str,
    *,
    secret: str,
    ttl: timedelta,
    issuer: str = DEFAULT_ISSUER,
    audience: str = DEFAULT_AUDIENCE,
    now: datetime | None = None,
) -> str:
    """Sign a short-lived access token for a user.

    Args:
        principal_user_id: The user the token acts as (the ``sub`` claim).
        secret: The platform's secret key (``Settings.resolved_secret_key()``).
        ttl: How long the token is valid.
        issuer: The ``iss`` claim.
        audience: The ``aud`` claim.
        now: The issue time (tests); defaults to the current UTC time.

    Returns:
        The encoded JWT.
    """
    if not secret:
        raise ValueError("the secret key is empty")
    if ttl <= timedelta(0):
        raise ValueError("ttl must be positive")
    issued = now or utcnow()
    payload = {
        "sub": principal_user_id,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl,
        "iss": issuer,
        "aud": audience,
        "jti": new_id(),
        "typ": ACCESS_TOKEN_TYPE,
    }
    import jwt  # lazily: PyJWT imports cryptography (~0.1 s), paid on first use, not at start

    return jwt.encode(payload, secret, algorithm=_ALGORITHMS[0])


def verify_access_token(
    token: str,
    *,
    secret: str,
    issuer: str = DEFAULT_ISSUER,
    audience: str = DEFAULT_AUDIENCE,
    leeway: timedelta = timedelta(seconds=30),
) -> AccessClaims:
    """Check an access token's signature, type and claims.

    Args:
        token: The encoded JWT as presented (without ``Bearer``).
        secret: The platform's secret key.
        issuer: The ``iss`` the token must carry.
        audience: The ``aud`` the token must carry.
        leeway: Clock skew tolerated on ``exp``, ``nbf`` and ``iat``.

    Returns:
        The token's claims.

    Raises:
        InvalidToken: For every reason a token is refused.
    """
    if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_LENGTH:
        raise InvalidToken("malformed token")
    import jwt

    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=_ALGORITHMS,
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            options={"require": _REQUIRED_CLAIMS, "verify_signature": True},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"{type(exc).__name__}: {exc}") from None
    # A refresh or invitation token signed with the same key must not pass as access.
    if claims.get("typ") != ACCESS_TOKEN_TYPE:
        raise InvalidToken("not an access token")
    sub, jti, exp = claims.get("sub"), claims.get("jti"), claims.get("exp")
    if not isinstance(sub, str) or not sub or not isinstance(jti, str):
        raise InvalidToken("bad sub or jti claim")
    if not isinstance(exp, int | float):
        raise InvalidToken("bad exp claim")
    return AccessClaims(user_id=sub, expires_at=datetime.fromtimestamp(exp, UTC), token_id=jti)


def _new_refresh_row(
    session: Session, user_id: str, family: str, *, secret: str, expires_at: datetime
) -> str:
    token = secrets.token_urlsafe(32)
    session.add(
        RefreshToken(
            user_id=user_id,
            family=family,
            token_hash=hmac_hex(secret, token),
            expires_at=expires_at,
        )
    )
    session.flush()
    return token


def create_refresh_token(
    session: Session,
    user_id: str,
    *,
    secret: str,
    ttl: timedelta,
    now: datetime | None = None,
) -> str:
    """Start a new refresh-token family (one per login) and return its first token.

    Args:
        session: The caller's session; the caller commits.
        user_id: The user who logged in.
        secret: The platform's secret key.
        ttl: How long the token is valid.
        now: The current time (tests).

    Returns:
        The plaintext token, to hand to the client once.
    """
    if ttl <= timedelta(0):
        raise ValueError("ttl must be positive")
    current = now or utcnow()
    return _new_refresh_row(session, user_id, new_id(), secret=secret, expires_at=current + ttl)


def rotate_refresh_token(
    session: Session,
    token: str,
    *,
    secret: str,
    ttl: timedelta,
    now: datetime | None = None,
) -> tuple[str, str]:
    """Exchange a refresh token for the next one of its family.

    Call it inside a transaction and catch :class:`InvalidToken` *inside* it, so that
    a family revoked for reuse is committed before the 401 goes out::

        with db.transaction() as session:
            try:
                user_id, new_token = rotate_refresh_token(session, token, ...)
            except InvalidToken:
                refused = True

    Args:
        session: The caller's session; the caller commits.
        token: The refresh token presented.
        secret: The platform's secret key.
        ttl: How long the new token is valid (from now).
        now: The current time (tests).

    Returns:
        ``(user_id, new_token)``.

    Raises:
        RefreshTokenReused: The token was already rotated: the family is revoked.
        InvalidToken: The token is unknown, expired, revoked, or its user inactive.
    """
    current = now or utcnow()
    if not isinstance(token, str) or not token or len(token) > 512:
        raise InvalidToken("malformed refresh token")
    row = session.execute(
        select(RefreshToken, User.is_active)
        .join(User, User.id == RefreshToken.user_id)
        .where(RefreshToken.token_hash == hmac_hex(secret, token))
    ).first()
    if row is None:
        raise InvalidToken("unknown refresh token")
    stored, user_active = row
    if stored.revoked_at is not None:
        raise InvalidToken("refresh token revoked")
    if stored.used_at is not None:
        _revoke_family(session, stored.family, current)
        raise RefreshTokenReused("refresh token reused; its family is revoked")
    if stored.expires_at <= current:
        raise InvalidToken("refresh token expired")
    if not user_active:
        raise InvalidToken("user inactive")
    # Claim the token with a conditional UPDATE rather than trusting what was read:
    # of two concurrent refreshes with the same token only one matches a row; the
    # other is a reuse and is treated as one.
    claimed = session.execute(
        update(RefreshToken)
        .where(
            RefreshToken.id == stored.id,
            RefreshToken.used_at.is_(None),
            RefreshToken.revoked_at.is_(None),
        )
        .values(used_at=current)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        _revoke_family(session, stored.family, current)
        raise RefreshTokenReused("refresh token reused concurrently; its family is revoked")
    session.expire(stored)
    new_token = _new_refresh_row(
        session, stored.user_id, stored.family, secret=secret, expires_at=current + ttl
    )
    return stored.user_id, new_token


def _revoke_family(session: Session, family: str, now: datetime) -> None:
    session.execute(
        update(RefreshToken)
        .where(RefreshToken.family == family, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    # Rows already loaded in this session must not keep a stale ``revoked_at``.
    for obj in list(session.identity_map.values()):
        if isinstance(obj, RefreshToken) and obj.family == family:
            session.expire(obj)


def revoke_refresh_token(
    session: Session, token: str, *, secret: str, now: datetime | None = None
) -> None:
    """Log out: revoke the family of ``token``. Unknown or revoked tokens are fine.

    Revoking the family, not just the one token, ends the session for every token
    it produced, including a copy that someone else might hold.
    """
    if not isinstance(token, str) or not token or len(token) > 512:
        return
    family = session.scalar(
        select(RefreshToken.family).where(RefreshToken.token_hash == hmac_hex(secret, token))
    )
    if family is not None:
        _revoke_family(session, family, now or utcnow())


def revoke_all_for_user(session: Session, user_id: str, *, now: datetime | None = None) -> int:
    """Revoke every refresh token of a user, and sign out every browser of theirs
    (password change, deactivation).

    Returns:
        How many tokens were revoked now.
    """
    session.execute(
        delete(BrowserSession)
        .where(BrowserSession.user_id == user_id)
        .execution_options(synchronize_session=False)
    )
    result = session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
    for obj in list(session.identity_map.values()):
        if isinstance(obj, RefreshToken) and obj.user_id == user_id:
            session.expire(obj)
    count: int = result.rowcount  # type: ignore[attr-defined]
    return count
