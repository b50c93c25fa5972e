"""API keys over HTTP: create (never more than the creator holds), list, revoke, rotate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from zhongtai.identity.models import ApiKey, AuditEvent

KEYS = "/api/v1/api-keys"
LISTED_FIELDS = {
    "id",
    "name",
    "prefix",
    "user",
    "project",
    "permissions",
    "expires_at",
    "last_used_at",
    "revoked_at",
    "created_at",
}


def future(days: int = 30) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


def create(client: Any, headers: dict[str, str], **body: Any) -> Any:
    body.setdefault("name", "ci")
    return client.post(KEYS, json=body, headers=headers)


def field_of(response: Any) -> set[str]:
    """The fields a problem response names."""
    return {e["field"] for e in response.json().get("errors", [])}


def audit_rows(platform: Any, action: str) -> list[AuditEvent]:
    with platform.db.transaction() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.action == action)).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


# --------------------------------------------------------------------------- create


def test_create_returns_the_key_once_and_it_works(zt_client, zt_identity, zt_platform):
    user, project = zt_identity.project_with("developer")
    expires = future()
    response = create(
        zt_client,
        zt_identity.headers(user),
        name="ci deploy",
        project=project.id,
        permissions=["core.project.read"],
        expires_at=expires,
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == LISTED_FIELDS | {"key"}
    assert body["key"].startswith(f"zt_{body['prefix']}_")
    assert body["name"] == "ci deploy"
    assert body["project"] == project.id
    assert body["permissions"] == ["core.project.read"]
    assert datetime.fromisoformat(body["expires_at"]) == datetime.fromisoformat(expires)
    assert body["revoked_at"] is None and body["user"] == user.id
    # The key authenticates at once, and only its keyed hash is stored.
    listed = zt_client.get(KEYS, headers=zt_identity.headers(body["key"]))
    assert listed.status_code == 200
    assert "key" not in listed.json()["items"][0]
    with zt_platform.db.transaction() as session:
        stored = session.scalars(select(ApiKey)).one()
        assert body["key"] not in (stored.key_hash, stored.prefix)


def test_create_without_project_for_a_developer_somewhere(zt_client, zt_identity):
    user, _ = zt_identity.project_with("developer")
    response = create(zt_client, zt_identity.headers(user))
    assert response.status_code == 201
    assert response.json()["project"] is None and response.json()["permissions"] is None


def test_superuser_may_create_without_any_membership(zt_client, zt_identity):
    admin = zt_identity.user(superuser=True)
    assert create(zt_client, zt_identity.headers(admin)).status_code == 201


@pytest.mark.parametrize("role", ["viewer", None])
def test_viewer_or_non_member_cannot_create_a_key_without_project(zt_client, zt_identity, role):
    user = zt_identity.user()
    if role:
        zt_identity.project_with(role, user=user)
    response = create(zt_client, zt_identity.headers(user))
    assert response.status_code == 403
    assert "key" not in response.json()


def test_viewer_cannot_create_a_key_for_their_project(zt_client, zt_identity, zt_platform):
    user, project = zt_identity.project_with("viewer")
    response = create(zt_client, zt_identity.headers(user), project=project.id)
    assert response.status_code == 403
    with zt_platform.db.transaction() as session:
        assert session.scalar(select(ApiKey.id)) is None


def test_key_for_another_project_is_not_found(zt_client, zt_identity, zt_platform):
    user, _mine = zt_identity.project_with("owner")
    _other_user, theirs = zt_identity.project_with("owner")
    headers = zt_identity.headers(user)
    for project_id in (theirs.id, "no-such-project"):
        response = create(zt_client, headers, project=project_id)
        assert response.status_code == 404
        assert theirs.slug not in response.text
    with zt_platform.db.transaction() as session:
        assert session.scalar(select(ApiKey.id)) is None


def test_unknown_permission_is_400_naming_permissions(zt_client, zt_identity):
    user, project = zt_identity.project_with("owner")
    response = create(
        zt_client, zt_identity.headers(user), project=project.id, permissions=["core.nope"]
    )
    assert response.status_code == 400
    assert field_of(response) == {"permissions"}


def test_permission_the_creator_lacks_is_refused(zt_client, zt_identity, zt_platform):
    user, project = zt_identity.project_with("developer")
    headers = zt_identity.headers(user)
    # A developer does not hold project deletion (owner) on the project...
    response = create(zt_client, headers, project=project.id, permissions=["core.project.delete"])
    assert response.status_code == 403
    assert field_of(response) == {"permissions"}
    # ...nor anywhere, so a key without a project cannot carry it either.
    response = create(zt_client, headers, permissions=["core.project.delete"])
    assert response.status_code == 403
    # Site permissions belong to superusers.
    assert create(zt_client, headers, permissions=["core.users.manage"]).status_code == 403
    with zt_platform.db.transaction() as session:
        assert session.scalar(select(ApiKey.id)) is None


def test_permissions_held_somewhere_are_accepted_without_project(zt_client, zt_identity):
    user, _ = zt_identity.project_with("developer")
    zt_identity.project_with("owner", user=user)
    response = create(
        zt_client,
        zt_identity.headers(user),
        permissions=["core.project.read", "core.project.delete"],
    )
    assert response.status_code == 201
    assert response.json()["permissions"] == ["core.project.read", "core.project.delete"]


def test_organization_permission_on_a_project_key_is_400(zt_client, zt_identity):
    user = zt_identity.user()
    org = zt_identity.org(owner=user)
    project = zt_identity.project(org)
    response = create(
        zt_client, zt_identity.headers(user), project=project.id, permissions=["core.org.write"]
    )
    assert response.status_code == 400
    assert field_of(response) == {"permissions"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 201}, "name"),
        ({}, "name"),
        ({"name": "ci", "is_superuser": True}, "is_superuser"),
        ({"name": "ci", "permissions": "core.project.read"}, "permissions"),
        ({"name": "ci", "permissions": [1]}, "permissions"),
        ({"name": "ci", "permissions": []}, "permissions"),
        ({"name": "ci", "expires_at": "2099-01-01T00:00:00"}, "expires_at"),  # no timezone
        ({"name": "ci", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),  # past
        ({"name": "ci", "expires_at": "next tuesday"}, "expires_at"),
        ({"name": "ci", "project": ""}, "project"),
    ],
)
def test_bad_input_is_400_naming_the_field(zt_client, zt_identity, zt_platform, body, field):
    user, _ = zt_identity.project_with("owner")
    response = zt_client.post(KEYS, json=body, headers=zt_identity.headers(user))
    assert response.status_code == 400, response.text
    assert any(f == field or f.startswith(f"{field}.") for f in field_of(response))
    with zt_platform.db.transaction() as session:
        assert session.scalar(select(ApiKey.id)) is None


def test_unauthenticated_is_401(zt_client):
    assert zt_client.post(KEYS, json={"name": "ci"}).status_code == 401
    assert zt_client.get(KEYS).status_code == 401


def test_an_api_key_cannot_create_or_rotate_keys(zt_client, zt_identity):
    user, project = zt_identity.project_with("owner")
    key = zt_identity.api_key(user, project=project)
    headers = zt_identity.headers(key)
    assert create(zt_client, headers, project=project.id).status_code == 403
    assert create(zt_client, headers).status_code == 403
    key_id = zt_client.get(KEYS, headers=headers).json()["items"][0]["id"]
    assert zt_client.post(f"{KEYS}/{key_id}/rotate", headers=headers).status_code == 403
    # The key still works: nothing was rotated.
    assert zt_client.get(KEYS, headers=headers).status_code == 200


def test_create_is_audited_without_the_key(zt_client, zt_identity, zt_platform):
    user, project = zt_identity.project_with("developer")
    body = create(zt_client, zt_identity.headers(user), project=project.id).json()
    (row,) = audit_rows(zt_platform, "apikey.create")
    assert (row.actor_user_id, row.target_kind, row.target_id) == (user.id, "api_key", body["id"])
    assert (row.project_id, row.outcome) == (project.id, "success")
    secret = body["key"].split("_", 2)[2]
    assert secret not in str(row.detail) and body["key"] not in str(row.detail)


# --------------------------------------------------------------------------- list


def test_list_shows_only_the_callers_keys_and_never_a_secret(zt_client, zt_identity):
    alice, project = zt_identity.project_with("developer")
    bob, _ = zt_identity.project_with("developer")
    alice_key = zt_identity.api_key(alice, project=project, name="alice's")
    zt_identity.api_key(bob, name="bob's")
    body = zt_client.get(KEYS, headers=zt_identity.headers(alice)).json()
    assert [k["name"] for k in body["items"]] == ["alice's"]
    item = body["items"][0]
    assert set(item) == LISTED_FIELDS
    assert alice_key.split("_", 2)[2] not in str(body)
    assert item["project"] == project.id and alice_key.startswith(f"zt_{item['prefix']}_")


def test_list_is_paginated(zt_client, zt_identity):
    user, _ = zt_identity.project_with("developer")
    for i in range(5):
        zt_identity.api_key(user, name=f"k{i}")
    headers = zt_identity.headers(user)
    names, cursor = [], None
    while True:
        url = f"{KEYS}?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = zt_client.get(url, headers=headers).json()
        names += [k["name"] for k in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # Every key once (ids made in the same millisecond may come in either order).
    assert sorted(names) == [f"k{i}" for i in range(5)]
    assert zt_client.get(f"{KEYS}?limit=0", headers=headers).status_code == 400
    assert zt_client.get(f"{KEYS}?cursor=%%%", headers=headers).status_code == 400


def test_only_superusers_list_another_users_keys(zt_client, zt_identity):
    alice, _ = zt_identity.project_with("owner")
    bob, _ = zt_identity.project_with("owner")
    zt_identity.api_key(bob, name="bob's")
    response = zt_client.get(f"{KEYS}?user={bob.id}", headers=zt_identity.headers(alice))
    assert response.status_code == 403
    assert "bob's" not in response.text
    admin = zt_identity.user(superuser=True)
    body = zt_client.get(f"{KEYS}?user={bob.id}", headers=zt_identity.headers(admin)).json()
    assert [k["name"] for k in body["items"]] == ["bob's"]
    # Passing one's own id is the same as passing nothing.
    own = zt_client.get(f"{KEYS}?user={alice.id}", headers=zt_identity.headers(alice))
    assert own.status_code == 200 and own.json()["items"] == []


# --------------------------------------------------------------------------- revoke


def key_id_of(client: Any, headers: dict[str, str]) -> str:
    items = client.get(KEYS, headers=headers).json()["items"]
    return str(items[0]["id"])


def test_revoke_stops_the_key_at_once(zt_client, zt_identity, zt_platform):
    user, project = zt_identity.project_with("developer")
    key = zt_identity.api_key(user, project=project)
    key_id = key_id_of(zt_client, zt_identity.headers(key))
    response = zt_client.delete(f"{KEYS}/{key_id}", headers=zt_identity.headers(user))
    assert response.status_code == 204
    assert zt_client.get(KEYS, headers=zt_identity.headers(key)).status_code == 401
    listed = zt_client.get(KEYS, headers=zt_identity.headers(user)).json()["items"]
    assert listed[0]["revoked_at"] is not None
    # Revoking again succeeds and keeps the first time.
    again = zt_client.delete(f"{KEYS}/{key_id}", headers=zt_identity.headers(user))
    assert again.status_code == 204
    relisted = zt_client.get(KEYS, headers=zt_identity.headers(user)).json()["items"]
    assert relisted[0]["revoked_at"] == listed[0]["revoked_at"]
    rows = audit_rows(zt_platform, "apikey.revoke")
    assert {(r.target_kind, r.target_id, r.project_id) for r in rows} == {
        ("api_key", key_id, project.id)
    }


def test_a_key_may_revoke_itself(zt_client, zt_identity):
    user, _ = zt_identity.project_with("developer")
    key = zt_identity.api_key(user)
    headers = zt_identity.headers(key)
    assert (
        zt_client.delete(f"{KEYS}/{key_id_of(zt_client, headers)}", headers=headers).status_code
        == 204
    )
    assert zt_client.get(KEYS, headers=headers).status_code == 401


def test_someone_elses_key_is_not_found(zt_client, zt_identity):
    alice, _ = zt_identity.project_with("owner")
    bob, _ = zt_identity.project_with("owner")
    bob_key = zt_identity.api_key(bob)
    bob_key_id = key_id_of(zt_client, zt_identity.headers(bob_key))
    alice_headers = zt_identity.headers(alice)
    assert zt_client.delete(f"{KEYS}/{bob_key_id}", headers=alice_headers).status_code == 404
    assert zt_client.post(f"{KEYS}/{bob_key_id}/rotate", headers=alice_headers).status_code == 404
    assert zt_client.delete(f"{KEYS}/no-such-key", headers=alice_headers).status_code == 404
    # Bob's key is untouched.
    assert zt_client.get(KEYS, headers=zt_identity.headers(bob_key)).status_code == 200


def test_superuser_may_revoke_but_not_rotate_anyones_key(zt_client, zt_identity):
    bob, _ = zt_identity.project_with("owner")
    bob_key = zt_identity.api_key(bob)
    bob_key_id = key_id_of(zt_client, zt_identity.headers(bob_key))
    admin = zt_identity.headers(zt_identity.user(superuser=True))
    # Rotating would hand the superuser Bob's credential.
    assert zt_client.post(f"{KEYS}/{bob_key_id}/rotate", headers=admin).status_code == 404
    assert zt_client.delete(f"{KEYS}/{bob_key_id}", headers=admin).status_code == 204
    assert zt_client.get(KEYS, headers=zt_identity.headers(bob_key)).status_code == 401


# --------------------------------------------------------------------------- rotate


def test_rotate_gives_a_new_key_and_the_old_one_fails_at_once(zt_client, zt_identity, zt_platform):
    user, project = zt_identity.project_with("developer")
    headers = zt_identity.headers(user)
    created = create(
        zt_client, headers, project=project.id, permissions=["core.project.read"]
    ).json()
    response = zt_client.post(f"{KEYS}/{created['id']}/rotate", headers=headers)
    assert response.status_code == 200
    rotated = response.json()
    assert rotated["id"] == created["id"]
    assert rotated["key"] != created["key"] and rotated["prefix"] != created["prefix"]
    assert rotated["key"].startswith(f"zt_{rotated['prefix']}_")
    assert (rotated["project"], rotated["permissions"]) == (project.id, ["core.project.read"])
    assert zt_client.get(KEYS, headers=zt_identity.headers(created["key"])).status_code == 401
    assert zt_client.get(KEYS, headers=zt_identity.headers(rotated["key"])).status_code == 200
    (row,) = audit_rows(zt_platform, "apikey.rotate")
    assert (row.target_id, row.project_id, row.outcome) == (created["id"], project.id, "success")
    assert rotated["key"] not in str(row.detail)


def test_rotating_a_revoked_or_expired_key_is_409(zt_client, zt_identity, zt_platform):
    user, _ = zt_identity.project_with("developer")
    headers = zt_identity.headers(user)
    revoked = create(zt_client, headers, name="revoked").json()
    expired = create(zt_client, headers, name="expired", expires_at=future(1)).json()
    assert zt_client.delete(f"{KEYS}/{revoked['id']}", headers=headers).status_code == 204
    with zt_platform.db.transaction() as session:
        session.execute(
            update(ApiKey)
            .where(ApiKey.id == expired["id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    for key in (revoked, expired):
        response = zt_client.post(f"{KEYS}/{key['id']}/rotate", headers=headers)
        assert response.status_code == 409, response.text
        assert "key" not in response.json()
        assert zt_client.get(KEYS, headers=zt_identity.headers(key["key"])).status_code == 401
