"""API keys: one-time plaintext, keyed-hash storage, cheap and strict verification."""

from __future__ import annotations

import inspect
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from zhongtai.identity import apikeys
from zhongtai.identity.apikeys import (
    ApiKeyInputError,
    ApiKeyNotFound,
    InvalidApiKey,
    create_api_key,
    parse_api_key,
    principal_for_key,
    revoke_api_key,
    rotate_api_key,
    verify_api_key,
)
from zhongtai.identity.models import ApiKey, Organization, Project, User
from zhongtai.platform import Platform

SECRET = secrets.token_urlsafe(48)


@pytest.fixture
def user_id(zt_platform: Platform) -> str:
    with zt_platform.db.transaction() as s:
        user = User(email="alice@example.com")
        s.add(user)
        s.flush()
        return user.id


def create(platform: Platform, user_id: str, **kw: Any) -> tuple[ApiKey, str]:
    kw.setdefault("name", "ci")
    with platform.db.transaction() as s:
        return create_api_key(s, user_id=user_id, secret=SECRET, **kw)


def verify(platform: Platform, presented: str, **kw: Any) -> ApiKey:
    with platform.db.transaction() as s:
        return verify_api_key(s, presented, secret=SECRET, **kw)


def test_round_trip(zt_platform: Platform, user_id: str) -> None:
    row, key = create(zt_platform, user_id)
    assert key.startswith(f"zt_{row.prefix}_")
    assert 8 <= len(row.prefix) <= 12
    assert len(key.split("_", 2)[2]) >= 43  # 32 random bytes, base64url
    assert verify(zt_platform, key).id == row.id


def test_only_a_keyed_hash_is_stored(zt_platform: Platform, user_id: str) -> None:
    _, key = create(zt_platform, user_id)
    with zt_platform.db.transaction() as s:
        stored = s.scalars(select(ApiKey)).one()
    secret_part = key.split("_", 2)[2]
    assert secret_part not in stored.key_hash and key != stored.key_hash
    assert len(stored.key_hash) == 64
    # Keyed: the same key under another platform secret hashes differently.
    with pytest.raises(InvalidApiKey), zt_platform.db.transaction() as s:
        verify_api_key(s, key, secret="other-" + SECRET)


def test_keys_are_distinct(zt_platform: Platform, user_id: str) -> None:
    made = [create(zt_platform, user_id) for _ in range(5)]
    assert len({k for _, k in made}) == 5
    assert len({r.prefix for r, _ in made}) == 5


def test_wrong_secret_with_right_prefix(zt_platform: Platform, user_id: str) -> None:
    row, key = create(zt_platform, user_id)
    forged = f"zt_{row.prefix}_{secrets.token_urlsafe(32)}"
    with pytest.raises(InvalidApiKey, match="secret"):
        verify(zt_platform, forged)
    # One character changed at the end of the real key.
    last = key[-1]
    with pytest.raises(InvalidApiKey):
        verify(zt_platform, key[:-1] + ("A" if last != "A" else "B"))
    with pytest.raises(InvalidApiKey):
        verify(zt_platform, key + "A")


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "zt_",
        "zt_x",
        "zt__",
        "zt_abcdefgh",
        "zt_abcdefgh_",
        "zt_abcdefgh_short",
        "abcdefgh_" + "A" * 43,  # no zt_ prefix
        "zt_" + "A" * 60,  # no prefix separator
        "ZT_abcdefgh_" + "A" * 43,
        "zt_abc_" + "A" * 43,  # prefix too short
        "zt_abcdefghijklm_" + "A" * 43,  # prefix too long
        "zt_abcdefgh_" + "A" * 10_240,  # 10 KB
        "zt_abcdéfgh_" + "A" * 43,  # non-ASCII in the prefix
        "zt_abcdefgh_" + "é" * 43,  # non-ASCII in the secret
        "zt_abcdefgh_" + "A" * 42 + "\n",
        "zt_abcdefgh_" + "A" * 42 + "\x00",
        " zt_abcdefgh_" + "A" * 43,
        "Bearer zt_abcdefgh_" + "A" * 43,
    ],
)
def test_malformed_refused(zt_platform: Platform, user_id: str, presented: str) -> None:
    create(zt_platform, user_id)
    assert parse_api_key(presented) is None
    with pytest.raises(InvalidApiKey, match="malformed"):
        verify(zt_platform, presented)


def test_unknown_prefix_refused(zt_platform: Platform, user_id: str) -> None:
    create(zt_platform, user_id)
    with pytest.raises(InvalidApiKey, match="unknown"):
        verify(zt_platform, f"zt_abcdefghij_{secrets.token_urlsafe(32)}")


def test_revoked_is_invalid_at_once(zt_platform: Platform, user_id: str) -> None:
    row, key = create(zt_platform, user_id)
    verify(zt_platform, key)
    with zt_platform.db.transaction() as s:
        first = revoke_api_key(s, row.id).revoked_at
    with zt_platform.db.transaction() as s:
        assert revoke_api_key(s, row.id).revoked_at == first  # idempotent
    with pytest.raises(InvalidApiKey, match="revoked"):
        verify(zt_platform, key)


def test_revoke_unknown_id(zt_platform: Platform) -> None:
    with pytest.raises(ApiKeyNotFound), zt_platform.db.transaction() as s:
        revoke_api_key(s, "nope")


def test_expired_is_invalid(zt_platform: Platform, user_id: str) -> None:
    now = datetime.now(UTC)
    _, key = create(zt_platform, user_id, expires_at=now + timedelta(hours=1))
    assert verify(zt_platform, key, now=now + timedelta(minutes=59)).id
    with pytest.raises(InvalidApiKey, match="expired"):
        verify(zt_platform, key, now=now + timedelta(hours=1))


def test_inactive_owner_refused(zt_platform: Platform, user_id: str) -> None:
    _, key = create(zt_platform, user_id)
    with zt_platform.db.transaction() as s:
        user = s.get(User, user_id)
        assert user is not None
        user.is_active = False
    with pytest.raises(InvalidApiKey, match="inactive"):
        verify(zt_platform, key)


def test_rotate(zt_platform: Platform, user_id: str) -> None:
    with zt_platform.db.transaction() as s:
        org = Organization(slug="acme", name="Acme")
        s.add(org)
        s.flush()
        project = Project(org_id=org.id, slug="p", name="P")
        s.add(project)
        s.flush()
        project_id = project.id
    expires = datetime.now(UTC) + timedelta(days=30)
    row, old = create(
        zt_platform,
        user_id,
        name="deploy",
        project_id=project_id,
        permissions=["data.dataset.read"],
        expires_at=expires,
    )
    verify(zt_platform, old)
    with zt_platform.db.transaction() as s:
        rotated, new = rotate_api_key(s, row.id, secret=SECRET)
    assert new != old and rotated.id == row.id and rotated.prefix != row.prefix
    with pytest.raises(InvalidApiKey):
        verify(zt_platform, old)
    got = verify(zt_platform, new)
    assert got.id == row.id
    assert (got.name, got.project_id, got.permissions) == (
        "deploy",
        project_id,
        ["data.dataset.read"],
    )
    assert got.expires_at == expires


def test_rotate_refuses_revoked_and_expired(zt_platform: Platform, user_id: str) -> None:
    row, _ = create(zt_platform, user_id)
    with zt_platform.db.transaction() as s:
        revoke_api_key(s, row.id)
    with pytest.raises(InvalidApiKey), zt_platform.db.transaction() as s:
        rotate_api_key(s, row.id, secret=SECRET)
    now = datetime.now(UTC)
    row2, _ = create(zt_platform, user_id, expires_at=now + timedelta(seconds=5))
    with pytest.raises(InvalidApiKey), zt_platform.db.transaction() as s:
        rotate_api_key(s, row2.id, secret=SECRET, now=now + timedelta(seconds=6))
    with pytest.raises(ApiKeyNotFound), zt_platform.db.transaction() as s:
        rotate_api_key(s, "nope", secret=SECRET)


def test_last_used_written_at_most_once_a_minute(zt_platform: Platform, user_id: str) -> None:
    row, key = create(zt_platform, user_id)
    assert row.last_used_at is None
    t0 = datetime.now(UTC)

    def last_used() -> datetime | None:
        with zt_platform.db.transaction() as s:
            return s.scalars(select(ApiKey.last_used_at)).one()

    verify(zt_platform, key, now=t0)
    assert last_used() == t0
    verify(zt_platform, key, now=t0 + timedelta(seconds=30))
    assert last_used() == t0  # not written again within the minute
    verify(zt_platform, key, now=t0 + timedelta(seconds=61))
    assert last_used() == t0 + timedelta(seconds=61)


def test_no_write_within_the_minute(zt_platform: Platform, user_id: str) -> None:
    from sqlalchemy import event

    _, key = create(zt_platform, user_id)
    verify(zt_platform, key)
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(zt_platform.db.engine, "before_cursor_execute", record)
    try:
        verify(zt_platform, key)
    finally:
        event.remove(zt_platform.db.engine, "before_cursor_execute", record)
    assert statements and all(s.lstrip().upper().startswith("SELECT") for s in statements)


def test_constant_time_compare_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # Structure: verification goes through hmac.compare_digest, never ``==``
    # (lookup_api_key holds the checks; verify_api_key calls it).
    source = inspect.getsource(apikeys.lookup_api_key)
    assert "hmac.compare_digest" in source
    assert "key_hash ==" not in source and "== key.key_hash" not in source


def test_compare_digest_called(
    zt_platform: Platform, user_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hmac as hmac_module

    calls: list[tuple[str, str]] = []
    real = hmac_module.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(apikeys.hmac, "compare_digest", spy)
    _, key = create(zt_platform, user_id)
    verify(zt_platform, key)
    assert len(calls) == 1


def test_thousand_verifications_are_fast(zt_platform: Platform, user_id: str) -> None:
    _, key = create(zt_platform, user_id)
    with zt_platform.db.transaction() as s:
        verify_api_key(s, key, secret=SECRET)
        start = time.perf_counter()
        for _ in range(1000):
            verify_api_key(s, key, secret=SECRET)
        elapsed = time.perf_counter() - start
    # argon2 at default parameters costs ~50 ms a call: 1,000 would take ~50 s.
    assert elapsed < 3.0, elapsed


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"permissions": "data.read"}, "permissions"),
        ({"permissions": ["ok", 3]}, "permissions"),
        ({"permissions": [""]}, "permissions"),
        ({"expires_at": datetime(2999, 1, 1)}, "expires_at"),  # naive on purpose
        ({"expires_at": datetime.now(UTC) - timedelta(seconds=1)}, "expires_at"),
    ],
)
def test_bad_input_names_the_field(
    zt_platform: Platform, user_id: str, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ApiKeyInputError) as info:
        create(zt_platform, user_id, **kwargs)
    assert info.value.field == field
    with zt_platform.db.transaction() as s:
        assert s.scalars(select(ApiKey)).all() == []


def test_name_of_200_characters_and_permissions_deduplicated(
    zt_platform: Platform, user_id: str
) -> None:
    row, _ = create(zt_platform, user_id, name="n" * 200, permissions=["a", "b", "a"])
    assert row.permissions == ["a", "b"]


def test_principal_for_key(zt_platform: Platform, user_id: str) -> None:
    scoped, scoped_key = create(zt_platform, user_id, permissions=["data.dataset.read"])
    unscoped, unscoped_key = create(zt_platform, user_id, name="all")
    with zt_platform.db.transaction() as s:
        key = verify_api_key(s, scoped_key, secret=SECRET)
        user = s.get(User, key.user_id)
        assert user is not None
        principal = principal_for_key(key, user)
        assert principal.user_id == user_id and principal.api_key_id == scoped.id
        assert principal.key_permissions == frozenset({"data.dataset.read"})
        assert principal.key_project_id is None
        assert principal.key_allows("data.dataset.read", "p1")
        assert not principal.key_allows("data.dataset.write", "p1")

        key2 = verify_api_key(s, unscoped_key, secret=SECRET)
        assert principal_for_key(key2, user).key_permissions is None
        other = User(email="bob@example.com")
        s.add(other)
        s.flush()
        with pytest.raises(ValueError):
            principal_for_key(key2, other)
    assert unscoped.id != scoped.id
