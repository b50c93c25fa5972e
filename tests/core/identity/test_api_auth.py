"""The sign-in API over HTTP: login, tokens, logout, registration, invitations, setup.

Every test drives the real app (guard, handlers, audit) on SQLite or, with
ZHONGTAI_TEST_DATABASE_URL, PostgreSQL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from zhongtai.identity.api.auth import announce_setup, setup_token
from zhongtai.identity.models import (
    AuditEvent,
    Invitation,
    LoginThrottle,
    OrgMember,
    RefreshToken,
    User,
)
from zhongtai.identity.roles import Role
from zhongtai.identity.tokens import hmac_hex

PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "a different passphrase 42"


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def login(client: Any, email: str, password: str = PASSWORD) -> Any:
    return client.post("/api/v1/auth/login", json={"email": email, "password": password})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def problem_without_ids(response: Any) -> dict[str, Any]:
    body = dict(response.json())
    body.pop("request_id", None)
    return body


def count_users(platform: Any) -> int:
    with platform.db.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(User)) or 0)


def audit_rows(platform: Any, action: str) -> list[AuditEvent]:
    with platform.db.transaction() as session:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.occurred_at)
        ).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


def invite(
    platform: Any,
    org: Any,
    email: str,
    role: Role = Role.developer,
    *,
    expires_in: timedelta = timedelta(days=1),
    accepted: bool = False,
) -> str:
    """An invitation stored the way the organizations API stores one; returns the token."""
    token = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    with platform.db.transaction() as session:
        session.add(
            Invitation(
                org_id=org.id,
                email=email.lower(),
                role=int(role),
                token_hash=hmac_hex(platform.secret_key, token),
                expires_at=now + expires_in,
                accepted_at=now if accepted else None,
            )
        )
    return token


def org_role_of(platform: Any, org: Any, user_id: str) -> int | None:
    with platform.db.transaction() as session:
        return session.scalar(
            select(OrgMember.role).where(OrgMember.org_id == org.id, OrgMember.user_id == user_id)
        )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def craft(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    sig = "" if key is None else b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())
    return f"{signing_input}.{sig}"


def claims(sub: str, **overrides: Any) -> dict[str, Any]:
    now = int(datetime.now(UTC).timestamp())
    payload: dict[str, Any] = {
        "sub": sub,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "iss": "zhongtai",
        "aud": "zhongtai-api",
        "jti": secrets.token_hex(8),
        "typ": "access",
    }
    payload.update(overrides)
    return payload


# ---------------------------------------------------------------------------
# Login
# ---------------------------------------------------------------------------


def test_login_returns_tokens_that_work_on_me(zt_client, zt_identity, zt_platform):
    user = zt_identity.user("Ada@Example.com", display_name="Ada")
    response = login(zt_client, "  ADA@example.COM ")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == zt_platform.settings.identity.access_token_ttl
    assert body["access_token"] and body["refresh_token"]
    assert "argon2" not in response.text

    me = zt_client.get("/api/v1/auth/me", headers=bearer(body["access_token"]))
    assert me.status_code == 200, me.text
    assert me.json()["id"] == user.id
    assert me.json()["email"] == "ada@example.com"
    assert me.json()["display_name"] == "Ada"
    assert me.json()["api_key"] is None
    assert "password" not in me.text and "argon2" not in me.text


def test_unknown_email_wrong_password_and_inactive_get_the_same_answer(zt_client, zt_identity):
    zt_identity.user("real@example.com")
    zt_identity.user("gone@example.com", active=False)
    unknown = login(zt_client, "nobody@example.com")
    wrong = login(zt_client, "real@example.com", "not the password")
    inactive = login(zt_client, "gone@example.com")
    assert unknown.status_code == wrong.status_code == inactive.status_code == 401
    assert problem_without_ids(unknown) == problem_without_ids(wrong)
    assert problem_without_ids(wrong) == problem_without_ids(inactive)
    assert unknown.headers.get("www-authenticate") == wrong.headers.get("www-authenticate")


def test_login_is_audited_without_the_password(zt_client, zt_identity, zt_platform):
    user = zt_identity.user("audit@example.com")
    assert login(zt_client, "audit@example.com", "wrong password!").status_code == 401
    assert login(zt_client, "audit@example.com").status_code == 200
    assert login(zt_client, "stranger@example.com", "whatever123").status_code == 401
    rows = audit_rows(zt_platform, "auth.login")
    assert [r.outcome for r in rows] == ["denied", "success", "denied"]
    # A failed attempt names the account as its target, never as the actor.
    assert rows[0].actor_user_id is None
    assert (rows[0].target_kind, rows[0].target_id) == ("user", user.id)
    assert rows[1].actor_user_id == user.id
    assert rows[2].actor_user_id is None
    assert rows[2].detail["email"] == "stranger@example.com"
    for row in rows:
        assert "wrong password" not in json.dumps(row.detail)
        assert PASSWORD not in json.dumps(row.detail)
        assert "whatever123" not in json.dumps(row.detail)


def test_login_upgrades_an_outdated_password_hash(zt_client, zt_identity, zt_platform):
    from argon2 import PasswordHasher

    from zhongtai.identity.passwords import needs_rehash, verify_password

    user = zt_identity.user("old@example.com")
    old_hash = PasswordHasher(time_cost=1, memory_cost=8192).hash(PASSWORD)
    with zt_platform.db.transaction() as session:
        session.get(User, user.id).password_hash = old_hash
    assert login(zt_client, "old@example.com").status_code == 200
    with zt_platform.db.transaction() as session:
        stored = session.get(User, user.id).password_hash
    assert stored != old_hash and not needs_rehash(stored)
    assert verify_password(stored, PASSWORD)


def test_login_refuses_extra_fields_and_missing_password(zt_client):
    extra = zt_client.post(
        "/api/v1/auth/login", json={"email": "a@example.com", "password": "x", "admin": True}
    )
    assert extra.status_code == 400
    assert "admin" in extra.text
    missing = zt_client.post("/api/v1/auth/login", json={"email": "a@example.com"})
    assert missing.status_code == 400
    assert "password" in missing.text


def test_repeated_failures_lock_the_account_with_retry_after(identity_app):
    with identity_app(login_max_failures=3, login_lockout=120) as ia:
        ia.identity.user("victim@example.com")
        for _ in range(3):
            assert login(ia.client, "victim@example.com", "guess guess").status_code == 401
        # Locked: even the right password is refused, before it is checked.
        locked = login(ia.client, "victim@example.com")
        assert locked.status_code == 429
        retry = locked.headers["retry-after"]
        assert retry.isdigit() and 1 <= int(retry) <= 120
        assert audit_rows(ia.platform, "auth.login")[-1].outcome == "denied"


def test_failures_across_accounts_lock_the_address(identity_app):
    with identity_app(login_max_failures=3, login_lockout=60) as ia:
        ia.identity.user("untouched@example.com")
        for name in ("a", "b", "c"):
            assert login(ia.client, f"{name}@example.com", "spray spray").status_code == 401
        # Never tried before, right password, still refused: the address is locked.
        response = login(ia.client, "untouched@example.com")
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) >= 1


def test_successful_login_clears_the_account_failures(identity_app):
    with identity_app(login_max_failures=5) as ia:
        ia.identity.user("ok@example.com")
        assert login(ia.client, "ok@example.com", "typo typo").status_code == 401
        with ia.platform.db.transaction() as session:
            keys = set(session.scalars(select(LoginThrottle.key)))
        assert "email:ok@example.com" in keys
        assert login(ia.client, "ok@example.com").status_code == 200
        with ia.platform.db.transaction() as session:
            keys = set(session.scalars(select(LoginThrottle.key)))
        assert "email:ok@example.com" not in keys


# ---------------------------------------------------------------------------
# Refresh and logout
# ---------------------------------------------------------------------------


def test_refresh_rotates_and_reuse_revokes_the_family(zt_client, zt_identity, zt_platform):
    zt_identity.user("r@example.com")
    first = login(zt_client, "r@example.com").json()
    rotated = zt_client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["token_type"] == "bearer"
    assert (
        zt_client.get("/api/v1/auth/me", headers=bearer(second["access_token"])).status_code == 200
    )

    # The old token again: a thief or a replay. 401, and the newer token dies too.
    reused = zt_client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reused.status_code == 401
    after = zt_client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert after.status_code == 401
    with zt_platform.db.transaction() as session:
        live = session.scalar(
            select(func.count()).select_from(RefreshToken).where(RefreshToken.revoked_at.is_(None))
        )
    assert live == 0


def test_refresh_refuses_garbage_and_access_tokens(zt_client, zt_identity):
    user = zt_identity.user()
    for token in ("nonsense", zt_identity.token(user), "x" * 600):
        response = zt_client.post("/api/v1/auth/refresh", json={"refresh_token": token})
        assert response.status_code in (400, 401)


def test_logout_revokes_one_session_and_only_the_callers(zt_client, zt_identity):
    zt_identity.user("me@example.com")
    zt_identity.user("other@example.com")
    mine = login(zt_client, "me@example.com").json()
    mine2 = login(zt_client, "me@example.com").json()
    theirs = login(zt_client, "other@example.com").json()

    # Someone else's refresh token is ignored.
    response = zt_client.post(
        "/api/v1/auth/logout",
        json={"refresh_token": theirs["refresh_token"]},
        headers=bearer(mine["access_token"]),
    )
    assert response.status_code == 204
    assert (
        zt_client.post(
            "/api/v1/auth/refresh", json={"refresh_token": theirs["refresh_token"]}
        ).status_code
        == 200
    )

    response = zt_client.post(
        "/api/v1/auth/logout",
        json={"refresh_token": mine["refresh_token"]},
        headers=bearer(mine["access_token"]),
    )
    assert response.status_code == 204
    assert (
        zt_client.post(
            "/api/v1/auth/refresh", json={"refresh_token": mine["refresh_token"]}
        ).status_code
        == 401
    )
    # The other login of the same user is untouched.
    assert (
        zt_client.post(
            "/api/v1/auth/refresh", json={"refresh_token": mine2["refresh_token"]}
        ).status_code
        == 200
    )


def test_logout_all_ends_every_session(zt_client, zt_identity):
    zt_identity.user("many@example.com")
    sessions = [login(zt_client, "many@example.com").json() for _ in range(3)]
    response = zt_client.post(
        "/api/v1/auth/logout", json={"all": True}, headers=bearer(sessions[0]["access_token"])
    )
    assert response.status_code == 204
    for s in sessions:
        refreshed = zt_client.post(
            "/api/v1/auth/refresh", json={"refresh_token": s["refresh_token"]}
        )
        assert refreshed.status_code == 401


def test_logout_needs_a_signed_in_user(zt_client, zt_identity):
    assert zt_client.post("/api/v1/auth/logout", json={"all": True}).status_code == 401
    user = zt_identity.user("keyed@example.com")
    tokens = login(zt_client, "keyed@example.com").json()
    key = zt_identity.api_key(user)
    keyed = zt_client.post(
        "/api/v1/auth/logout", json={"all": True}, headers=zt_identity.headers(key)
    )
    assert keyed.status_code == 403
    # An empty logout is fine and ends nothing.
    empty = zt_client.post("/api/v1/auth/logout", headers=bearer(tokens["access_token"]))
    assert empty.status_code == 204
    refreshed = zt_client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.status_code == 200


# ---------------------------------------------------------------------------
# Forged credentials and identity headers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "forge",
    ["alg_none", "wrong_key", "expired", "wrong_aud", "wrong_iss", "tampered"],
)
def test_forged_jwts_are_refused(zt_client, zt_identity, zt_platform, forge):
    victim = zt_identity.user(superuser=True)
    attacker = zt_identity.user()
    key = zt_platform.secret_key.encode()
    hs256 = {"alg": "HS256", "typ": "JWT"}
    if forge == "alg_none":
        token = craft({"alg": "none", "typ": "JWT"}, claims(victim.id), None)
    elif forge == "wrong_key":
        token = craft(hs256, claims(victim.id), b"not-the-server-key")
    elif forge == "expired":
        past = int(datetime.now(UTC).timestamp()) - 3600
        token = craft(hs256, claims(victim.id, iat=past - 600, nbf=past - 600, exp=past), key)
    elif forge == "wrong_aud":
        token = craft(hs256, claims(victim.id, aud="another-service"), key)
    elif forge == "wrong_iss":
        token = craft(hs256, claims(victim.id, iss="evil"), key)
    else:
        # A genuine token of the attacker with the subject swapped for the victim's.
        header, _payload, signature = zt_identity.token(attacker).split(".")
        forged = claims(victim.id)
        token = f"{header}.{b64(json.dumps(forged).encode())}.{signature}"
    # Sanity: the same construction with the right key and claims is accepted.
    assert (
        zt_client.get("/api/v1/auth/me", headers=bearer(craft(hs256, claims(victim.id), key)))
    ).status_code == 200
    response = zt_client.get("/api/v1/auth/me", headers=bearer(token))
    assert response.status_code == 401
    assert victim.id not in response.text


@pytest.mark.parametrize(
    "header", ["X-Forwarded-User", "X-User-Id", "X-Remote-User", "Remote-User", "X-Auth-User"]
)
def test_identity_headers_grant_nothing(zt_client, zt_identity, header):
    admin = zt_identity.user("root@example.com", superuser=True)
    for value in (admin.id, admin.email):
        response = zt_client.get("/api/v1/auth/me", headers={header: value})
        assert response.status_code == 401
        assert zt_client.get("/api/v1/users", headers={header: value}).status_code == 401


def test_deactivated_users_token_stops_working_at_once(zt_client, zt_identity, zt_admin_headers):
    user = zt_identity.user("leaver@example.com")
    tokens = login(zt_client, "leaver@example.com").json()
    assert (
        zt_client.get("/api/v1/auth/me", headers=bearer(tokens["access_token"])).status_code == 200
    )
    response = zt_client.patch(
        f"/api/v1/users/{user.id}", json={"is_active": False}, headers=zt_admin_headers
    )
    assert response.status_code == 200, response.text
    assert (
        zt_client.get("/api/v1/auth/me", headers=bearer(tokens["access_token"])).status_code == 401
    )
    refreshed = zt_client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.status_code == 401


# ---------------------------------------------------------------------------
# The caller's own account
# ---------------------------------------------------------------------------


def test_me_lists_memberships_and_key_scope(zt_client, zt_identity):
    user = zt_identity.user("member@example.com")
    org = zt_identity.org("acme")
    zt_identity.member(user, org, "admin")
    project = zt_identity.project(org, "vision")
    zt_identity.member(user, project, "viewer")
    body = zt_client.get("/api/v1/auth/me", headers=zt_identity.headers(user)).json()
    assert body["orgs"] == [{"id": org.id, "slug": "acme", "name": "acme", "role": "admin"}]
    assert [(p["id"], p["slug"], p["org_slug"], p["role"]) for p in body["projects"]] == [
        (project.id, "vision", "acme", "viewer")
    ]
    assert body["is_superuser"] is False
    assert body["created_at"]

    key = zt_identity.api_key(user, project=project, permissions=["core.project.read"])
    keyed = zt_client.get("/api/v1/auth/me", headers=zt_identity.headers(key)).json()
    assert keyed["id"] == user.id
    assert keyed["api_key"]["project_id"] == project.id
    assert keyed["api_key"]["permissions"] == ["core.project.read"]
    assert keyed["api_key"]["id"]


def test_update_own_profile(zt_client, zt_identity):
    user = zt_identity.user()
    headers = zt_identity.headers(user)
    response = zt_client.patch(
        "/api/v1/auth/me", json={"display_name": " Lin ", "language": "zh-CN"}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["display_name"] == "Lin"
    assert response.json()["language"] == "zh-CN"
    assert zt_client.get("/api/v1/auth/me", headers=headers).json()["language"] == "zh-CN"

    bad = zt_client.patch("/api/v1/auth/me", json={"language": "fr"}, headers=headers)
    assert bad.status_code == 400 and "language" in bad.text
    sneaky = zt_client.patch("/api/v1/auth/me", json={"is_superuser": True}, headers=headers)
    assert sneaky.status_code == 400 and "is_superuser" in sneaky.text
    assert zt_client.get("/api/v1/auth/me", headers=headers).json()["is_superuser"] is False


def test_change_password(zt_client, zt_identity):
    zt_identity.user("pw@example.com")
    tokens = login(zt_client, "pw@example.com").json()
    headers = bearer(tokens["access_token"])

    wrong = zt_client.post(
        "/api/v1/auth/password",
        json={"current_password": "not it at all", "new_password": NEW_PASSWORD},
        headers=headers,
    )
    assert wrong.status_code == 400
    assert wrong.json()["errors"][0]["field"] == "current_password"

    weak = zt_client.post(
        "/api/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": "short"},
        headers=headers,
    )
    assert weak.status_code == 422
    assert "password" in weak.json()["detail"] and "at least 10 characters" in weak.text

    ok = zt_client.post(
        "/api/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=headers,
    )
    assert ok.status_code == 204, ok.text
    assert login(zt_client, "pw@example.com").status_code == 401
    assert login(zt_client, "pw@example.com", NEW_PASSWORD).status_code == 200
    # Every session made with the old password is over.
    refreshed = zt_client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.status_code == 401


def test_wrong_current_password_counts_as_a_failed_login(identity_app):
    with identity_app(login_max_failures=2) as ia:
        user = ia.identity.user("guessed@example.com")
        headers = ia.identity.headers(user)
        body = {"current_password": "guess one two", "new_password": NEW_PASSWORD}
        for _ in range(2):
            assert (
                ia.client.post("/api/v1/auth/password", json=body, headers=headers).status_code
                == 400
            )
        body["current_password"] = PASSWORD
        locked = ia.client.post("/api/v1/auth/password", json=body, headers=headers)
        assert locked.status_code == 429
        assert "retry-after" in locked.headers
        assert login(ia.client, "guessed@example.com").status_code == 429


def test_api_keys_cannot_change_passwords(zt_client, zt_identity):
    user = zt_identity.user()
    key = zt_identity.api_key(user)
    response = zt_client.post(
        "/api/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=zt_identity.headers(key),
    )
    assert response.status_code == 403
    assert login(zt_client, user.email).status_code == 200


# ---------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------


def test_registration_is_off_by_default(zt_client, zt_platform):
    assert zt_platform.settings.identity.registration == "off"
    response = zt_client.post(
        "/api/v1/auth/register", json={"email": "new@example.com", "password": NEW_PASSWORD}
    )
    assert response.status_code == 403
    assert count_users(zt_platform) == 0


def test_open_registration_creates_a_plain_user(identity_app):
    with identity_app(registration="open") as ia:
        response = ia.client.post(
            "/api/v1/auth/register",
            json={"email": "New@Example.com", "password": NEW_PASSWORD, "display_name": "New"},
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["email"] == "new@example.com"
        assert body["is_superuser"] is False
        assert "password" not in response.text and "argon2" not in response.text
        assert login(ia.client, "new@example.com", NEW_PASSWORD).status_code == 200
        assert audit_rows(ia.platform, "auth.register")[-1].outcome == "success"


@pytest.mark.parametrize(
    "extra",
    [
        {"is_superuser": True},
        {"role": "owner"},
        {"org": "someone-elses-org"},
        {"is_superuser": True, "role": "owner", "org": "x"},
    ],
)
def test_registration_refuses_privilege_fields(identity_app, extra):
    with identity_app(registration="open") as ia:
        body = {"email": "climber@example.com", "password": NEW_PASSWORD, **extra}
        response = ia.client.post("/api/v1/auth/register", json=body)
        assert response.status_code == 400
        assert {e["field"] for e in response.json()["errors"]} == set(extra)
        assert count_users(ia.platform) == 0


def test_registration_refuses_a_weak_password_naming_the_rule(identity_app):
    with identity_app(registration="open", password_min_length=12) as ia:
        response = ia.client.post(
            "/api/v1/auth/register", json={"email": "weak@example.com", "password": "abcabc"}
        )
        assert response.status_code == 422
        body = response.json()
        assert body["errors"][0]["field"] == "password"
        assert "at least 12 characters" in body["detail"]
        same = ia.client.post(
            "/api/v1/auth/register",
            json={"email": "same@example.com", "password": "same@example.com"},
        )
        assert same.status_code == 422 and "email address" in same.json()["detail"]
        assert count_users(ia.platform) == 0


def test_registration_refuses_a_duplicate_email_any_case(identity_app):
    with identity_app(registration="open") as ia:
        ia.identity.user("taken@example.com")
        response = ia.client.post(
            "/api/v1/auth/register", json={"email": "TAKEN@example.com", "password": NEW_PASSWORD}
        )
        assert response.status_code == 409
        assert response.json()["errors"][0]["field"] == "email"
        assert count_users(ia.platform) == 1


def test_registration_refuses_a_malformed_email(identity_app):
    with identity_app(registration="open") as ia:
        for email in ("no-at-sign", "two@@example.com", "space in@example.com", "a@b"):
            response = ia.client.post(
                "/api/v1/auth/register", json={"email": email, "password": NEW_PASSWORD}
            )
            assert response.status_code == 400, email
            assert "email" in response.json()["detail"]
        assert count_users(ia.platform) == 0


def test_invite_only_registration(identity_app):
    with identity_app(registration="invite") as ia:
        org = ia.identity.org("team")
        # No invitation: refused.
        response = ia.client.post(
            "/api/v1/auth/register", json={"email": "inv@example.com", "password": NEW_PASSWORD}
        )
        assert response.status_code == 403
        assert response.json()["errors"][0]["field"] == "invitation"

        token = invite(ia.platform, org, "Inv@Example.com", Role.maintainer)
        response = ia.client.post(
            "/api/v1/auth/register",
            json={"email": "inv@example.com", "password": NEW_PASSWORD, "invitation": token},
        )
        assert response.status_code == 201, response.text
        user_id = response.json()["id"]
        assert response.json()["is_superuser"] is False
        assert org_role_of(ia.platform, org, user_id) == Role.maintainer
        with ia.platform.db.transaction() as session:
            assert session.scalar(select(Invitation.accepted_at)) is not None

        # The same invitation a second time: used.
        again = ia.client.post(
            "/api/v1/auth/register",
            json={"email": "inv2@example.com", "password": NEW_PASSWORD, "invitation": token},
        )
        assert again.status_code == 400
        assert again.json()["errors"][0]["field"] == "invitation"
        assert count_users(ia.platform) == 1


@pytest.mark.parametrize("problem", ["expired", "used", "wrong_email", "unknown"])
def test_registration_with_a_bad_invitation_creates_nothing(identity_app, problem):
    with identity_app(registration="invite") as ia:
        org = ia.identity.org("team")
        if problem == "expired":
            token = invite(ia.platform, org, "x@example.com", expires_in=timedelta(seconds=-1))
        elif problem == "used":
            token = invite(ia.platform, org, "x@example.com", accepted=True)
        elif problem == "wrong_email":
            token = invite(ia.platform, org, "someone-else@example.com")
        else:
            token = secrets.token_urlsafe(32)
        response = ia.client.post(
            "/api/v1/auth/register",
            json={"email": "x@example.com", "password": NEW_PASSWORD, "invitation": token},
        )
        assert response.status_code in (400, 403)
        assert response.json()["errors"][0]["field"] == "invitation"
        assert count_users(ia.platform) == 0
        with ia.platform.db.transaction() as session:
            assert session.scalar(select(func.count()).select_from(OrgMember)) == 0


def test_open_registration_with_an_invitation_grants_its_role(identity_app):
    with identity_app(registration="open") as ia:
        org = ia.identity.org("open-team")
        token = invite(ia.platform, org, "joiner@example.com", Role.admin)
        response = ia.client.post(
            "/api/v1/auth/register",
            json={"email": "joiner@example.com", "password": NEW_PASSWORD, "invitation": token},
        )
        assert response.status_code == 201, response.text
        assert org_role_of(ia.platform, org, response.json()["id"]) == Role.admin


# ---------------------------------------------------------------------------
# Accepting invitations as a signed-in user
# ---------------------------------------------------------------------------


def test_accept_invitation(zt_client, zt_identity, zt_platform):
    user = zt_identity.user("Joiner@example.com")
    org = zt_identity.org("accept-org")
    token = invite(zt_platform, org, "joiner@EXAMPLE.com", Role.developer)
    headers = zt_identity.headers(user)
    response = zt_client.post(
        "/api/v1/auth/invitations/accept", json={"token": token}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["org"]["slug"] == "accept-org"
    assert response.json()["role"] == "developer"
    assert org_role_of(zt_platform, org, user.id) == Role.developer
    me = zt_client.get("/api/v1/auth/me", headers=headers).json()
    assert [o["slug"] for o in me["orgs"]] == ["accept-org"]

    again = zt_client.post(
        "/api/v1/auth/invitations/accept", json={"token": token}, headers=headers
    )
    assert again.status_code == 400
    assert again.json()["errors"][0]["field"] == "token"
    assert audit_rows(zt_platform, "invitation.accept")[0].org_id == org.id


@pytest.mark.parametrize("problem", ["expired", "wrong_email", "unknown"])
def test_accept_refuses_bad_invitations(zt_client, zt_identity, zt_platform, problem):
    user = zt_identity.user("me@example.com")
    org = zt_identity.org()
    if problem == "expired":
        token = invite(zt_platform, org, "me@example.com", expires_in=timedelta(seconds=-5))
    elif problem == "wrong_email":
        token = invite(zt_platform, org, "you@example.com")
    else:
        token = "made-up-token"
    response = zt_client.post(
        "/api/v1/auth/invitations/accept", json={"token": token}, headers=zt_identity.headers(user)
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "token"
    assert org_role_of(zt_platform, org, user.id) is None


def test_accept_never_lowers_an_existing_role(zt_client, zt_identity, zt_platform):
    user = zt_identity.user("boss@example.com")
    org = zt_identity.org(owner=user)
    token = invite(zt_platform, org, "boss@example.com", Role.viewer)
    response = zt_client.post(
        "/api/v1/auth/invitations/accept", json={"token": token}, headers=zt_identity.headers(user)
    )
    assert response.status_code == 200
    assert org_role_of(zt_platform, org, user.id) == Role.owner


def test_accept_needs_a_signed_in_user(zt_client, zt_identity, zt_platform):
    user = zt_identity.user("k@example.com")
    org = zt_identity.org()
    token = invite(zt_platform, org, "k@example.com")
    assert (
        zt_client.post("/api/v1/auth/invitations/accept", json={"token": token}).status_code == 401
    )
    key = zt_identity.api_key(user)
    keyed = zt_client.post(
        "/api/v1/auth/invitations/accept", json={"token": token}, headers=zt_identity.headers(key)
    )
    assert keyed.status_code == 403
    assert org_role_of(zt_platform, org, user.id) is None


# ---------------------------------------------------------------------------
# First-run setup
# ---------------------------------------------------------------------------


def setup_body(platform: Any, **overrides: Any) -> dict[str, Any]:
    body = {
        "token": setup_token(platform.secret_key),
        "email": "Admin@Example.com",
        "password": NEW_PASSWORD,
        "display_name": "Admin",
    }
    body.update(overrides)
    return body


def test_setup_creates_the_first_superuser_once(zt_client, zt_platform):
    response = zt_client.post("/api/v1/auth/setup", json=setup_body(zt_platform))
    assert response.status_code == 201, response.text
    assert response.json()["is_superuser"] is True
    assert response.json()["email"] == "admin@example.com"
    assert "argon2" not in response.text
    tokens = login(zt_client, "admin@example.com", NEW_PASSWORD).json()
    assert zt_client.get("/api/v1/users", headers=bearer(tokens["access_token"])).status_code == 200

    second = zt_client.post(
        "/api/v1/auth/setup", json=setup_body(zt_platform, email="second@example.com")
    )
    assert second.status_code == 409
    assert count_users(zt_platform) == 1
    assert [r.outcome for r in audit_rows(zt_platform, "auth.setup")] == ["success", "failure"]


def test_setup_refuses_a_missing_or_wrong_token(zt_client, zt_platform):
    body = setup_body(zt_platform)
    del body["token"]
    missing = zt_client.post("/api/v1/auth/setup", json=body)
    assert missing.status_code == 400
    assert "token" in missing.json()["detail"]
    for token in ("", "0" * 64, setup_token("some-other-secret")):
        wrong = zt_client.post("/api/v1/auth/setup", json=setup_body(zt_platform, token=token))
        assert wrong.status_code == 403, token
        assert wrong.json()["errors"][0]["field"] == "token"
    assert count_users(zt_platform) == 0


def test_setup_refuses_a_weak_password_and_extra_fields(zt_client, zt_platform):
    weak = zt_client.post("/api/v1/auth/setup", json=setup_body(zt_platform, password="aaaa"))
    assert weak.status_code == 422
    assert weak.json()["errors"][0]["field"] == "password"
    extra = zt_client.post("/api/v1/auth/setup", json=setup_body(zt_platform, role="owner"))
    assert extra.status_code == 400
    assert count_users(zt_platform) == 0


def test_setup_after_a_user_exists_is_refused_even_with_the_token(
    zt_client, zt_identity, zt_platform
):
    zt_identity.user("first@example.com")
    response = zt_client.post("/api/v1/auth/setup", json=setup_body(zt_platform))
    assert response.status_code == 409
    page = zt_client.get(f"/setup?token={setup_token(zt_platform.secret_key)}")
    assert page.status_code == 409
    assert "already has users" in page.text
    assert "<form" not in page.text


CSP = "default-src 'self'; script-src 'self'; style-src 'self'"  # the web UI's


def test_setup_page_end_to_end(zt_client, zt_platform):
    token = setup_token(zt_platform.secret_key)
    page = zt_client.get(f"/setup?token={token}")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"].startswith(CSP)
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "<script" not in page.text
    assert f'name="token" value="{token}"' in page.text
    assert 'method="post"' in page.text

    form = {
        "token": token,
        "email": "web-admin@example.com",
        "display_name": "Web Admin",
        "password": NEW_PASSWORD,
        "password_confirm": NEW_PASSWORD,
    }
    done = zt_client.post("/setup", data=form)
    assert done.status_code == 201, done.text
    assert "web-admin@example.com" in done.text
    assert done.headers["content-security-policy"].startswith(CSP)
    assert login(zt_client, "web-admin@example.com", NEW_PASSWORD).status_code == 200
    with zt_platform.db.transaction() as session:
        assert session.scalar(select(User.is_superuser)) is True

    # The link is spent.
    assert zt_client.get(f"/setup?token={token}").status_code == 409
    assert zt_client.post("/setup", data={**form, "email": "late@example.com"}).status_code == 409
    assert count_users(zt_platform) == 1


def test_setup_page_refuses_bad_links_and_shows_problems_escaped(zt_client, zt_platform):
    assert zt_client.get("/setup").status_code == 403
    bad = zt_client.get("/setup?token=nope")
    assert bad.status_code == 403 and "<form" not in bad.text
    token = setup_token(zt_platform.secret_key)
    form = {
        "token": token,
        "email": "x@example.com",
        "display_name": '"><script>alert(1)</script>',
        "password": NEW_PASSWORD,
        "password_confirm": NEW_PASSWORD + "!",
    }
    differ = zt_client.post("/setup", data=form)
    assert differ.status_code == 400
    assert "differ" in differ.text
    assert "<script>alert(1)" not in differ.text
    assert "&lt;script&gt;" in differ.text

    weak = zt_client.post("/setup", data={**form, "password": "abc", "password_confirm": "abc"})
    assert weak.status_code == 422 and "at least" in weak.text
    bad_email = zt_client.post(
        "/setup", data={**form, "email": "<b>", "password_confirm": NEW_PASSWORD}
    )
    assert bad_email.status_code == 400 and "<b>" not in bad_email.text
    wrong = zt_client.post("/setup", data={**form, "token": "x", "password_confirm": NEW_PASSWORD})
    assert wrong.status_code == 403 and "<form" not in wrong.text
    assert count_users(zt_platform) == 0


def test_startup_prints_the_setup_link_only_without_users(zt_app_factory, capsys):
    from litestar.testing import TestClient

    app = zt_app_factory()
    platform = app.state["platform"]
    with TestClient(app, raise_server_exceptions=False) as client:
        printed = capsys.readouterr().err
        match = re.search(
            r"open (\S+/setup\?token=(\w+)) to create the first administrator", printed
        )
        assert match, printed
        assert match.group(1).startswith(platform.settings.base_url)
        assert "zhongtai users create --superuser" in printed
        # The printed link is the one the page accepts.
        assert client.get(f"/setup?token={match.group(2)}").status_code == 200

    from zhongtai.testing import ZtIdentity

    ZtIdentity(platform).user()
    assert announce_setup(platform) is False
    assert "setup?token" not in capsys.readouterr().err


def test_concurrent_setups_create_one_superuser(zt_platform):
    import threading

    from zhongtai.identity.api.auth import run_setup
    from zhongtai.identity.api.users import AccountError

    token = setup_token(zt_platform.secret_key)
    start = threading.Barrier(3)
    outcomes: list[str] = []

    def attempt(n: int) -> None:
        start.wait()
        try:
            run_setup(
                zt_platform,
                token=token,
                email=f"racer{n}@example.com",
                password=NEW_PASSWORD,
                display_name="",
            )
            outcomes.append("created")
        except AccountError as exc:
            outcomes.append(str(exc.status))

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["409", "409", "created"]
    assert count_users(zt_platform) == 1
