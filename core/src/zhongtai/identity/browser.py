"""Browser sessions of the web UI: a cookie, checked like a bearer credential.

The cookie holds a random token; the ``browser_sessions`` table keeps only its keyed
hash, the user and the expiry. Signing out deletes the row, and so does anything that
revokes a user's tokens (a password change, deactivation). The cookie is httpOnly,
``SameSite=Lax`` and ``Secure`` whenever the request came over HTTPS.

A request authenticated by the cookie that changes state (POST, PUT, PATCH, DELETE)
must carry the session's CSRF token, in the ``X-CSRF-Token`` header (htmx sends it
from the page's ``hx-headers``) or a ``csrf_token`` form field; without it the guard
answers 403. Requests with an ``Authorization`` header are not affected: a browser
never adds one by itself, so they cannot be forged across sites.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import String, bindparam, delete, select

from zhongtai.hooks.events import utcnow
from zhongtai.identity.models import BrowserSession, User
from zhongtai.identity.principal import Principal
from zhongtai.identity.tokens import hmac_hex

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from zhongtai.platform import Platform

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "csrf_token",
    "end_session",
    "session_principal",
    "start_session",
]

SESSION_COOKIE = "zt_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"


def _session_id(platform: Platform, token: str) -> str:
    return hmac_hex(platform.secret_key, "browser-session:" + token)


def start_session(session: Session, platform: Platform, user_id: str, user_agent: str) -> str:
    """Record a new sign-in of ``user_id``; return the cookie's value."""
    token = secrets.token_urlsafe(32)
    ttl = platform.settings.identity.session_ttl
    session.add(
        BrowserSession(
            id=_session_id(platform, token),
            user_id=user_id,
            created_at=utcnow(),
            expires_at=utcnow() + timedelta(seconds=ttl),
            user_agent=user_agent[:300],
        )
    )
    return token


def end_session(session: Session, platform: Platform, token: str) -> None:
    """Sign the browser out (nothing happens for an unknown token)."""
    session.execute(delete(BrowserSession).where(BrowserSession.id == _session_id(platform, token)))


_LOOKUP = (
    select(User.id, User.is_superuser, BrowserSession.expires_at)
    .join(BrowserSession, BrowserSession.user_id == User.id)
    .where(BrowserSession.id == bindparam("sid", type_=String), User.is_active.is_(True))
)


def session_principal(platform: Platform, token: str) -> Principal | None:
    """The principal of a live session, or None (unknown, expired, user inactive)."""
    if not token or len(token) > 200:
        return None
    with platform.db.engine.connect() as connection:
        row = connection.execute(_LOOKUP, {"sid": _session_id(platform, token)}).first()
    if row is None or row[2] <= utcnow():
        return None
    return Principal(user_id=row[0], is_superuser=bool(row[1]))


def csrf_token(platform: Platform, token: str) -> str:
    """The CSRF token of the session whose cookie is ``token``."""
    return hmac_hex(platform.secret_key, "csrf:" + token)[:40]


def csrf_ok(platform: Platform, token: str, offered: str | None) -> bool:
    return bool(offered) and hmac.compare_digest(csrf_token(platform, token), offered or "")
