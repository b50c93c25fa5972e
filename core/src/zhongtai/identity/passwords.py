"""Password hashing (argon2id) and the password rule."""

from __future__ import annotations

import functools

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters


@functools.cache
def _dummy() -> str:
    """A valid hash of a fixed password, made on first use (hashing costs ~50 ms).

    Verifying against it when the account does not exist costs the same time as a
    real check, so unknown emails are not told apart from wrong passwords.
    """
    return _hasher.hash("zhongtai-timing-equaliser")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """Check ``password`` against ``stored`` (None: no such user, still spends the time)."""
    try:
        return _hasher.verify(stored or _dummy(), password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    return _hasher.check_needs_rehash(stored)


def password_problems(password: str, *, min_length: int, email: str | None = None) -> list[str]:
    """What is wrong with ``password`` under the configured rule (empty when fine)."""
    problems = []
    if len(password) < min_length:
        problems.append(f"must be at least {min_length} characters")
    if len(password) > 1024:
        problems.append("must be at most 1024 characters")
    if len(set(password)) < 4:
        problems.append("must use at least 4 different characters")
    if email and password.lower() == email.lower():
        problems.append("must not be the email address")
    return problems
