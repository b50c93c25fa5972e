"""The superusers' account API: ``/api/v1/users``."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from zhongtai.identity.models import AuditEvent, RefreshToken, User

PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "a different passphrase 42"


def login(client: Any, email: str, password: str = PASSWORD) -> Any:
    return client.post("/api/v1/auth/login", json={"email": email, "password": password})


def count_users(platform: Any) -> int:
    with platform.db.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(User)) or 0)


ROUTES = [
    ("GET", "/api/v1/users", None),
    ("GET", "/api/v1/users/{id}", None),
    ("POST", "/api/v1/users", {"email": "x@example.com", "password": NEW_PASSWORD}),
    ("PATCH", "/api/v1/users/{id}", {"is_superuser": True}),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_non_superusers_are_refused(zt_client, zt_identity, zt_platform, method, path, body):
    user = zt_identity.user()
    org = zt_identity.org(owner=user)  # even an organization owner
    zt_identity.project(org)
    url = path.format(id=user.id)
    assert zt_client.request(method, url, json=body).status_code == 401
    response = zt_client.request(method, url, json=body, headers=zt_identity.headers(user))
    assert response.status_code == 403
    assert user.email not in response.text
    with zt_platform.db.transaction() as session:
        assert session.get(User, user.id).is_superuser is False
    assert count_users(zt_platform) == 1


def test_project_scoped_key_of_a_superuser_cannot_manage_users(zt_client, zt_identity):
    admin = zt_identity.user(superuser=True)
    project = zt_identity.project()
    key = zt_identity.api_key(admin, project=project)
    assert zt_client.get("/api/v1/users", headers=zt_identity.headers(key)).status_code == 403
    unscoped = zt_identity.api_key(admin)
    assert zt_client.get("/api/v1/users", headers=zt_identity.headers(unscoped)).status_code == 200


def test_superuser_creates_and_reads_users(zt_client, zt_identity, zt_admin_headers, zt_platform):
    response = zt_client.post(
        "/api/v1/users",
        json={"email": "Made@Example.com", "password": NEW_PASSWORD, "display_name": "Made"},
        headers=zt_admin_headers,
    )
    assert response.status_code == 201, response.text
    made = response.json()
    assert made["email"] == "made@example.com"
    assert made["is_superuser"] is False and made["is_active"] is True
    assert "password" not in response.text and "argon2" not in response.text
    assert login(zt_client, "made@example.com", NEW_PASSWORD).status_code == 200

    fetched = zt_client.get(f"/api/v1/users/{made['id']}", headers=zt_admin_headers)
    assert fetched.status_code == 200
    assert fetched.json() == made | {"updated_at": fetched.json()["updated_at"]}
    assert "argon2" not in fetched.text

    admin2 = zt_client.post(
        "/api/v1/users",
        json={"email": "ops@example.com", "password": NEW_PASSWORD, "is_superuser": True},
        headers=zt_admin_headers,
    )
    assert admin2.status_code == 201 and admin2.json()["is_superuser"] is True

    with zt_platform.db.transaction() as session:
        row = session.scalars(select(AuditEvent).where(AuditEvent.action == "user.create")).first()
        assert row is not None and row.target_id == made["id"] and row.outcome == "success"


def test_create_refuses_duplicates_weak_passwords_and_unknown_fields(
    zt_client, zt_identity, zt_admin_headers, zt_platform
):
    zt_identity.user("dup@example.com")
    before = count_users(zt_platform)
    dup = zt_client.post(
        "/api/v1/users",
        json={"email": "DUP@example.com", "password": NEW_PASSWORD},
        headers=zt_admin_headers,
    )
    assert dup.status_code == 409 and dup.json()["errors"][0]["field"] == "email"
    weak = zt_client.post(
        "/api/v1/users",
        json={"email": "weak@example.com", "password": "aaaaaaaaaaaaaa"},
        headers=zt_admin_headers,
    )
    assert weak.status_code == 422
    assert "4 different characters" in weak.json()["detail"]
    extra = zt_client.post(
        "/api/v1/users",
        json={"email": "x@example.com", "password": NEW_PASSWORD, "password_hash": "$argon2id$"},
        headers=zt_admin_headers,
    )
    assert extra.status_code == 400 and "password_hash" in extra.text
    assert count_users(zt_platform) == before


def test_list_filters_and_paginates(zt_client, zt_identity, zt_admin_headers):
    zt_identity.user("alice@example.com", display_name="Alice Liddell")
    zt_identity.user("bob@example.com", display_name="Bob", active=False)
    zt_identity.user("carol@example.org", display_name="Carol 100%")
    zt_identity.user("dave@example.org", display_name="Dave")

    def emails(**params: Any) -> list[str]:
        response = zt_client.get("/api/v1/users", params=params, headers=zt_admin_headers)
        assert response.status_code == 200, response.text
        return [u["email"] for u in response.json()["items"]]

    assert set(emails(q="example.org")) == {"carol@example.org", "dave@example.org"}
    assert emails(q="LIDDELL") == ["alice@example.com"]
    assert emails(q="100%") == ["carol@example.org"]  # % matched literally
    assert emails(q="_") == []
    assert emails(active="false") == ["bob@example.com"]
    assert "bob@example.com" not in emails(active="true")

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = zt_client.get("/api/v1/users", params=params, headers=zt_admin_headers).json()
        assert len(page["items"]) <= 2
        seen += [u["email"] for u in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 5  # four users and the admin
    assert (
        zt_client.get("/api/v1/users", params={"limit": 0}, headers=zt_admin_headers).status_code
        == 400
    )


def test_unknown_user_is_404(zt_client, zt_admin_headers):
    assert zt_client.get("/api/v1/users/nope", headers=zt_admin_headers).status_code == 404
    assert (
        zt_client.patch(
            "/api/v1/users/nope", json={"display_name": "x"}, headers=zt_admin_headers
        ).status_code
        == 404
    )


def test_superuser_updates_a_user(zt_client, zt_identity, zt_admin_headers):
    user = zt_identity.user("edit@example.com")
    response = zt_client.patch(
        f"/api/v1/users/{user.id}",
        json={"display_name": "Edited", "language": "zh-CN", "is_superuser": True},
        headers=zt_admin_headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["display_name"], body["language"], body["is_superuser"]) == (
        "Edited",
        "zh-CN",
        True,
    )
    # The new superuser can now manage users.
    assert zt_client.get("/api/v1/users", headers=zt_identity.headers(user)).status_code == 200
    bad = zt_client.patch(
        f"/api/v1/users/{user.id}", json={"email": "other@example.com"}, headers=zt_admin_headers
    )
    assert bad.status_code == 400 and "email" in bad.text


def test_deactivation_revokes_sessions_and_reactivation_allows_login(
    zt_client, zt_identity, zt_admin_headers, zt_platform
):
    user = zt_identity.user("off@example.com")
    tokens = login(zt_client, "off@example.com").json()
    key = zt_identity.api_key(user)
    response = zt_client.patch(
        f"/api/v1/users/{user.id}", json={"is_active": False}, headers=zt_admin_headers
    )
    assert response.status_code == 200 and response.json()["is_active"] is False
    with zt_platform.db.transaction() as session:
        live = session.scalar(
            select(func.count())
            .select_from(RefreshToken)
            .where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))
        )
    assert live == 0
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert zt_client.get("/api/v1/auth/me", headers=headers).status_code == 401
    assert zt_client.get("/api/v1/auth/me", headers=zt_identity.headers(key)).status_code == 401
    assert login(zt_client, "off@example.com").status_code == 401

    zt_client.patch(f"/api/v1/users/{user.id}", json={"is_active": True}, headers=zt_admin_headers)
    assert login(zt_client, "off@example.com").status_code == 200


@pytest.mark.parametrize("change", [{"is_active": False}, {"is_superuser": False}])
def test_superuser_cannot_demote_or_deactivate_themselves(zt_client, zt_identity, change):
    admin = zt_identity.user(superuser=True)
    response = zt_client.patch(
        f"/api/v1/users/{admin.id}", json=change, headers=zt_identity.headers(admin)
    )
    assert response.status_code == 409
    assert response.json()["errors"][0]["field"] == next(iter(change))
    me = zt_client.get("/api/v1/auth/me", headers=zt_identity.headers(admin))
    assert me.status_code == 200 and me.json()["is_superuser"] is True


def test_superuser_may_demote_another_superuser(zt_client, zt_identity):
    admin = zt_identity.user(superuser=True)
    other = zt_identity.user(superuser=True)
    response = zt_client.patch(
        f"/api/v1/users/{other.id}",
        json={"is_superuser": False},
        headers=zt_identity.headers(admin),
    )
    assert response.status_code == 200 and response.json()["is_superuser"] is False
    assert zt_client.get("/api/v1/users", headers=zt_identity.headers(other)).status_code == 403
