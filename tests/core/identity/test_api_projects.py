"""Projects API: create, list, read, change, delete; project members.

The list is filtered in SQL by what the caller may read; another project's objects
answer 404 whatever the route, parameter or credential. Runs on SQLite, and on
PostgreSQL with ZHONGTAI_TEST_DATABASE_URL.
"""

from __future__ import annotations

import pytest
from _helpers import audit_events, fields
from sqlalchemy import event, insert, select

from zhongtai.identity.models import Organization, OrgMember, Project, ProjectMember
from zhongtai.metadata.ids import new_id


@pytest.fixture
def two(zt_identity):
    """Users ``a`` and ``b``, each the owner of one project in an org of their own."""
    a, b = zt_identity.user(), zt_identity.user()
    org_a, org_b = zt_identity.org("org-a"), zt_identity.org("org-b")
    project_a = zt_identity.project(org_a, "alpha")
    project_b = zt_identity.project(org_b, "beta")
    zt_identity.member(a, project_a, "owner")
    zt_identity.member(b, project_b, "owner")
    return {"a": a, "b": b, "org_a": org_a, "org_b": org_b, "pa": project_a, "pb": project_b}


def _ids(response):
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


# --------------------------------------------------------------------------- create


def test_org_admin_creates_a_project(zt_client, zt_identity, zt_platform):
    admin = zt_identity.user()
    org = zt_identity.org("lab", owner=zt_identity.user())
    zt_identity.member(admin, org, "admin")
    created = zt_client.post(
        "/api/v1/projects",
        json={"org": "lab", "name": "Speech Recognition", "description": "ASR models"},
        headers=zt_identity.headers(admin),
    )
    assert created.status_code == 201
    body = created.json()
    assert body["slug"] == "speech-recognition"
    assert body["org"] == {"id": org.id, "slug": "lab"}
    assert body["description"] == "ASR models"
    assert body["role"] == "admin"  # from the org; no extra membership needed
    with zt_platform.db.transaction() as session:
        assert session.scalar(select(ProjectMember.id)) is None
    rows = audit_events(zt_platform, "project.create", target_id=body["id"])
    assert len(rows) == 1
    assert rows[0].outcome == "success"
    assert rows[0].actor_user_id == admin.id
    assert rows[0].project_id == body["id"]
    assert rows[0].org_id == org.id
    got = zt_client.get(f"/api/v1/projects/{body['id']}", headers=zt_identity.headers(admin))
    assert got.status_code == 200
    assert got.json()["name"] == "Speech Recognition"


def test_superuser_outside_the_org_becomes_project_owner(
    zt_client, zt_identity, zt_platform, zt_admin_headers
):
    org = zt_identity.org("ops")
    created = zt_client.post(
        "/api/v1/projects", json={"org": org.id, "name": "infra"}, headers=zt_admin_headers
    )
    assert created.status_code == 201
    assert created.json()["role"] == "owner"
    with zt_platform.db.transaction() as session:
        roles = session.scalars(select(ProjectMember.role)).all()
    assert roles == [50]


def test_creating_in_an_org_you_cannot_see_is_404(zt_client, zt_identity, zt_platform, two):
    headers = zt_identity.headers(two["a"])
    for org in (two["org_b"].id, "org-b", "no-such-org"):
        response = zt_client.post(
            "/api/v1/projects", json={"org": org, "name": "sneaky"}, headers=headers
        )
        assert response.status_code == 404, (org, response.text)
    with zt_platform.db.transaction() as session:
        assert session.scalar(select(Project.id).where(Project.name == "sneaky")) is None


def test_org_members_below_admin_cannot_create_projects(zt_client, zt_identity):
    org = zt_identity.org("lab")
    for role in ("viewer", "developer", "maintainer"):
        user = zt_identity.user()
        zt_identity.member(user, org, role)
        response = zt_client.post(
            "/api/v1/projects", json={"org": "lab", "name": role}, headers=zt_identity.headers(user)
        )
        assert response.status_code == 403, role


def test_project_slug_rules(zt_client, zt_identity):
    owner = zt_identity.user()
    zt_identity.org("one", owner=owner)
    zt_identity.org("two", owner=owner)
    headers = zt_identity.headers(owner)

    def create(org, **body):
        return zt_client.post("/api/v1/projects", json={"org": org, **body}, headers=headers)

    assert create("one", name="x", slug="shared").status_code == 201
    duplicate = create("one", name="y", slug="shared")
    assert duplicate.status_code == 409
    assert "slug" in fields(duplicate)
    derived_duplicate = create("one", name="Shared")
    assert derived_duplicate.status_code == 409
    assert create("two", name="z", slug="shared").status_code == 201  # unique per org only
    for bad in ("Shared", "a_b", "-a", "a-", "x" * 65, ""):
        response = create("one", name="n", slug=bad)
        assert response.status_code == 400, bad
        assert "slug" in fields(response)
    no_ascii = create("one", name="语音")
    assert no_ascii.status_code == 400
    assert "slug" in fields(no_ascii)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"name": "x"}, "org"),
        ({"org": "lab"}, "name"),
        ({"org": "lab", "name": "x", "org_id": "other"}, "org_id"),
        ({"org": "lab", "name": "x", "owner": "someone"}, "owner"),
        ({"org": "lab", "name": "x", "description": "d" * 10_001}, "description"),
    ],
)
def test_bad_project_body_is_400_naming_the_field(zt_client, zt_identity, body, field):
    owner = zt_identity.user()
    zt_identity.org("lab", owner=owner)
    response = zt_client.post("/api/v1/projects", json=body, headers=zt_identity.headers(owner))
    assert response.status_code == 400
    assert field in fields(response)


# --------------------------------------------------------------------------- isolation


def test_a_user_of_project_a_gets_404_for_everything_of_project_b(
    zt_client, zt_identity, zt_platform, two
):
    headers = zt_identity.headers(two["a"])
    pb = two["pb"].id
    calls = [
        ("GET", f"/api/v1/projects/{pb}", None),
        ("PATCH", f"/api/v1/projects/{pb}", {"name": "owned"}),
        ("DELETE", f"/api/v1/projects/{pb}", None),
        ("GET", f"/api/v1/projects/{pb}/members", None),
        ("POST", f"/api/v1/projects/{pb}/members", {"user_id": two["a"].id, "role": "owner"}),
        ("PATCH", f"/api/v1/projects/{pb}/members/{two['b'].id}", {"role": "viewer"}),
        ("DELETE", f"/api/v1/projects/{pb}/members/{two['b'].id}", None),
        ("GET", "/api/v1/projects/no-such-project", None),
    ]
    for method, url, body in calls:
        response = zt_client.request(method, url, json=body, headers=headers)
        assert response.status_code == 404, (method, url, response.text)
        assert response.json()["detail"] == "not found"
    with zt_platform.db.transaction() as session:
        assert session.get(Project, pb).name == "beta"
        members = session.execute(
            select(ProjectMember.user_id, ProjectMember.role).where(ProjectMember.project_id == pb)
        ).all()
    assert members == [(two["b"].id, 50)]


def test_lists_and_filters_never_show_another_project(zt_client, zt_identity, two):
    headers = zt_identity.headers(two["a"])
    pa, pb = two["pa"].id, two["pb"].id
    assert _ids(zt_client.get("/api/v1/projects", headers=headers)) == [pa]
    # Filters naming the other org or project's text find nothing, in any form.
    for query in (
        f"org={two['org_b'].id}",
        "org=org-b",
        "q=beta",
        f"org={two['org_b'].id}&q=beta",
        "org=no-such-org",
    ):
        assert _ids(zt_client.get(f"/api/v1/projects?{query}", headers=headers)) == [], query
    assert _ids(zt_client.get("/api/v1/projects?org=org-a", headers=headers)) == [pa]
    assert _ids(zt_client.get(f"/api/v1/projects?org={two['org_a'].id}", headers=headers)) == [pa]
    # Swapping the caller does not widen anything either.
    assert _ids(zt_client.get("/api/v1/projects", headers=zt_identity.headers(two["b"]))) == [pb]


def test_the_list_of_a_user_with_3_of_200_projects_is_exactly_those(
    zt_client, zt_identity, zt_platform
):
    user = zt_identity.user()
    org_ids = [new_id() for _ in range(4)]
    rows = [
        {"id": new_id(), "org_id": org_ids[i % 4], "slug": f"p{i}", "name": f"p{i}"}
        for i in range(200)
    ]
    with zt_platform.db.transaction() as session:
        session.execute(
            insert(Organization),
            [{"id": o, "slug": f"o{i}", "name": f"o{i}"} for i, o in enumerate(org_ids)],
        )
        session.execute(insert(Project), [{**r, "description": ""} for r in rows])
    chosen = [rows[7]["id"], rows[88]["id"], rows[199]["id"]]
    with zt_platform.db.transaction() as session:
        for role, project_id in zip((10, 20, 50), chosen, strict=True):
            session.add(ProjectMember(project_id=project_id, user_id=user.id, role=role))
    body = zt_client.get("/api/v1/projects?limit=500", headers=zt_identity.headers(user)).json()
    assert sorted(p["id"] for p in body["items"]) == sorted(chosen)
    assert {p["id"]: p["role"] for p in body["items"]} == dict(
        zip(chosen, ("viewer", "developer", "owner"), strict=True)
    )
    assert body["next_cursor"] is None


def test_the_list_is_one_statement_whatever_the_number_of_projects(
    zt_client, zt_identity, zt_platform
):
    user = zt_identity.user()
    org = zt_identity.org("big", owner=user)
    with zt_platform.db.transaction() as session:
        session.execute(
            insert(Project),
            [
                {
                    "id": new_id(),
                    "org_id": org.id,
                    "slug": f"p{i}",
                    "name": f"p{i}",
                    "description": "",
                }
                for i in range(120)
            ],
        )
    headers = zt_identity.headers(user)
    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        if "FROM projects" in statement:
            statements.append(statement)

    event.listen(zt_platform.db.engine, "before_cursor_execute", count)
    try:
        page = zt_client.get("/api/v1/projects?limit=100", headers=headers).json()
    finally:
        event.remove(zt_platform.db.engine, "before_cursor_execute", count)
    assert len(page["items"]) == 100
    assert len(statements) == 1


def test_projects_are_paginated_with_a_cursor(zt_client, zt_identity):
    user = zt_identity.user()
    org = zt_identity.org(owner=user)
    made = sorted(zt_identity.project(org).id for _ in range(5))  # ids sort by creation
    headers = zt_identity.headers(user)
    first = zt_client.get("/api/v1/projects?limit=2", headers=headers).json()
    assert [p["id"] for p in first["items"]] == made[:2]
    seen = [p["id"] for p in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        page = zt_client.get(f"/api/v1/projects?limit=2&cursor={cursor}", headers=headers).json()
        seen += [p["id"] for p in page["items"]]
        cursor = page["next_cursor"]
    assert seen == made


@pytest.mark.parametrize("query", ["limit=0", "limit=-1", "limit=501", "limit=abc"])
def test_bad_limit_is_400_naming_limit(zt_client, zt_identity, query):
    user, _project = zt_identity.project_with("viewer")
    response = zt_client.get(f"/api/v1/projects?{query}", headers=zt_identity.headers(user))
    assert response.status_code == 400
    assert "limit" in fields(response)


def test_bad_cursor_is_400(zt_client, zt_identity):
    user, _project = zt_identity.project_with("viewer")
    response = zt_client.get("/api/v1/projects?cursor=%%%", headers=zt_identity.headers(user))
    assert response.status_code == 400
    assert "cursor" in fields(response)


def test_superuser_sees_every_project(zt_client, zt_identity, zt_admin_headers, two):
    listed = _ids(zt_client.get("/api/v1/projects", headers=zt_admin_headers))
    assert set(listed) == {two["pa"].id, two["pb"].id}
    assert (
        zt_client.get(f"/api/v1/projects/{two['pb'].id}", headers=zt_admin_headers).json()["role"]
        is None
    )


def test_listing_needs_credentials(zt_client):
    assert zt_client.get("/api/v1/projects").status_code == 401


# --------------------------------------------------------------------------- roles


def test_viewer_cannot_write_delete_or_manage(zt_client, zt_identity, zt_platform):
    viewer, project = zt_identity.project_with("viewer")
    other = zt_identity.user()
    headers = zt_identity.headers(viewer)
    base = f"/api/v1/projects/{project.id}"
    assert zt_client.get(base, headers=headers).status_code == 200
    assert zt_client.get(f"{base}/members", headers=headers).status_code == 200
    calls = [
        ("PATCH", base, {"name": "renamed"}),
        ("DELETE", base, None),
        ("POST", f"{base}/members", {"user_id": other.id, "role": "viewer"}),
        ("PATCH", f"{base}/members/{viewer.id}", {"role": "owner"}),
        ("DELETE", f"{base}/members/{viewer.id}", None),
    ]
    for method, url, body in calls:
        response = zt_client.request(method, url, json=body, headers=headers)
        assert response.status_code == 403, (method, url, response.text)
    with zt_platform.db.transaction() as session:
        assert session.get(Project, project.id).name == project.name
        assert (
            session.scalar(select(ProjectMember.role).where(ProjectMember.user_id == viewer.id))
            == 10
        )


def test_each_role_gets_what_it_holds(zt_client, zt_identity):
    expected = {  # role: (PATCH project, DELETE project)
        "developer": (403, 403),
        "maintainer": (200, 403),
        "admin": (200, 403),
        "owner": (200, 204),
    }
    for role, (patch_status, delete_status) in expected.items():
        user, project = zt_identity.project_with(role)
        headers = zt_identity.headers(user)
        url = f"/api/v1/projects/{project.id}"
        assert (
            zt_client.patch(url, json={"name": role}, headers=headers).status_code == patch_status
        )
        assert zt_client.delete(url, headers=headers).status_code == delete_status


def test_org_role_applies_to_all_its_projects(zt_client, zt_identity):
    dev = zt_identity.user()
    org = zt_identity.org("shop")
    projects = [zt_identity.project(org).id for _ in range(3)]
    zt_identity.project(zt_identity.org("elsewhere"))
    zt_identity.member(dev, org, "maintainer")
    headers = zt_identity.headers(dev)
    listed = zt_client.get("/api/v1/projects", headers=headers).json()["items"]
    assert sorted(p["id"] for p in listed) == sorted(projects)
    assert {p["role"] for p in listed} == {"maintainer"}
    for project_id in projects:
        response = zt_client.patch(
            f"/api/v1/projects/{project_id}", json={"description": "tuned"}, headers=headers
        )
        assert response.status_code == 200


def test_project_membership_lowers_the_org_role(zt_client, zt_identity):
    user = zt_identity.user()
    org = zt_identity.org("corp")
    restricted, normal = zt_identity.project(org), zt_identity.project(org)
    zt_identity.member(user, org, "admin")
    zt_identity.member(user, restricted, "viewer")
    headers = zt_identity.headers(user)
    denied = zt_client.patch(
        f"/api/v1/projects/{restricted.id}", json={"name": "x"}, headers=headers
    )
    assert denied.status_code == 403
    members = zt_client.post(
        f"/api/v1/projects/{restricted.id}/members",
        json={"user_id": zt_identity.user().id, "role": "viewer"},
        headers=headers,
    )
    assert members.status_code == 403
    assert (
        zt_client.get(f"/api/v1/projects/{restricted.id}", headers=headers).json()["role"]
        == "viewer"
    )
    ok = zt_client.patch(f"/api/v1/projects/{normal.id}", json={"name": "y"}, headers=headers)
    assert ok.status_code == 200


# --------------------------------------------------------------------------- API keys


def test_a_project_scoped_key_sees_only_its_project(zt_client, zt_identity):
    user = zt_identity.user()
    org = zt_identity.org("keyed", owner=user)
    project_a, project_b = zt_identity.project(org), zt_identity.project(org)
    key = zt_identity.api_key(user, project=project_a)
    headers = zt_identity.headers(key)
    assert _ids(zt_client.get("/api/v1/projects", headers=headers)) == [project_a.id]
    assert _ids(zt_client.get("/api/v1/projects?org=keyed", headers=headers)) == [project_a.id]
    assert zt_client.get(f"/api/v1/projects/{project_a.id}", headers=headers).status_code == 200
    for method, url, body in (
        ("GET", f"/api/v1/projects/{project_b.id}", None),
        ("PATCH", f"/api/v1/projects/{project_b.id}", {"name": "x"}),
        ("GET", f"/api/v1/projects/{project_b.id}/members", None),
        ("DELETE", f"/api/v1/projects/{project_b.id}", None),
    ):
        response = zt_client.request(method, url, json=body, headers=headers)
        assert response.status_code == 404, (method, url)
    # Creating a project is an org-scope action, which a project key does not hold.
    created = zt_client.post(
        "/api/v1/projects", json={"org": "keyed", "name": "via key"}, headers=headers
    )
    assert created.status_code == 404
    # The owner's own token still sees both.
    assert len(_ids(zt_client.get("/api/v1/projects", headers=zt_identity.headers(user)))) == 2


def test_a_read_only_key_cannot_change_the_project(zt_client, zt_identity, zt_platform):
    owner, project = zt_identity.project_with("owner")
    key = zt_identity.api_key(owner, permissions=["core.project.read"])
    headers = zt_identity.headers(key)
    url = f"/api/v1/projects/{project.id}"
    assert zt_client.get(url, headers=headers).status_code == 200
    assert _ids(zt_client.get("/api/v1/projects", headers=headers)) == [project.id]
    assert zt_client.patch(url, json={"name": "by key"}, headers=headers).status_code == 403
    assert zt_client.delete(url, headers=headers).status_code == 403
    with zt_platform.db.transaction() as session:
        assert session.get(Project, project.id).name == project.name


# --------------------------------------------------------------------------- change, delete


def test_patch_changes_name_slug_and_description(zt_client, zt_identity, zt_platform):
    owner, project = zt_identity.project_with("owner")
    sibling = zt_identity.project(_org_of(zt_platform, project), "taken")
    headers = zt_identity.headers(owner)
    url = f"/api/v1/projects/{project.id}"
    clash = zt_client.patch(url, json={"slug": sibling.slug}, headers=headers)
    assert clash.status_code == 409
    assert "slug" in fields(clash)
    bad = zt_client.patch(url, json={"slug": "Not OK"}, headers=headers)
    assert bad.status_code == 400
    assert "slug" in fields(bad)
    for body, field in (({"org_id": "x"}, "org_id"), ({"name": ""}, "name")):
        response = zt_client.patch(url, json=body, headers=headers)
        assert response.status_code == 400
        assert field in fields(response)
    ok = zt_client.patch(
        url, json={"name": "New Name", "slug": "new-slug", "description": "d"}, headers=headers
    )
    assert ok.status_code == 200
    assert (ok.json()["name"], ok.json()["slug"], ok.json()["description"]) == (
        "New Name",
        "new-slug",
        "d",
    )
    rows = audit_events(zt_platform, "project.update", target_id=project.id, outcome="success")
    assert set(rows[-1].detail["changes"]) == {"name", "slug", "description"}
    assert rows[-1].project_id == project.id


def _org_of(platform, project):
    with platform.db.transaction() as session:
        org = session.get(Organization, project.org_id)
        session.expunge(org)
        return org


def test_deleting_a_project_removes_it_and_its_memberships(zt_client, zt_identity, zt_platform):
    owner, project = zt_identity.project_with("owner")
    helper = zt_identity.user()
    zt_identity.member(helper, project, "developer")
    response = zt_client.delete(
        f"/api/v1/projects/{project.id}", headers=zt_identity.headers(owner)
    )
    assert response.status_code == 204
    with zt_platform.db.transaction() as session:
        assert session.get(Project, project.id) is None
        assert session.scalar(select(ProjectMember.id)) is None
    assert (
        zt_client.get(
            f"/api/v1/projects/{project.id}", headers=zt_identity.headers(owner)
        ).status_code
        == 404
    )
    assert audit_events(zt_platform, "project.delete", target_id=project.id, outcome="success")


# --------------------------------------------------------------------------- members


@pytest.fixture
def crew(zt_identity):
    """Org ``crew-org`` (owner ``boss``, developer ``dev``) with project ``ship``.

    ``lead`` is an explicit project admin, ``deck`` an explicit project viewer.
    """
    boss, dev, lead, deck, newcomer = (zt_identity.user() for _ in range(5))
    org = zt_identity.org("crew-org", owner=boss)
    zt_identity.member(dev, org, "developer")
    ship = zt_identity.project(org, "ship")
    zt_identity.member(lead, ship, "admin")
    zt_identity.member(deck, ship, "viewer")
    return {
        "org": org,
        "ship": ship,
        "boss": boss,
        "dev": dev,
        "lead": lead,
        "deck": deck,
        "newcomer": newcomer,
    }


def test_members_list_shows_explicit_and_inherited(zt_client, zt_identity, crew):
    url = f"/api/v1/projects/{crew['ship'].id}/members"
    body = zt_client.get(url, headers=zt_identity.headers(crew["deck"])).json()
    by_user = {m["user"]["id"]: m for m in body["items"]}
    assert set(by_user) == {crew[k].id for k in ("boss", "dev", "lead", "deck")}
    assert by_user[crew["boss"].id]["role"] == "owner"
    assert by_user[crew["boss"].id]["inherited"] is True
    assert by_user[crew["lead"].id]["role"] == "admin"
    assert by_user[crew["lead"].id]["inherited"] is False
    assert by_user[crew["dev"].id]["org_role"] == "developer"
    explicit = zt_client.get(f"{url}?inherited=false", headers=zt_identity.headers(crew["deck"]))
    assert {m["user"]["id"] for m in explicit.json()["items"]} == {crew["lead"].id, crew["deck"].id}
    paged = zt_client.get(f"{url}?limit=3", headers=zt_identity.headers(crew["deck"])).json()
    assert len(paged["items"]) == 3 and paged["next_cursor"]


def test_project_admin_adds_and_changes_members(zt_client, zt_identity, zt_platform, crew):
    headers = zt_identity.headers(crew["lead"])
    url = f"/api/v1/projects/{crew['ship'].id}/members"
    added = zt_client.post(
        url, json={"email": crew["newcomer"].email, "role": "developer"}, headers=headers
    )
    assert added.status_code == 201
    assert added.json()["role"] == "developer"
    assert added.json()["inherited"] is False
    # The newcomer now sees the project (and only it).
    listed = zt_client.get("/api/v1/projects", headers=zt_identity.headers(crew["newcomer"]))
    assert _ids(listed) == [crew["ship"].id]

    changed = zt_client.patch(
        f"{url}/{crew['newcomer'].id}", json={"role": "maintainer"}, headers=headers
    )
    assert changed.status_code == 200
    assert changed.json()["role"] == "maintainer"
    rows = audit_events(zt_platform, "project.member.update", target_id=crew["newcomer"].id)
    assert len(rows) == 1
    assert rows[0].outcome == "success"
    assert rows[0].project_id == crew["ship"].id
    assert rows[0].actor_user_id == crew["lead"].id
    assert (rows[0].detail["old_role"], rows[0].detail["new_role"]) == ("developer", "maintainer")

    removed = zt_client.delete(f"{url}/{crew['newcomer'].id}", headers=headers)
    assert removed.status_code == 204
    gone = zt_client.get(
        f"/api/v1/projects/{crew['ship'].id}", headers=zt_identity.headers(crew["newcomer"])
    )
    assert gone.status_code == 404
    assert audit_events(zt_platform, "project.member.add", target_id=crew["newcomer"].id)
    assert audit_events(zt_platform, "project.member.remove", target_id=crew["newcomer"].id)


def test_no_granting_above_your_own_role(zt_client, zt_identity, zt_platform, crew):
    headers = zt_identity.headers(crew["lead"])  # project admin
    url = f"/api/v1/projects/{crew['ship'].id}/members"
    owner = zt_client.post(
        url, json={"user_id": crew["newcomer"].id, "role": "owner"}, headers=headers
    )
    assert owner.status_code == 403
    assert "role" in fields(owner)
    self_promote = zt_client.patch(
        f"{url}/{crew['lead'].id}", json={"role": "owner"}, headers=headers
    )
    assert self_promote.status_code == 403
    # Nor lowering the org owner inside the project through an explicit membership.
    demote_boss = zt_client.post(
        url, json={"user_id": crew["boss"].id, "role": "viewer"}, headers=headers
    )
    assert demote_boss.status_code == 403
    with zt_platform.db.transaction() as session:
        explicit = dict(
            session.execute(
                select(ProjectMember.user_id, ProjectMember.role).where(
                    ProjectMember.project_id == crew["ship"].id
                )
            ).all()
        )
    assert explicit == {crew["lead"].id: 40, crew["deck"].id: 10}
    # The org owner (and a superuser) may grant owner.
    by_boss = zt_client.post(
        url,
        json={"user_id": crew["newcomer"].id, "role": "owner"},
        headers=zt_identity.headers(crew["boss"]),
    )
    assert by_boss.status_code == 201


def test_inherited_member_gets_an_explicit_role_by_adding(zt_client, zt_identity, crew):
    url = f"/api/v1/projects/{crew['ship'].id}/members"
    headers = zt_identity.headers(crew["boss"])
    not_explicit = zt_client.patch(
        f"{url}/{crew['dev'].id}", json={"role": "viewer"}, headers=headers
    )
    assert not_explicit.status_code == 404
    assert "user_id" in fields(not_explicit)
    added = zt_client.post(url, json={"user_id": crew["dev"].id, "role": "viewer"}, headers=headers)
    assert added.status_code == 201
    assert (added.json()["role"], added.json()["org_role"]) == ("viewer", "developer")
    dev_headers = zt_identity.headers(crew["dev"])
    denied = zt_client.patch(
        f"/api/v1/projects/{crew['ship'].id}", json={"name": "x"}, headers=dev_headers
    )
    assert denied.status_code == 403


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"user_id": "ghost", "role": "viewer"}, 404, "user_id"),
        ({"email": "ghost@example.com", "role": "viewer"}, 404, "email"),
        ({"role": "viewer"}, 400, "user_id"),
        ({"email": "x@example.com", "role": "captain"}, 400, "role"),
        ({"email": "x@example.com", "role": "viewer", "project_id": "x"}, 400, "project_id"),
    ],
)
def test_bad_project_member_input(zt_client, zt_identity, crew, body, status, field):
    response = zt_client.post(
        f"/api/v1/projects/{crew['ship'].id}/members",
        json=body,
        headers=zt_identity.headers(crew["boss"]),
    )
    assert response.status_code == status, response.text
    assert field in fields(response)


def test_duplicate_project_membership_is_409(zt_client, zt_identity, crew):
    response = zt_client.post(
        f"/api/v1/projects/{crew['ship'].id}/members",
        json={"user_id": crew["deck"].id, "role": "developer"},
        headers=zt_identity.headers(crew["boss"]),
    )
    assert response.status_code == 409
    assert "user_id" in fields(response)


def test_member_routes_use_the_projects_own_membership(zt_client, zt_identity, zt_platform, crew):
    """A manager of project A cannot reach a membership of project B through A's path."""
    other = zt_identity.project(crew["org"], "other")
    stranger = zt_identity.user()
    zt_identity.member(stranger, other, "viewer")
    headers = zt_identity.headers(crew["lead"])  # admin of ship only
    url = f"/api/v1/projects/{crew['ship'].id}/members/{stranger.id}"
    assert zt_client.patch(url, json={"role": "admin"}, headers=headers).status_code == 404
    assert zt_client.delete(url, headers=headers).status_code == 404
    with zt_platform.db.transaction() as session:
        assert (
            session.scalar(select(ProjectMember.role).where(ProjectMember.user_id == stranger.id))
            == 10
        )
    # And the lead has no say in the org's memberships.
    org_member = zt_client.patch(
        f"/api/v1/orgs/crew-org/members/{crew['dev'].id}", json={"role": "viewer"}, headers=headers
    )
    assert org_member.status_code == 404
    with zt_platform.db.transaction() as session:
        assert (
            session.scalar(select(OrgMember.role).where(OrgMember.user_id == crew["dev"].id)) == 20
        )
