"""Organizations API: create, list, read, change, delete; members; invitations.

Every test runs on SQLite, and on PostgreSQL with ZHONGTAI_TEST_DATABASE_URL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from _helpers import audit_events, fields
from sqlalchemy import select

from zhongtai.identity.models import Invitation, Organization, OrgMember, Project, ProjectMember
from zhongtai.identity.tokens import hmac_hex

# --------------------------------------------------------------------------- create


def test_any_user_creates_an_org_and_becomes_its_owner(zt_client, zt_identity, zt_platform):
    user = zt_identity.user()
    created = zt_client.post(
        "/api/v1/orgs", json={"name": "Acme Research Lab"}, headers=zt_identity.headers(user)
    )
    assert created.status_code == 201
    body = created.json()
    assert body["slug"] == "acme-research-lab"
    assert body["name"] == "Acme Research Lab"
    assert body["role"] == "owner"
    with zt_platform.db.transaction() as session:
        role = session.scalar(
            select(OrgMember.role).where(
                OrgMember.org_id == body["id"], OrgMember.user_id == user.id
            )
        )
    assert role == 50
    rows = audit_events(zt_platform, "org.create", target_id=body["id"])
    assert [r.outcome for r in rows] == ["success"]
    assert rows[0].actor_user_id == user.id


def test_create_org_with_an_explicit_slug(zt_client, zt_identity):
    headers = zt_identity.headers(zt_identity.user())
    created = zt_client.post(
        "/api/v1/orgs", json={"name": "X", "slug": "vision-team"}, headers=headers
    )
    assert created.status_code == 201
    assert created.json()["slug"] == "vision-team"
    by_slug = zt_client.get("/api/v1/orgs/vision-team", headers=headers)
    by_id = zt_client.get(f"/api/v1/orgs/{created.json()['id']}", headers=headers)
    assert by_slug.status_code == by_id.status_code == 200
    assert by_slug.json()["id"] == by_id.json()["id"] == created.json()["id"]


@pytest.mark.parametrize(
    "slug", ["Upper", "under_score", "-lead", "trail-", "a" * 65, "", "sp ace", "ünï"]
)
def test_bad_slug_is_400_naming_slug(zt_client, zt_identity, slug):
    response = zt_client.post(
        "/api/v1/orgs",
        json={"name": "Team", "slug": slug},
        headers=zt_identity.headers(zt_identity.user()),
    )
    assert response.status_code == 400
    assert "slug" in fields(response)


def test_a_name_without_a_derivable_slug_needs_one(zt_client, zt_identity):
    headers = zt_identity.headers(zt_identity.user())
    response = zt_client.post("/api/v1/orgs", json={"name": "中台"}, headers=headers)
    assert response.status_code == 400
    assert "slug" in fields(response)
    ok = zt_client.post("/api/v1/orgs", json={"name": "中台", "slug": "zhongtai"}, headers=headers)
    assert ok.status_code == 201


def test_duplicate_slug_is_409_naming_slug(zt_client, zt_identity, zt_platform):
    zt_identity.org("taken")
    response = zt_client.post(
        "/api/v1/orgs",
        json={"name": "Taken"},
        headers=zt_identity.headers(zt_identity.user()),
    )
    assert response.status_code == 409
    assert "slug" in fields(response)
    with zt_platform.db.transaction() as session:
        assert session.scalar(select(Organization.id).where(Organization.name == "Taken")) is None


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "ok", "owner_id": "someone"}, "owner_id"),
        ({"name": "ok", "is_superuser": True}, "is_superuser"),
    ],
)
def test_bad_org_body_is_400_naming_the_field(zt_client, zt_identity, body, field):
    response = zt_client.post(
        "/api/v1/orgs", json=body, headers=zt_identity.headers(zt_identity.user())
    )
    assert response.status_code == 400
    assert field in fields(response)


def test_creating_an_org_needs_credentials(zt_client):
    assert zt_client.post("/api/v1/orgs", json={"name": "Anon"}).status_code == 401
    assert zt_client.get("/api/v1/orgs").status_code == 401


def test_restricted_api_keys_cannot_create_orgs(zt_client, zt_identity):
    user, project = zt_identity.project_with("owner")
    scoped = zt_identity.api_key(user, project=project)
    limited = zt_identity.api_key(user, permissions=["core.project.read"])
    full = zt_identity.api_key(user)
    for key, expected in ((scoped, 403), (limited, 403), (full, 201)):
        response = zt_client.post(
            "/api/v1/orgs", json={"name": f"by key {expected}"}, headers=zt_identity.headers(key)
        )
        assert response.status_code == expected, response.text


# --------------------------------------------------------------------------- list and read


def test_list_shows_the_callers_orgs_only(zt_client, zt_identity):
    user = zt_identity.user()
    owned = zt_identity.org("mine", owner=user)
    via_project = zt_identity.org("via-project")
    project = zt_identity.project(via_project)
    zt_identity.member(user, project, "viewer")
    other = zt_identity.org("other", owner=zt_identity.user())
    zt_identity.project(other)

    body = zt_client.get("/api/v1/orgs", headers=zt_identity.headers(user)).json()
    listed = {item["slug"]: item["role"] for item in body["items"]}
    assert listed == {"mine": "owner", "via-project": None}
    assert body["next_cursor"] is None

    filtered = zt_client.get("/api/v1/orgs?q=VIA", headers=zt_identity.headers(user)).json()
    assert [o["id"] for o in filtered["items"]] == [via_project.id]
    # A project member can open the org that holds their project, but not its members.
    headers = zt_identity.headers(user)
    assert zt_client.get(f"/api/v1/orgs/{via_project.id}", headers=headers).status_code == 200
    members = zt_client.get(f"/api/v1/orgs/{via_project.id}/members", headers=headers)
    assert members.status_code == 404
    assert owned.id in {o["id"] for o in body["items"]}


def test_superuser_lists_every_org(zt_client, zt_identity, zt_admin_headers):
    slugs = {zt_identity.org().slug for _ in range(3)}
    listed = zt_client.get("/api/v1/orgs", headers=zt_admin_headers).json()["items"]
    assert slugs <= {o["slug"] for o in listed}


def test_a_project_scoped_key_lists_only_its_projects_org(zt_client, zt_identity):
    user = zt_identity.user()
    org_a = zt_identity.org("org-a", owner=user)
    org_b = zt_identity.org("org-b", owner=user)
    project = zt_identity.project(org_a)
    zt_identity.project(org_b)
    key = zt_identity.api_key(user, project=project)
    listed = zt_client.get("/api/v1/orgs", headers=zt_identity.headers(key)).json()["items"]
    assert [o["slug"] for o in listed] == ["org-a"]
    assert zt_client.get("/api/v1/orgs/org-b", headers=zt_identity.headers(key)).status_code == 404


def test_orgs_list_is_paginated(zt_client, zt_identity):
    user = zt_identity.user()
    for _ in range(5):
        zt_identity.org(owner=user)
    headers = zt_identity.headers(user)
    first = zt_client.get("/api/v1/orgs?limit=2", headers=headers).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    seen = [o["id"] for o in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        page = zt_client.get(f"/api/v1/orgs?limit=2&cursor={cursor}", headers=headers).json()
        seen += [o["id"] for o in page["items"]]
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)) == 5
    bad = zt_client.get("/api/v1/orgs?limit=0", headers=headers)
    assert bad.status_code == 400
    assert "limit" in fields(bad)


def test_another_orgs_objects_are_404(zt_client, zt_identity, zt_platform):
    me = zt_identity.user()
    mine = zt_identity.org("mine", owner=me)
    theirs = zt_identity.org("theirs", owner=zt_identity.user())
    invitation = _invitation(zt_platform, theirs)
    headers = zt_identity.headers(me)
    base = f"/api/v1/orgs/{theirs.id}"
    calls = [
        ("GET", base, None),
        ("GET", "/api/v1/orgs/theirs", None),
        ("PATCH", base, {"name": "Pwned"}),
        ("DELETE", base, None),
        ("GET", f"{base}/members", None),
        ("POST", f"{base}/members", {"user_id": me.id, "role": "owner"}),
        ("PATCH", f"{base}/members/{me.id}", {"role": "owner"}),
        ("DELETE", f"{base}/members/{me.id}", None),
        ("GET", f"{base}/invitations", None),
        ("POST", f"{base}/invitations", {"email": "x@example.com", "role": "viewer"}),
        ("DELETE", f"{base}/invitations/{invitation}", None),
        # swapping the org in the path does not reach another org's invitation
        ("DELETE", f"/api/v1/orgs/{mine.id}/invitations/{invitation}", None),
    ]
    for method, url, body in calls:
        response = zt_client.request(method, url, json=body, headers=headers)
        assert response.status_code == 404, (method, url, response.text)
        assert response.json()["detail"] == "not found"  # the same answer as a missing org
    with zt_platform.db.transaction() as session:
        assert session.get(Organization, theirs.id).name == "theirs"
        assert session.get(Invitation, invitation) is not None


# --------------------------------------------------------------------------- change, delete


def test_admin_renames_viewer_cannot(zt_client, zt_identity, zt_platform):
    org = zt_identity.org("acme", owner=zt_identity.user())
    admin, viewer = zt_identity.user(), zt_identity.user()
    zt_identity.member(admin, org, "admin")
    zt_identity.member(viewer, org, "viewer")
    denied = zt_client.patch(
        "/api/v1/orgs/acme", json={"name": "Nope"}, headers=zt_identity.headers(viewer)
    )
    assert denied.status_code == 403
    ok = zt_client.patch(
        "/api/v1/orgs/acme", json={"name": "Acme Inc"}, headers=zt_identity.headers(admin)
    )
    assert ok.status_code == 200
    assert ok.json()["name"] == "Acme Inc"
    rows = audit_events(zt_platform, "org.update", org_id=org.id, outcome="success")
    assert rows[0].detail["changes"]["name"] == {"old": "acme", "new": "Acme Inc"}


def test_org_slug_change_conflicts_are_409(zt_client, zt_identity):
    owner = zt_identity.user()
    zt_identity.org("one", owner=owner)
    zt_identity.org("two", owner=owner)
    headers = zt_identity.headers(owner)
    clash = zt_client.patch("/api/v1/orgs/one", json={"slug": "two"}, headers=headers)
    assert clash.status_code == 409
    assert "slug" in fields(clash)
    bad = zt_client.patch("/api/v1/orgs/one", json={"slug": "Two!"}, headers=headers)
    assert bad.status_code == 400
    assert "slug" in fields(bad)
    moved = zt_client.patch("/api/v1/orgs/one", json={"slug": "uno"}, headers=headers)
    assert moved.status_code == 200
    assert zt_client.get("/api/v1/orgs/uno", headers=headers).status_code == 200


def test_only_owners_and_superusers_delete_an_org(
    zt_client, zt_identity, zt_platform, zt_admin_headers
):
    owner, admin = zt_identity.user(), zt_identity.user()
    org = zt_identity.org("doomed", owner=owner)
    zt_identity.member(admin, org, "admin")
    project = zt_identity.project(org)
    zt_identity.member(admin, project, "owner")
    refused = zt_client.delete("/api/v1/orgs/doomed", headers=zt_identity.headers(admin))
    assert refused.status_code == 403
    deleted = zt_client.delete("/api/v1/orgs/doomed", headers=zt_identity.headers(owner))
    assert deleted.status_code == 204
    with zt_platform.db.transaction() as session:
        assert session.get(Organization, org.id) is None
        assert session.get(Project, project.id) is None  # the cascade took the projects
        assert session.scalar(select(ProjectMember.id)) is None
    assert audit_events(zt_platform, "org.delete", target_id=org.id, outcome="success")

    another = zt_identity.org("another", owner=zt_identity.user())
    assert zt_client.delete("/api/v1/orgs/another", headers=zt_admin_headers).status_code == 204
    with zt_platform.db.transaction() as session:
        assert session.get(Organization, another.id) is None


# --------------------------------------------------------------------------- members


@pytest.fixture
def team(zt_identity):
    """Org ``team`` with an owner, an admin and a viewer, and one outsider user."""
    owner, admin, viewer, outsider = (zt_identity.user() for _ in range(4))
    org = zt_identity.org("team", owner=owner)
    zt_identity.member(admin, org, "admin")
    zt_identity.member(viewer, org, "viewer")
    return {"org": org, "owner": owner, "admin": admin, "viewer": viewer, "outsider": outsider}


def _h(zt_identity, user):
    return zt_identity.headers(user)


def test_members_are_listed_with_roles(zt_client, zt_identity, team):
    body = zt_client.get(
        "/api/v1/orgs/team/members", headers=_h(zt_identity, team["viewer"])
    ).json()
    roles = {m["user"]["id"]: m["role"] for m in body["items"]}
    assert roles == {
        team["owner"].id: "owner",
        team["admin"].id: "admin",
        team["viewer"].id: "viewer",
    }
    assert all("password_hash" not in m["user"] for m in body["items"])
    admins = zt_client.get(
        "/api/v1/orgs/team/members?role=admin", headers=_h(zt_identity, team["viewer"])
    ).json()["items"]
    assert [m["user"]["id"] for m in admins] == [team["admin"].id]
    bad = zt_client.get(
        "/api/v1/orgs/team/members?role=boss", headers=_h(zt_identity, team["viewer"])
    )
    assert bad.status_code == 400
    assert "role" in fields(bad)


def test_admin_adds_members_by_id_or_email(zt_client, zt_identity, zt_platform, team):
    headers = _h(zt_identity, team["admin"])
    by_email = zt_client.post(
        "/api/v1/orgs/team/members",
        json={"email": team["outsider"].email.upper(), "role": "developer"},
        headers=headers,
    )
    assert by_email.status_code == 201
    assert by_email.json()["role"] == "developer"
    other = zt_identity.user()
    by_id = zt_client.post(
        "/api/v1/orgs/team/members", json={"user_id": other.id, "role": "admin"}, headers=headers
    )
    assert by_id.status_code == 201
    rows = audit_events(zt_platform, "org.member.add", target_id=other.id)
    assert rows[0].detail["new_role"] == "admin"
    assert rows[0].org_id == team["org"].id


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"user_id": "nosuchuser", "role": "viewer"}, 404, "user_id"),
        ({"email": "ghost@example.com", "role": "viewer"}, 404, "email"),
        ({"role": "viewer"}, 400, "user_id"),
        ({"user_id": "x", "email": "x@example.com", "role": "viewer"}, 400, "user_id"),
        ({"email": "a@example.com", "role": "boss"}, 400, "role"),
        ({"email": "a@example.com", "role": 50}, 400, "role"),
        ({"email": "a@example.com"}, 400, "role"),
        ({"email": "a@example.com", "role": "viewer", "org_id": "x"}, 400, "org_id"),
    ],
)
def test_bad_member_input(zt_client, zt_identity, team, body, status, field):
    response = zt_client.post(
        "/api/v1/orgs/team/members", json=body, headers=_h(zt_identity, team["owner"])
    )
    assert response.status_code == status, response.text
    assert field in fields(response)


def test_duplicate_membership_is_409(zt_client, zt_identity, team):
    response = zt_client.post(
        "/api/v1/orgs/team/members",
        json={"user_id": team["viewer"].id, "role": "developer"},
        headers=_h(zt_identity, team["owner"]),
    )
    assert response.status_code == 409
    assert "user_id" in fields(response)


def test_viewer_cannot_manage_members(zt_client, zt_identity, team):
    headers = _h(zt_identity, team["viewer"])
    calls = [
        ("POST", "/api/v1/orgs/team/members", {"user_id": team["outsider"].id, "role": "viewer"}),
        ("PATCH", f"/api/v1/orgs/team/members/{team['admin'].id}", {"role": "viewer"}),
        ("DELETE", f"/api/v1/orgs/team/members/{team['admin'].id}", None),
        ("POST", "/api/v1/orgs/team/invitations", {"email": "x@example.com", "role": "viewer"}),
        ("GET", "/api/v1/orgs/team/invitations", None),
    ]
    for method, url, body in calls:
        response = zt_client.request(method, url, json=body, headers=headers)
        assert response.status_code == 403, (method, url, response.text)


def test_admin_cannot_grant_or_touch_owner(zt_client, zt_identity, zt_platform, team):
    headers = _h(zt_identity, team["admin"])
    grant = zt_client.post(
        "/api/v1/orgs/team/members",
        json={"user_id": team["outsider"].id, "role": "owner"},
        headers=headers,
    )
    assert grant.status_code == 403
    assert "role" in fields(grant)
    promote = zt_client.patch(
        f"/api/v1/orgs/team/members/{team['viewer'].id}", json={"role": "owner"}, headers=headers
    )
    assert promote.status_code == 403
    self_promote = zt_client.patch(
        f"/api/v1/orgs/team/members/{team['admin'].id}", json={"role": "owner"}, headers=headers
    )
    assert self_promote.status_code == 403
    demote = zt_client.patch(
        f"/api/v1/orgs/team/members/{team['owner'].id}", json={"role": "viewer"}, headers=headers
    )
    assert demote.status_code == 403
    remove = zt_client.delete(f"/api/v1/orgs/team/members/{team['owner'].id}", headers=headers)
    assert remove.status_code == 403
    with zt_platform.db.transaction() as session:
        roles = dict(session.execute(select(OrgMember.user_id, OrgMember.role)).all())
    assert roles[team["owner"].id] == 50
    assert roles[team["admin"].id] == 40
    assert team["outsider"].id not in roles
    # Within their own level an admin manages freely.
    ok = zt_client.patch(
        f"/api/v1/orgs/team/members/{team['viewer'].id}", json={"role": "admin"}, headers=headers
    )
    assert ok.status_code == 200


def test_superuser_grants_owner(zt_client, zt_identity, team, zt_admin_headers):
    response = zt_client.post(
        "/api/v1/orgs/team/members",
        json={"user_id": team["outsider"].id, "role": "owner"},
        headers=zt_admin_headers,
    )
    assert response.status_code == 201
    assert response.json()["role"] == "owner"


def test_the_last_owner_is_protected(zt_client, zt_identity, zt_platform, team):
    owner = team["owner"]
    headers = _h(zt_identity, owner)
    url = f"/api/v1/orgs/team/members/{owner.id}"
    demote = zt_client.patch(url, json={"role": "admin"}, headers=headers)
    assert demote.status_code == 409
    assert "role" in fields(demote)
    remove = zt_client.delete(url, headers=headers)
    assert remove.status_code == 409
    # A second owner makes either change possible.
    promote = zt_client.patch(
        f"/api/v1/orgs/team/members/{team['admin'].id}", json={"role": "owner"}, headers=headers
    )
    assert promote.status_code == 200
    assert zt_client.patch(url, json={"role": "admin"}, headers=headers).status_code == 200
    with zt_platform.db.transaction() as session:
        owners = session.scalars(
            select(OrgMember.user_id).where(
                OrgMember.org_id == team["org"].id, OrgMember.role == 50
            )
        ).all()
    assert owners == [team["admin"].id]


def test_role_change_is_audited_with_old_and_new_role(zt_client, zt_identity, zt_platform, team):
    response = zt_client.patch(
        f"/api/v1/orgs/team/members/{team['viewer'].id}",
        json={"role": "maintainer"},
        headers=_h(zt_identity, team["owner"]),
    )
    assert response.status_code == 200
    assert response.json()["role"] == "maintainer"
    rows = audit_events(zt_platform, "org.member.update", target_id=team["viewer"].id)
    assert len(rows) == 1
    row = rows[0]
    assert row.outcome == "success"
    assert row.actor_user_id == team["owner"].id
    assert row.org_id == team["org"].id
    assert row.detail["old_role"] == "viewer"
    assert row.detail["new_role"] == "maintainer"


def test_removing_a_member(zt_client, zt_identity, zt_platform, team):
    headers = _h(zt_identity, team["admin"])
    url = f"/api/v1/orgs/team/members/{team['viewer'].id}"
    assert zt_client.delete(url, headers=headers).status_code == 204
    assert zt_client.delete(url, headers=headers).status_code == 404
    assert zt_client.patch(url, json={"role": "viewer"}, headers=headers).status_code == 404
    rows = audit_events(zt_platform, "org.member.remove", outcome="success")
    assert rows[0].detail["old_role"] == "viewer"


# --------------------------------------------------------------------------- invitations


def _invitation(platform, org, email="invitee@example.com"):
    with platform.db.transaction() as session:
        row = Invitation(
            org_id=org.id,
            email=email,
            role=10,
            token_hash=hmac_hex(platform.secret_key, f"token-for-{email}-{org.id}"),
            expires_at=datetime.now(UTC) + timedelta(days=1),
        )
        session.add(row)
        session.flush()
        return row.id


def test_invitation_returns_the_token_once_and_stores_a_hash(
    zt_client, zt_identity, zt_platform, team
):
    before = datetime.now(UTC)
    created = zt_client.post(
        "/api/v1/orgs/team/invitations",
        json={"email": "New.Person@Example.com", "role": "developer"},
        headers=_h(zt_identity, team["admin"]),
    )
    assert created.status_code == 201
    body = created.json()
    assert body["email"] == "new.person@example.com"
    assert body["role"] == "developer"
    token = body["token"]
    assert len(token) >= 40
    base_url = zt_platform.settings.base_url
    assert body["accept_url"] == f"{base_url}/invite?token={token}"
    ttl = zt_platform.settings.identity.invitation_ttl
    expires = datetime.fromisoformat(body["expires_at"])
    assert before + timedelta(seconds=ttl - 5) < expires < before + timedelta(seconds=ttl + 60)

    with zt_platform.db.transaction() as session:
        row = session.get(Invitation, body["id"])
        assert row.token_hash == hmac_hex(zt_platform.secret_key, token)
        assert row.invited_by == team["admin"].id
    listed = zt_client.get("/api/v1/orgs/team/invitations", headers=_h(zt_identity, team["admin"]))
    assert listed.status_code == 200
    assert [i["id"] for i in listed.json()["items"]] == [body["id"]]
    assert token not in listed.text and "token" not in listed.json()["items"][0]
    rows = audit_events(zt_platform, "org.invitation.create", target_id=body["id"])
    assert rows and token not in str(rows[0].detail)


def test_invitation_ttl_comes_from_settings(zt_app_factory, zt_settings):
    from litestar.testing import TestClient

    from zhongtai.testing import ZtIdentity

    settings = zt_settings.model_copy(
        update={"identity": zt_settings.identity.model_copy(update={"invitation_ttl": 3600})}
    )
    app = zt_app_factory(settings=settings)
    identity = ZtIdentity(app.state["platform"])
    owner = identity.user()
    identity.org("ttl", owner=owner)
    with TestClient(app) as client:
        body = client.post(
            "/api/v1/orgs/ttl/invitations",
            json={"email": "a@example.com", "role": "viewer"},
            headers=identity.headers(owner),
        ).json()
    expires = datetime.fromisoformat(body["expires_at"])
    assert timedelta(minutes=59) < expires - datetime.now(UTC) < timedelta(minutes=61)


def test_admin_cannot_invite_an_owner(zt_client, zt_identity, team):
    response = zt_client.post(
        "/api/v1/orgs/team/invitations",
        json={"email": "boss@example.com", "role": "owner"},
        headers=_h(zt_identity, team["admin"]),
    )
    assert response.status_code == 403
    assert "role" in fields(response)
    owner_invites = zt_client.post(
        "/api/v1/orgs/team/invitations",
        json={"email": "boss@example.com", "role": "owner"},
        headers=_h(zt_identity, team["owner"]),
    )
    assert owner_invites.status_code == 201


@pytest.mark.parametrize(
    "body, field",
    [
        ({"email": "not-an-email", "role": "viewer"}, "email"),
        ({"email": "a@example.com", "role": "chief"}, "role"),
        ({"role": "viewer"}, "email"),
        ({"email": "a@example.com", "role": "viewer", "token": "mine"}, "token"),
    ],
)
def test_bad_invitation_input_is_400(zt_client, zt_identity, team, body, field):
    response = zt_client.post(
        "/api/v1/orgs/team/invitations", json=body, headers=_h(zt_identity, team["owner"])
    )
    assert response.status_code == 400
    assert field in fields(response)


def test_inviting_a_member_is_409_and_reinviting_replaces(
    zt_client, zt_identity, zt_platform, team
):
    headers = _h(zt_identity, team["owner"])
    member = zt_client.post(
        "/api/v1/orgs/team/invitations",
        json={"email": team["viewer"].email, "role": "admin"},
        headers=headers,
    )
    assert member.status_code == 409
    assert "email" in fields(member)
    first = zt_client.post(
        "/api/v1/orgs/team/invitations",
        json={"email": "again@example.com", "role": "viewer"},
        headers=headers,
    ).json()
    second = zt_client.post(
        "/api/v1/orgs/team/invitations",
        json={"email": "again@example.com", "role": "developer"},
        headers=headers,
    ).json()
    with zt_platform.db.transaction() as session:
        assert session.get(Invitation, first["id"]) is None
        assert session.get(Invitation, second["id"]) is not None


def test_revoking_an_invitation_deletes_it(zt_client, zt_identity, zt_platform, team):
    headers = _h(zt_identity, team["admin"])
    created = zt_client.post(
        "/api/v1/orgs/team/invitations",
        json={"email": "bye@example.com", "role": "viewer"},
        headers=headers,
    ).json()
    url = f"/api/v1/orgs/team/invitations/{created['id']}"
    assert zt_client.delete(url, headers=_h(zt_identity, team["viewer"])).status_code == 403
    assert zt_client.delete(url, headers=headers).status_code == 204
    with zt_platform.db.transaction() as session:
        assert session.get(Invitation, created["id"]) is None
    assert zt_client.delete(url, headers=headers).status_code == 404
    assert audit_events(zt_platform, "org.invitation.revoke", target_id=created["id"])


def test_expired_and_accepted_invitations_are_not_listed(zt_client, zt_identity, zt_platform, team):
    pending = _invitation(zt_platform, team["org"], "pending@example.com")
    with zt_platform.db.transaction() as session:
        for email, expires, accepted in (
            ("old@example.com", datetime.now(UTC) - timedelta(seconds=1), None),
            ("done@example.com", datetime.now(UTC) + timedelta(days=1), datetime.now(UTC)),
        ):
            session.add(
                Invitation(
                    org_id=team["org"].id,
                    email=email,
                    role=10,
                    token_hash=hmac_hex(zt_platform.secret_key, email),
                    expires_at=expires,
                    accepted_at=accepted,
                )
            )
    listed = zt_client.get(
        "/api/v1/orgs/team/invitations", headers=_h(zt_identity, team["owner"])
    ).json()["items"]
    assert [i["id"] for i in listed] == [pending]
