"""Access tokens refuse every forgery; refresh tokens rotate and detect reuse."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from sqlalchemy import select

from zhongtai.identity.models import RefreshToken, User
from zhongtai.identity.tokens import (
    AccessClaims,
    InvalidToken,
    RefreshTokenReused,
    create_refresh_token,
    issue_access_token,
    revoke_all_for_user,
    revoke_refresh_token,
    rotate_refresh_token,
    verify_access_token,
)
from zhongtai.platform import Platform

SECRET = secrets.token_urlsafe(48)
TTL = timedelta(minutes=15)
REFRESH_TTL = timedelta(days=14)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def craft(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A JWT built by hand, signed with HMAC-SHA256 over ``key`` (or unsigned)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    sig = "" if key is None else b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())
    return f"{signing_input}.{sig}"


def good_payload(**overrides: Any) -> dict[str, Any]:
    now = int(datetime.now(UTC).timestamp())
    payload: dict[str, Any] = {
        "sub": "user1",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "iss": "zhongtai",
        "aud": "zhongtai-api",
        "jti": "j1",
        "typ": "access",
    }
    payload.update(overrides)
    return payload


def verify(token: str) -> AccessClaims:
    return verify_access_token(token, secret=SECRET, issuer="zhongtai", audience="zhongtai-api")


# -- access tokens ---------------------------------------------------------------------


def test_round_trip() -> None:
    now = datetime.now(UTC)
    token = issue_access_token("user1", secret=SECRET, ttl=TTL, now=now)
    claims = verify(token)
    assert claims.user_id == "user1"
    assert abs((claims.expires_at - (now + TTL)).total_seconds()) < 1
    assert claims.expires_at.tzinfo is not None
    assert claims.token_id
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    body = jwt.decode(token, options={"verify_signature": False})
    assert set(body) >= {"sub", "iat", "nbf", "exp", "iss", "aud", "jti", "typ"}
    assert body["typ"] == "access"


def test_each_token_has_its_own_id() -> None:
    a = verify(issue_access_token("u", secret=SECRET, ttl=TTL))
    b = verify(issue_access_token("u", secret=SECRET, ttl=TTL))
    assert a.token_id != b.token_id


def test_the_hand_crafted_good_token_passes() -> None:
    # Proves the crafting helper is right, so the refusals below are for their reason.
    token = craft({"alg": "HS256", "typ": "JWT"}, good_payload(), SECRET.encode())
    assert verify(token).user_id == "user1"


def test_alg_none_refused() -> None:
    for alg in ("none", "None", "NONE"):
        token = craft({"alg": alg, "typ": "JWT"}, good_payload(), None)
        with pytest.raises(InvalidToken):
            verify(token)


def test_wrong_key_refused() -> None:
    token = issue_access_token("user1", secret=secrets.token_urlsafe(48), ttl=TTL)
    with pytest.raises(InvalidToken):
        verify(token)


def test_expired_refused() -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    token = issue_access_token("user1", secret=SECRET, ttl=TTL, now=past)
    with pytest.raises(InvalidToken, match="Expired"):
        verify(token)


def test_leeway_tolerates_small_skew() -> None:
    past = datetime.now(UTC) - TTL - timedelta(seconds=10)
    token = issue_access_token("user1", secret=SECRET, ttl=TTL, now=past)
    assert verify(token).user_id == "user1"
    with pytest.raises(InvalidToken):
        verify_access_token(
            token, secret=SECRET, issuer="zhongtai", audience="zhongtai-api", leeway=timedelta(0)
        )


def test_not_yet_valid_refused() -> None:
    future = datetime.now(UTC) + timedelta(hours=1)
    token = issue_access_token("user1", secret=SECRET, ttl=TTL, now=future)
    with pytest.raises(InvalidToken):
        verify(token)


def test_wrong_audience_refused() -> None:
    token = issue_access_token("user1", secret=SECRET, ttl=TTL, audience="someone-else")
    with pytest.raises(InvalidToken):
        verify(token)


def test_wrong_issuer_refused() -> None:
    token = issue_access_token("user1", secret=SECRET, ttl=TTL, issuer="evil")
    with pytest.raises(InvalidToken):
        verify(token)


def test_tampered_payload_refused() -> None:
    token = issue_access_token("user1", secret=SECRET, ttl=TTL)
    header, payload, sig = token.split(".")
    # Flip one character in the middle of the payload (the last one may carry only
    # padding bits that decode to the same bytes).
    i = len(payload) // 2
    flipped = payload[:i] + ("A" if payload[i] != "A" else "B") + payload[i + 1 :]
    with pytest.raises(InvalidToken):
        verify(f"{header}.{flipped}.{sig}")
    # And a payload rewritten to another user, keeping the old signature.
    other = b64(json.dumps(good_payload(sub="admin")).encode())
    with pytest.raises(InvalidToken):
        verify(f"{header}.{other}.{sig}")


def test_tampered_signature_refused() -> None:
    token = issue_access_token("user1", secret=SECRET, ttl=TTL)
    header, payload, sig = token.split(".")
    i = len(sig) // 2
    flipped = sig[:i] + ("A" if sig[i] != "A" else "B") + sig[i + 1 :]
    with pytest.raises(InvalidToken):
        verify(f"{header}.{payload}.{flipped}")


@pytest.mark.parametrize("typ", ["refresh", "invite", None])
def test_wrong_type_refused(typ: str | None) -> None:
    payload = good_payload(typ=typ)
    if typ is None:
        del payload["typ"]
    token = craft({"alg": "HS256", "typ": "JWT"}, payload, SECRET.encode())
    with pytest.raises(InvalidToken, match="not an access token"):
        verify(token)


@pytest.mark.parametrize("claim", ["exp", "iat", "iss", "aud", "sub", "nbf", "jti"])
def test_missing_claim_refused(claim: str) -> None:
    payload = good_payload()
    del payload[claim]
    token = craft({"alg": "HS256", "typ": "JWT"}, payload, SECRET.encode())
    with pytest.raises(InvalidToken):
        verify(token)


def test_non_string_subject_refused() -> None:
    token = craft({"alg": "HS256", "typ": "JWT"}, good_payload(sub=123), SECRET.encode())
    with pytest.raises(InvalidToken):
        verify(token)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "HS512", "PS256"])
def test_algorithm_confusion_refused(alg: str) -> None:
    # An attacker who knows a public key signs with it as an HMAC secret and claims
    # an asymmetric algorithm; here the secret itself is the HMAC material, the worst
    # case: only the fixed algorithm list stops it.
    token = craft({"alg": alg, "typ": "JWT"}, good_payload(), SECRET.encode())
    with pytest.raises(InvalidToken):
        verify(token)


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b", "a.b.c", "....", "x" * 20_000, "é.é.é", "Bearer x.y.z"],
)
def test_garbage_refused(token: str) -> None:
    with pytest.raises(InvalidToken):
        verify(token)


def test_issue_refuses_empty_secret_and_bad_ttl() -> None:
    with pytest.raises(ValueError):
        issue_access_token("u", secret="", ttl=TTL)
    with pytest.raises(ValueError):
        issue_access_token("u", secret=SECRET, ttl=timedelta(0))


# -- refresh tokens --------------------------------------------------------------------


@pytest.fixture
def user_id(zt_platform: Platform) -> str:
    with zt_platform.db.transaction() as s:
        user = User(email="alice@example.com")
        s.add(user)
        s.flush()
        return user.id


def create(platform: Platform, user_id: str, **kw: Any) -> str:
    with platform.db.transaction() as s:
        return create_refresh_token(s, user_id, secret=SECRET, ttl=REFRESH_TTL, **kw)


def rotate(platform: Platform, token: str, **kw: Any) -> tuple[str, str]:
    with platform.db.transaction() as s:
        return rotate_refresh_token(s, token, secret=SECRET, ttl=REFRESH_TTL, **kw)


def rotate_committing_failure(platform: Platform, token: str) -> InvalidToken | tuple[str, str]:
    """The pattern a route uses: the revocation commits even though the call fails."""
    with platform.db.transaction() as s:
        try:
            return rotate_refresh_token(s, token, secret=SECRET, ttl=REFRESH_TTL)
        except InvalidToken as exc:
            return exc


def test_refresh_stored_hashed(zt_platform: Platform, user_id: str) -> None:
    token = create(zt_platform, user_id)
    assert len(token) >= 43
    with zt_platform.db.transaction() as s:
        rows = s.scalars(select(RefreshToken)).all()
    assert len(rows) == 1
    assert rows[0].token_hash != token and token not in rows[0].token_hash
    assert len(rows[0].token_hash) == 64


def test_rotation_issues_next_in_family(zt_platform: Platform, user_id: str) -> None:
    first = create(zt_platform, user_id)
    uid, second = rotate(zt_platform, first)
    assert uid == user_id and second != first
    uid, _third = rotate(zt_platform, second)
    assert uid == user_id
    with zt_platform.db.transaction() as s:
        rows = s.scalars(select(RefreshToken).order_by(RefreshToken.created_at)).all()
    assert len({r.family for r in rows}) == 1
    assert [r.used_at is not None for r in rows] == [True, True, False]


def test_each_login_has_its_own_family(zt_platform: Platform, user_id: str) -> None:
    create(zt_platform, user_id)
    create(zt_platform, user_id)
    with zt_platform.db.transaction() as s:
        assert len(set(s.scalars(select(RefreshToken.family)))) == 2


def test_reuse_revokes_the_whole_family(zt_platform: Platform, user_id: str) -> None:
    stolen = create(zt_platform, user_id)
    other_login = create(zt_platform, user_id)
    _, legit_next = rotate(zt_platform, stolen)  # the real client refreshes
    result = rotate_committing_failure(zt_platform, stolen)  # the thief replays
    assert isinstance(result, RefreshTokenReused)
    # The real client's current token died with the family…
    with pytest.raises(InvalidToken):
        rotate(zt_platform, legit_next)
    # …but another login of the same user is untouched.
    rotate(zt_platform, other_login)


def test_reuse_raised_through_a_transaction_is_an_invalid_token(
    zt_platform: Platform, user_id: str
) -> None:
    token = create(zt_platform, user_id)
    rotate(zt_platform, token)
    with pytest.raises(InvalidToken):
        rotate(zt_platform, token)


def test_expired_refresh_refused(zt_platform: Platform, user_id: str) -> None:
    past = datetime.now(UTC) - REFRESH_TTL - timedelta(seconds=1)
    token = create(zt_platform, user_id, now=past)
    with pytest.raises(InvalidToken, match="expired"):
        rotate(zt_platform, token)


def test_unknown_and_malformed_refresh_refused(zt_platform: Platform, user_id: str) -> None:
    create(zt_platform, user_id)
    for token in [secrets.token_urlsafe(32), "", "x" * 10_000, "é"]:
        with pytest.raises(InvalidToken):
            rotate(zt_platform, token)


def test_refresh_under_another_secret_refused(zt_platform: Platform, user_id: str) -> None:
    token = create(zt_platform, user_id)
    with pytest.raises(InvalidToken), zt_platform.db.transaction() as s:
        rotate_refresh_token(s, token, secret="another-" + SECRET, ttl=REFRESH_TTL)


def test_logout_revokes_and_is_idempotent(zt_platform: Platform, user_id: str) -> None:
    token = create(zt_platform, user_id)
    _, current = rotate(zt_platform, token)
    for _ in range(2):
        with zt_platform.db.transaction() as s:
            revoke_refresh_token(s, current, secret=SECRET)
    with pytest.raises(InvalidToken, match="revoked"):
        rotate(zt_platform, current)
    with zt_platform.db.transaction() as s:
        revoke_refresh_token(s, "never-issued", secret=SECRET)  # no error
        assert all(r.revoked_at is not None for r in s.scalars(select(RefreshToken)))


def test_revoke_all_for_user(zt_platform: Platform, user_id: str) -> None:
    tokens = [create(zt_platform, user_id) for _ in range(3)]
    with zt_platform.db.transaction() as s:
        bob = User(email="bob@example.com")
        s.add(bob)
        s.flush()
        bob_token = create_refresh_token(s, bob.id, secret=SECRET, ttl=REFRESH_TTL)
    with zt_platform.db.transaction() as s:
        assert revoke_all_for_user(s, user_id) == 3
    for token in tokens:
        with pytest.raises(InvalidToken):
            rotate(zt_platform, token)
    rotate(zt_platform, bob_token)


def test_inactive_user_refused(zt_platform: Platform, user_id: str) -> None:
    token = create(zt_platform, user_id)
    with zt_platform.db.transaction() as s:
        user = s.get(User, user_id)
        assert user is not None
        user.is_active = False
    with pytest.raises(InvalidToken, match="inactive"):
        rotate(zt_platform, token)
