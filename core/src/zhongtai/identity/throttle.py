"""Failed-login throttling per account and per client address.

Each key (``email:<lower-case email>``, ``addr:<ip>``) counts failures in a window;
``max_failures`` within it lock the key for ``lockout``, and the login route answers
429 with ``Retry-After`` while any of its keys is locked. Throttling the address
too slows one client spraying many accounts; throttling the account slows many
clients guessing one password.

Failures are counted with one UPSERT per key that increments in SQL. A
read-modify-write in Python would lose counts when two failed logins land at once,
exactly the case an attacker creates on purpose.

Typical use in the login route::

    keys = throttle.keys_for(email, client_addr)
    with db.transaction() as session:
        wait = throttle.check(session, keys, now=now)
    if wait is not None:
        ...  # 429, Retry-After: math.ceil(wait)
    if password is wrong:
        with db.transaction() as session:
            throttle.record_failure(session, keys, now=now)
    else:
        with db.transaction() as session:
            throttle.record_success(session, throttle.email_key(email))
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, func, literal, null, or_, select
from sqlalchemy.orm import Session

from zhongtai.identity.models import LoginThrottle

__all__ = [
    "DEFAULT_LOCKOUT",
    "DEFAULT_MAX_FAILURES",
    "DEFAULT_WINDOW",
    "addr_key",
    "check",
    "email_key",
    "keys_for",
    "purge",
    "record_failure",
    "record_success",
]

DEFAULT_MAX_FAILURES = 5
DEFAULT_WINDOW = timedelta(minutes=15)
DEFAULT_LOCKOUT = timedelta(minutes=15)

_EMAIL = "email:"
_ADDR = "addr:"
_MAX_PART = 320  # the longest email address; the key column holds 400 characters

_table = LoginThrottle.__table__


def _bounded(kind: str, value: str) -> str:
    # An attacker chooses the email string: anything longer than a real address is
    # hashed so the key still fits its column and still counts per value.
    if len(value) > _MAX_PART:
        value = "sha256:" + hashlib.sha256(value.encode()).hexdigest()
    return kind + value


def email_key(email: str) -> str:
    """The throttle key of an account (the email as typed, trimmed and lower-cased)."""
    return _bounded(_EMAIL, email.strip().lower())


def addr_key(addr: str) -> str:
    """The throttle key of a client address."""
    return _bounded(_ADDR, addr.strip().lower())


def keys_for(email: str, addr: str | None) -> list[str]:
    """The keys a login attempt counts against: the account and, if known, the address."""
    keys = [email_key(email)]
    if addr:
        keys.append(addr_key(addr))
    return keys


def check(session: Session, keys: Iterable[str], *, now: datetime) -> float | None:
    """How long the caller must wait before trying again, or None when not locked.

    Args:
        session: Any session.
        keys: The attempt's keys (:func:`keys_for`).
        now: The current time.

    Returns:
        Seconds until the latest lock among ``keys`` ends (for ``Retry-After``,
        rounded up by the route), or None.
    """
    wanted = list(keys)
    if not wanted:
        return None
    until = session.scalar(
        select(func.max(LoginThrottle.locked_until)).where(
            LoginThrottle.key.in_(wanted), LoginThrottle.locked_until > now
        )
    )
    if until is None:
        return None
    return max((until - now).total_seconds(), 0.0)


def _insert_for(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert
    raise NotImplementedError(f"login throttling does not support the {dialect} database")


def record_failure(
    session: Session,
    keys: Iterable[str],
    *,
    now: datetime,
    max_failures: int = DEFAULT_MAX_FAILURES,
    window: timedelta = DEFAULT_WINDOW,
    lockout: timedelta = DEFAULT_LOCKOUT,
) -> None:
    """Count one failed login against each key, locking those that reach the limit.

    A key's count starts afresh when its window has passed or its last lock has
    ended, so after a lockout a client gets ``max_failures`` new attempts.

    Args:
        session: The caller's session; the caller commits.
        keys: The attempt's keys (:func:`keys_for`).
        now: The current time (timezone-aware).
        max_failures: Failures within ``window`` that lock a key.
        window: How long failures are remembered.
        lockout: How long a lock lasts.
    """
    if max_failures < 1:
        raise ValueError("max_failures must be at least 1")
    insert = _insert_for(session)
    t = _table.c
    # Typed literals so the dialect stores them like the column (UTC, same format).
    now_value = literal(now, type_=t.window_started_at.type)
    locked_value = literal(now + lockout, type_=t.locked_until.type)
    restart = or_(
        t.window_started_at <= now - window,
        and_(t.locked_until.is_not(None), t.locked_until <= now),
    )
    # In ON CONFLICT DO UPDATE every expression reads the row as it was before this
    # statement, on both PostgreSQL and SQLite, so the new count is spelled out
    # wherever it is needed rather than read back from ``failures``.
    new_failures = case((restart, 1), else_=t.failures + 1)
    # Sorted: two transactions upserting the same keys lock the rows in the same
    # order, so PostgreSQL cannot deadlock them against each other.
    for key in sorted(set(keys)):
        stmt = insert(_table).values(
            key=key,
            failures=1,
            window_started_at=now,
            locked_until=(now + lockout) if max_failures <= 1 else None,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.key],
            set_={
                "failures": new_failures,
                "window_started_at": case((restart, now_value), else_=t.window_started_at),
                "locked_until": case(
                    (new_failures >= max_failures, locked_value),
                    (restart, null()),
                    else_=t.locked_until,
                ),
            },
        )
        session.execute(stmt)


def record_success(session: Session, email_key: str) -> None:
    """Forget the failures of an account after a successful login.

    Only the account's key: the address keeps its count, or an attacker who owns one
    account could clear their address's record between guesses at others.
    """
    if not email_key.startswith(_EMAIL):
        raise ValueError("record_success takes the account key (email:…), not an address key")
    session.execute(delete(LoginThrottle).where(LoginThrottle.key == email_key))


def purge(session: Session, *, now: datetime, window: timedelta = DEFAULT_WINDOW) -> int:
    """Delete rows whose window has passed and that hold no lock (periodic cleanup).

    Returns:
        How many rows were deleted.
    """
    result = session.execute(
        delete(LoginThrottle).where(
            LoginThrottle.window_started_at <= now - window,
            or_(LoginThrottle.locked_until.is_(None), LoginThrottle.locked_until <= now),
        )
    )
    count: int = result.rowcount  # type: ignore[attr-defined]
    return count
