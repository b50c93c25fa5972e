"""Access control: effective roles, the list filter, single-object guards, the registry.

Every test builds its users, organizations, projects and memberships directly with
the models, on SQLite or (with ZHONGTAI_TEST_DATABASE_URL) PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, func, insert, select

from zhongtai.identity.access import (
    Forbidden,
    NotFound,
    has_permission,
    org_role,
    project_role,
    require,
    visible_project_ids,
)
from zhongtai.identity.models import Organization, OrgMember, Project, ProjectMember, User
from zhongtai.identity.permissions import (
    APIKEY_CREATE,
    AUDIT_READ,
    CORE_PERMISSIONS,
    ORG_WRITE,
    PROJECT_READ,
    PROJECT_WRITE,
    USERS_MANAGE,
    build_registry,
)
from zhongtai.identity.principal import Principal
from zhongtai.identity.roles import Permission, Role
from zhongtai.metadata.ids import new_id
from zhongtai.platform import Platform

_counter = itertools.count()


@dataclasses.dataclass
class World:
    """Two organizations: org1 with projects a, b, c; org2 with project d."""

    org1: str
    org2: str
    a: str
    b: str
    c: str
    d: str

    @property
    def org1_projects(self) -> set[str]:
        return {self.a, self.b, self.c}

    @property
    def all_projects(self) -> set[str]:
        return {self.a, self.b, self.c, self.d}


def make_user(platform: Platform, *, superuser: bool = False, active: bool = True) -> str:
    with platform.db.transaction() as session:
        user = User(
            email=f"user{next(_counter)}@example.com", is_superuser=superuser, is_active=active
        )
        session.add(user)
        session.flush()
        return user.id


def join_org(platform: Platform, user_id: str, org_id: str, role: Role) -> None:
    with platform.db.transaction() as session:
        session.add(OrgMember(org_id=org_id, user_id=user_id, role=int(role)))


def join_project(platform: Platform, user_id: str, project_id: str, role: Role) -> None:
    with platform.db.transaction() as session:
        session.add(ProjectMember(project_id=project_id, user_id=user_id, role=int(role)))


def principal(user_id: str, **kwargs: Any) -> Principal:
    return Principal(user_id=user_id, **kwargs)


@pytest.fixture
def world(zt_platform: Platform) -> World:
    with zt_platform.db.transaction() as session:
        org1 = Organization(slug="one", name="One")
        org2 = Organization(slug="two", name="Two")
        session.add_all([org1, org2])
        session.flush()
        projects = [
            Project(org_id=org1.id, slug=slug, name=slug.upper()) for slug in ("a", "b", "c")
        ]
        projects.append(Project(org_id=org2.id, slug="d", name="D"))
        session.add_all(projects)
        session.flush()
        return World(org1.id, org2.id, *(p.id for p in projects))


def visible(platform: Platform, who: Principal, permission: Permission) -> set[str]:
    with platform.db.transaction() as session:
        # Used the way a plugin's list endpoint uses it: inside IN (...).
        stmt = select(Project.id).where(Project.id.in_(visible_project_ids(who, permission)))
        return set(session.scalars(stmt))


# --- effective roles ---------------------------------------------------------------


def test_org_role_applies_to_every_project_of_the_org(zt_platform: Platform, world: World) -> None:
    user = make_user(zt_platform)
    join_org(zt_platform, user, world.org1, Role.developer)
    with zt_platform.db.transaction() as session:
        assert org_role(session, user, world.org1) is Role.developer
        assert org_role(session, user, world.org2) is None
        for project in world.org1_projects:
            assert project_role(session, user, project) is Role.developer
        assert project_role(session, user, world.d) is None


def test_project_membership_overrides_org_role_both_ways(
    zt_platform: Platform, world: World
) -> None:
    user = make_user(zt_platform)
    join_org(zt_platform, user, world.org1, Role.maintainer)
    join_project(zt_platform, user, world.a, Role.viewer)  # lower
    join_project(zt_platform, user, world.b, Role.owner)  # higher
    with zt_platform.db.transaction() as session:
        assert project_role(session, user, world.a) is Role.viewer
        assert project_role(session, user, world.b) is Role.owner
        assert project_role(session, user, world.c) is Role.maintainer
    assert visible(zt_platform, principal(user), PROJECT_WRITE) == {world.b, world.c}


def test_no_membership_no_role(zt_platform: Platform, world: World) -> None:
    user = make_user(zt_platform)
    with zt_platform.db.transaction() as session:
        assert all(project_role(session, user, p) is None for p in world.all_projects)
        assert project_role(session, user, "no-such-project") is None
        assert org_role(session, user, world.org1) is None
    assert visible(zt_platform, principal(user), PROJECT_READ) == set()


def test_other_orgs_projects_are_invisible(zt_platform: Platform, world: World) -> None:
    user = make_user(zt_platform)
    join_org(zt_platform, user, world.org1, Role.owner)
    assert visible(zt_platform, principal(user), PROJECT_READ) == world.org1_projects
    with zt_platform.db.transaction() as session, pytest.raises(NotFound):
        require(session, principal(user), PROJECT_READ, project_id=world.d)


# --- the list filter, role by role --------------------------------------------------


@pytest.mark.parametrize("min_role", list(Role), ids=lambda r: f"needs-{r.name}")
@pytest.mark.parametrize("role", list(Role), ids=lambda r: f"is-{r.name}")
def test_visible_projects_per_role(
    zt_platform: Platform, world: World, role: Role, min_role: Role
) -> None:
    permission = Permission("test.thing.act", "a test permission", min_role)
    by_org = make_user(zt_platform)
    join_org(zt_platform, by_org, world.org1, role)
    by_project = make_user(zt_platform)
    join_project(zt_platform, by_project, world.a, role)

    holds = role >= min_role
    assert visible(zt_platform, principal(by_org), permission) == (
        world.org1_projects if holds else set()
    )
    assert visible(zt_platform, principal(by_project), permission) == (
        {world.a} if holds else set()
    )
    # The single-object check follows the same rules as the list filter.
    with zt_platform.db.transaction() as session:
        for user, seen in ((by_org, world.org1_projects), (by_project, {world.a})):
            for project in world.all_projects:
                expected = holds and project in seen
                assert (
                    has_permission(session, principal(user), permission, project_id=project)
                    is expected
                )


def test_superuser_sees_every_project(zt_platform: Platform, world: World) -> None:
    admin = make_user(zt_platform, superuser=True)
    who = principal(admin, is_superuser=True)
    assert visible(zt_platform, who, PROJECT_WRITE) == world.all_projects
    assert visible(zt_platform, who, USERS_MANAGE) == world.all_projects
    with zt_platform.db.transaction() as session:
        require(session, who, PROJECT_WRITE, project_id=world.d)
        require(session, who, USERS_MANAGE)


def test_inactive_user_sees_nothing(zt_platform: Platform, world: World) -> None:
    user = make_user(zt_platform, active=False)
    join_org(zt_platform, user, world.org1, Role.owner)
    admin = make_user(zt_platform, superuser=True, active=False)
    for who in (principal(user), principal(admin, is_superuser=True)):
        assert visible(zt_platform, who, PROJECT_READ) == set()
        with zt_platform.db.transaction() as session:
            assert not has_permission(session, who, PROJECT_READ, project_id=world.a)
            with pytest.raises(NotFound):
                require(session, who, PROJECT_READ, project_id=world.a)
    with zt_platform.db.transaction() as session:
        assert not has_permission(session, principal(admin, is_superuser=True), USERS_MANAGE)


def test_key_scoped_to_one_project(zt_platform: Platform, world: World) -> None:
    user = make_user(zt_platform)
    join_org(zt_platform, user, world.org1, Role.owner)
    key = principal(user, api_key_id="k1", key_project_id=world.a)
    assert visible(zt_platform, key, PROJECT_WRITE) == {world.a}
    # A key for a project its owner cannot see grants nothing there.
    stray = principal(user, api_key_id="k2", key_project_id=world.d)
    assert visible(zt_platform, stray, PROJECT_READ) == set()
    with zt_platform.db.transaction() as session:
        require(session, key, PROJECT_WRITE, project_id=world.a)
        with pytest.raises(NotFound):  # a key for A must not learn that B exists
            require(session, key, PROJECT_READ, project_id=world.b)
        # A project key holds no organization-wide permission.
        assert not has_permission(session, key, ORG_WRITE, org_id=world.org1)


def test_key_with_permission_subset(zt_platform: Platform, world: World) -> None:
    user = make_user(zt_platform)
    join_org(zt_platform, user, world.org1, Role.owner)
    key = principal(user, api_key_id="k1", key_permissions=frozenset({PROJECT_READ.name}))
    assert visible(zt_platform, key, PROJECT_READ) == world.org1_projects
    assert visible(zt_platform, key, PROJECT_WRITE) == set()
    with zt_platform.db.transaction() as session:
        assert not has_permission(session, key, PROJECT_WRITE, project_id=world.a)
        # The owner can see the project, so the excluded permission is 403, not 404.
        with pytest.raises(Forbidden):
            require(session, key, PROJECT_WRITE, project_id=world.a)


# --- require -------------------------------------------------------------------------


def test_require_other_project_is_not_found(zt_platform: Platform, world: World) -> None:
    user = make_user(zt_platform)
    join_project(zt_platform, user, world.a, Role.owner)
    with zt_platform.db.transaction() as session:
        require(session, principal(user), PROJECT_WRITE, project_id=world.a)
        for other in (world.b, world.d, "no-such-project"):
            with pytest.raises(NotFound):
                require(session, principal(user), PROJECT_WRITE, project_id=other)


def test_require_viewer_writing_is_forbidden(zt_platform: Platform, world: World) -> None:
    user = make_user(zt_platform)
    join_project(zt_platform, user, world.a, Role.viewer)
    with zt_platform.db.transaction() as session:
        require(session, principal(user), PROJECT_READ, project_id=world.a)
        with pytest.raises(Forbidden):
            require(session, principal(user), PROJECT_WRITE, project_id=world.a)


@pytest.mark.parametrize(
    ("role", "allowed"),
    [(Role.viewer, False), (Role.developer, True), (Role.owner, True)],
)
def test_require_key_creation(
    zt_platform: Platform, world: World, role: Role, allowed: bool
) -> None:
    user = make_user(zt_platform)
    join_project(zt_platform, user, world.a, role)
    with zt_platform.db.transaction() as session:
        if allowed:
            require(session, principal(user), APIKEY_CREATE, project_id=world.a)
        else:
            with pytest.raises(Forbidden):
                require(session, principal(user), APIKEY_CREATE, project_id=world.a)


def test_require_site_permission_needs_superuser(zt_platform: Platform, world: World) -> None:
    user = make_user(zt_platform)
    join_org(zt_platform, user, world.org1, Role.owner)
    with zt_platform.db.transaction() as session, pytest.raises(Forbidden):
        require(session, principal(user), USERS_MANAGE)
    assert visible(zt_platform, principal(user), USERS_MANAGE) == set()


def test_require_org_scope(zt_platform: Platform, world: World) -> None:
    admin = make_user(zt_platform)
    join_org(zt_platform, admin, world.org1, Role.admin)
    viewer = make_user(zt_platform)
    join_org(zt_platform, viewer, world.org1, Role.viewer)
    with zt_platform.db.transaction() as session:
        require(session, principal(admin), ORG_WRITE, org_id=world.org1)
        with pytest.raises(Forbidden):  # audit needs an owner
            require(session, principal(admin), AUDIT_READ, org_id=world.org1)
        with pytest.raises(Forbidden):
            require(session, principal(viewer), ORG_WRITE, org_id=world.org1)
        with pytest.raises(NotFound):
            require(session, principal(admin), ORG_WRITE, org_id=world.org2)
        with pytest.raises(ValueError, match="org_id"):
            require(session, principal(admin), ORG_WRITE, project_id=world.a)
    # Organization-scope permissions in lists: the org role alone decides.
    assert visible(zt_platform, principal(admin), ORG_WRITE) == world.org1_projects
    assert visible(zt_platform, principal(viewer), ORG_WRITE) == set()


# --- scale -------------------------------------------------------------------------


@contextmanager
def count_statements(platform: Platform) -> Iterator[list[str]]:
    """Record every SQL statement the engine sends while the block runs."""
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(platform.db.engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(platform.db.engine, "before_cursor_execute", record)


def test_visible_projects_at_scale(zt_platform: Platform) -> None:
    """10,000 projects, 100 visible (60 through one org, 40 by project): one statement."""
    user = make_user(zt_platform)
    member_org, big_org = new_id(), new_id()
    member_projects = [new_id() for _ in range(60)]
    big_projects = [new_id() for _ in range(10_000 - 60)]
    with zt_platform.db.transaction() as session:
        session.execute(
            insert(Organization),
            [
                {"id": member_org, "slug": "member", "name": "M"},
                {"id": big_org, "slug": "big", "name": "B"},
            ],
        )
        rows = [
            {"id": p, "org_id": member_org, "slug": f"m{i}", "name": "m"}
            for i, p in enumerate(member_projects)
        ]
        rows += [
            {"id": p, "org_id": big_org, "slug": f"b{i}", "name": "b"}
            for i, p in enumerate(big_projects)
        ]
        session.execute(insert(Project), rows)
        session.execute(
            insert(OrgMember),
            [{"id": new_id(), "org_id": member_org, "user_id": user, "role": int(Role.viewer)}],
        )
        session.execute(
            insert(ProjectMember),
            [
                {"id": new_id(), "project_id": p, "user_id": user, "role": int(Role.developer)}
                for p in big_projects[::247][:40]
            ],
        )
        # Other users' memberships in the same tables must not leak in.
        other = User(id=new_id(), email="other@example.com")
        session.add(other)
        session.flush()
        session.execute(
            insert(ProjectMember),
            [
                {"id": new_id(), "project_id": p, "user_id": other.id, "role": int(Role.owner)}
                for p in big_projects[:500]
            ],
        )

    who = principal(user)
    with zt_platform.db.transaction() as session:
        session.scalar(select(func.count()).select_from(Project))  # warm the connection
        with count_statements(zt_platform) as statements:
            started = time.perf_counter()
            count = session.scalar(
                select(func.count())
                .select_from(Project)
                .where(Project.id.in_(visible_project_ids(who, PROJECT_READ)))
            )
            elapsed = time.perf_counter() - started
    assert count == 100
    assert len(statements) == 1
    if zt_platform.db.dialect == "sqlite":
        assert elapsed < 1.0, f"{elapsed:.3f}s"
    # Developer-level permissions reach only the 40 project memberships.
    with zt_platform.db.transaction() as session:
        developer = Permission("test.thing.act", "a test permission", Role.developer)
        count = session.scalar(
            select(func.count())
            .select_from(Project)
            .where(Project.id.in_(visible_project_ids(who, developer)))
        )
    assert count == 40


# --- the registry ------------------------------------------------------------------


def test_registry_holds_core_and_plugin_permissions() -> None:
    dataset_read = Permission("data.dataset.read", "Read datasets")
    registry = build_registry([("data", [dataset_read])])
    assert registry.get("data.dataset.read") == dataset_read
    assert all(p.name in registry for p in CORE_PERMISSIONS)
    assert all(p.description for p in CORE_PERMISSIONS)
    assert registry.get("core.apikey.create").min_role is Role.developer


@pytest.mark.parametrize("name", ["other.dataset.read", "core.project.read", "dataset.read"])
def test_registry_refuses_permission_outside_plugin_prefix(name: str) -> None:
    with pytest.raises(ValueError, match=r"must start with 'data\.'"):
        build_registry([("data", [Permission(name, "x")])])


def test_registry_refuses_plugin_named_core() -> None:
    with pytest.raises(ValueError, match="must start with"):
        build_registry([("core", [Permission("core.sneaky.thing", "x")])])


def test_registry_refuses_duplicates() -> None:
    read = Permission("data.dataset.read", "Read datasets")
    with pytest.raises(ValueError, match="already declared"):
        build_registry([("data", [read, read])])
    with pytest.raises(ValueError, match="already declared by core"):
        build_registry([("jobs", [Permission("jobs.submit", "x")])])
