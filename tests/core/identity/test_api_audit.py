"""The audit log API: who may read it, filters, newest-first pages, JSON-lines export.

Also that plugins' mutations are audited without any audit code of their own, and
that no route changes or deletes a row.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar import post
from sqlalchemy import event, func, select

import zhongtai
from zhongtai.identity import audit
from zhongtai.identity.api import audit as audit_api
from zhongtai.identity.guard import AccessDep, iter_route_handlers, requires
from zhongtai.identity.models import AuditEvent
from zhongtai.identity.roles import Permission, Role
from zhongtai.web.params import PlatformDep

AUDIT = "/api/v1/audit"
EXPORT = "/api/v1/audit/export"
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def add_row(platform: Any, action: str = "thing.do", **fields: Any) -> str:
    """Append one audit row the way the application does; returns its id."""
    with platform.db.transaction() as session:
        row = audit.record(session, action=action, **fields)
        session.flush()
        row_id = row.id
    time.sleep(0.002)  # ids sort by millisecond: keep the rows in a known order
    return row_id


def ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


class World:
    """alice owns org1 (project p1), bob owns org2 (project p2); one row each place."""

    def __init__(self, identity: Any, platform: Any) -> None:
        self.alice = identity.user()
        self.bob = identity.user()
        self.org1 = identity.org(owner=self.alice)
        self.org2 = identity.org(owner=self.bob)
        self.p1 = identity.project(self.org1)
        self.p2 = identity.project(self.org2)
        self.row_org1 = add_row(platform, "org.update", org_id=self.org1.id)
        self.row_p1 = add_row(platform, "project.update", project_id=self.p1.id)
        self.row_org2 = add_row(platform, "org.update", org_id=self.org2.id)
        self.row_p2 = add_row(platform, "project.update", project_id=self.p2.id)
        self.row_site = add_row(platform, "auth.login", actor_user_id=self.alice.id)


@pytest.fixture
def world(zt_identity: Any, zt_platform: Any) -> World:
    return World(zt_identity, zt_platform)


# --------------------------------------------------------------------------- access


def test_superuser_sees_every_row(zt_client, zt_identity, world):
    admin = zt_identity.user(superuser=True)
    got = ids(zt_client.get(AUDIT, headers=zt_identity.headers(admin)))
    assert set(got) == {
        world.row_org1,
        world.row_p1,
        world.row_org2,
        world.row_p2,
        world.row_site,
    }


def test_org_owner_sees_their_org_and_its_projects_only(zt_client, zt_identity, world):
    alice = ids(zt_client.get(AUDIT, headers=zt_identity.headers(world.alice)))
    assert set(alice) == {world.row_org1, world.row_p1}
    bob = ids(zt_client.get(AUDIT, headers=zt_identity.headers(world.bob)))
    assert set(bob) == {world.row_org2, world.row_p2}
    # Asking for the other organization's rows by filter shows nothing of them.
    other = zt_client.get(f"{AUDIT}?org={world.org2.id}", headers=zt_identity.headers(world.alice))
    assert ids(other) == []
    other = zt_client.get(
        f"{AUDIT}?project={world.p2.id}", headers=zt_identity.headers(world.alice)
    )
    assert ids(other) == []


@pytest.mark.parametrize("role", ["viewer", "developer", "maintainer", "admin"])
def test_other_org_roles_are_forbidden(zt_client, zt_identity, world, role):
    user = zt_identity.user()
    zt_identity.member(user, world.org1, role)
    for url in (AUDIT, EXPORT):
        response = zt_client.get(url, headers=zt_identity.headers(user))
        assert response.status_code == 403
        assert world.row_org1 not in response.text


def test_project_owner_without_org_ownership_is_forbidden(zt_client, zt_identity, world):
    user, _ = zt_identity.project_with("owner")
    assert zt_client.get(AUDIT, headers=zt_identity.headers(user)).status_code == 403


def test_unauthenticated_is_401(zt_client):
    assert zt_client.get(AUDIT).status_code == 401
    assert zt_client.get(EXPORT).status_code == 401


def test_api_keys_are_narrowed(zt_client, zt_identity, world):
    unscoped = zt_identity.api_key(world.alice)
    assert set(ids(zt_client.get(AUDIT, headers=zt_identity.headers(unscoped)))) == {
        world.row_org1,
        world.row_p1,
    }
    scoped = zt_identity.api_key(world.alice, project=world.p1)
    assert zt_client.get(AUDIT, headers=zt_identity.headers(scoped)).status_code == 403
    narrowed = zt_identity.api_key(world.alice, permissions=["core.project.read"])
    assert zt_client.get(AUDIT, headers=zt_identity.headers(narrowed)).status_code == 403
    allowed = zt_identity.api_key(world.alice, permissions=["core.audit.read"])
    assert zt_client.get(AUDIT, headers=zt_identity.headers(allowed)).status_code == 200


# --------------------------------------------------------------------------- filters and pages


def test_filters(zt_client, zt_identity, zt_platform):
    admin = zt_identity.user(superuser=True)
    headers = zt_identity.headers(admin)
    a = add_row(
        zt_platform,
        "apikey.create",
        actor_user_id="u1",
        target_kind="api_key",
        target_id="k1",
        project_id="p1",
        occurred_at=T0,
    )
    b = add_row(
        zt_platform,
        "apikey.revoke",
        actor_user_id="u2",
        target_kind="api_key",
        target_id="k2",
        org_id="o1",
        outcome="denied",
        occurred_at=T0 + timedelta(days=1),
    )
    c = add_row(
        zt_platform,
        "apikeyish",
        actor_user_id="u1",
        target_kind="thing",
        outcome="failure",
        occurred_at=T0 + timedelta(days=2),
    )

    def get(query: str) -> set[str]:
        return set(ids(zt_client.get(f"{AUDIT}?{query}", headers=headers)))

    assert get("actor=u1") == {a, c}
    assert get("action=apikey.create") == {a}
    assert get("action=apikey.*") == {a, b}  # a prefix, "apikeyish" is not apikey.*
    assert get("action=apikey*") == {a, b, c}
    assert get("action=apikey") == set()  # exact without the star
    assert get("target_kind=api_key") == {a, b}
    assert get("target_kind=api_key&target_id=k2") == {b}
    assert get("project=p1") == {a}
    assert get("org=o1") == {b}
    assert get("outcome=denied") == {b}
    assert get("outcome=success") == {a}
    assert get("since=2024-01-02T00:00:00Z") == {b, c}
    assert get("until=2024-01-02T00:00:00%2B00:00") == {a}  # until is exclusive
    assert get("since=2024-01-01T12:00:00&until=2024-01-02T12:00:00") == {b}  # naive: UTC
    assert get("since=2024-01-02T08:00:00%2B08:00&until=2024-01-02T08:00:01%2B08:00") == {b}
    assert get("actor=u1&outcome=failure&target_kind=thing") == {c}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("since=yesterday", "since"),
        ("until=2024-13-01", "until"),
        ("since=2024-01-02T00:00:00Z&until=2024-01-01T00:00:00Z", "until"),
        ("outcome=maybe", "outcome"),
        ("action=api*key", "action"),
        ("limit=0", "limit"),
        ("limit=100000", "limit"),
        ("cursor=***", "cursor"),
        ("actor=" + "x" * 500, "actor"),
    ],
)
def test_bad_filters_are_400_naming_the_field(zt_client, zt_identity, query, field):
    headers = zt_identity.headers(zt_identity.user(superuser=True))
    for url in (AUDIT, EXPORT):
        if url == EXPORT and field in ("limit", "cursor"):
            continue
        response = zt_client.get(f"{url}?{query}", headers=headers)
        assert response.status_code == 400, (url, response.text)
        assert field in {e["field"] for e in response.json()["errors"]}


def test_pages_are_newest_first_with_a_cursor(zt_client, zt_identity, zt_platform):
    headers = zt_identity.headers(zt_identity.user(superuser=True))
    made = [add_row(zt_platform, f"step.{i}") for i in range(7)]
    seen: list[str] = []
    cursor = None
    while True:
        url = f"{AUDIT}?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = zt_client.get(url, headers=headers).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == made[::-1]
    item = zt_client.get(f"{AUDIT}?limit=1", headers=headers).json()["items"][0]
    assert set(item) == {
        "id",
        "occurred_at",
        "actor_user_id",
        "actor_key_id",
        "action",
        "target_kind",
        "target_id",
        "project_id",
        "org_id",
        "client_addr",
        "outcome",
        "detail",
    }
    assert item["action"] == "step.6"


# --------------------------------------------------------------------------- export


def test_export_streams_json_lines_in_batches(zt_client, zt_identity, zt_platform, monkeypatch):
    monkeypatch.setattr(audit_api, "EXPORT_BATCH", 3)
    headers = zt_identity.headers(zt_identity.user(superuser=True))
    made = [add_row(zt_platform, "bulk.row", target_id=str(i)) for i in range(10)]
    add_row(zt_platform, "other.row")
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM audit_events" in statement:
            statements.append(statement)

    event.listen(zt_platform.db.engine, "before_cursor_execute", count)
    try:
        response = zt_client.get(f"{EXPORT}?action=bulk.*", headers=headers)
    finally:
        event.remove(zt_platform.db.engine, "before_cursor_execute", count)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert response.headers["content-disposition"] == "attachment; filename=audit.jsonl"
    lines = response.text.splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["id"] for r in rows] == made[::-1]
    assert {r["action"] for r in rows} == {"bulk.row"}
    # Four batches of at most three rows, each its own bounded query.
    assert len(statements) == 4
    assert all("LIMIT" in s.upper() for s in statements)


def test_export_follows_the_callers_visibility(zt_client, zt_identity, world):
    response = zt_client.get(EXPORT, headers=zt_identity.headers(world.alice))
    assert response.status_code == 200
    got = {json.loads(line)["id"] for line in response.text.splitlines()}
    assert got == {world.row_org1, world.row_p1}


def test_export_of_nothing_is_empty(zt_client, zt_identity):
    headers = zt_identity.headers(zt_identity.user(superuser=True))
    response = zt_client.get(f"{EXPORT}?action=none.such", headers=headers)
    assert response.status_code == 200 and response.text == ""


# --------------------------------------------------------------------------- append-only


def test_no_route_changes_or_deletes_audit_rows(zt_app, zt_client, zt_identity, zt_platform):
    methods = {
        method
        for method, path, _handler in iter_route_handlers(zt_app)
        if path == AUDIT or path.startswith(f"{AUDIT}/")
    }
    assert methods and methods <= {"GET", "HEAD", "OPTIONS"}
    row = add_row(zt_platform, "keep.me")
    headers = zt_identity.headers(zt_identity.user(superuser=True))
    for method in ("PUT", "PATCH", "DELETE", "POST"):
        for url in (AUDIT, f"{AUDIT}/{row}"):
            response = zt_client.request(method, url, headers=headers, json={})
            assert response.status_code in (404, 405), (method, url)
    with zt_platform.db.transaction() as session:
        kept = session.get(AuditEvent, row)
        assert kept is not None and kept.action == "keep.me"


# --------------------------------------------------------------------------- plugins


THING_WRITE = Permission("auditdemo.thing.write", "Make a demo thing", Role.developer)


@post("/things", sync_to_thread=True, opt=requires(THING_WRITE))
def make_thing(platform: PlatformDep, access: AccessDep, data: dict[str, Any]) -> dict[str, Any]:
    """A plugin route with no audit code at all."""
    with platform.db.transaction() as session:
        access.require(session, project_id=str(data.get("project")))
    return {"made": True}


class AuditDemo:
    @zhongtai.hookimpl
    def register_permissions(self) -> list[Permission]:
        return [THING_WRITE]

    @zhongtai.hookimpl
    def register_routes(self) -> list[Any]:
        return [make_thing]


def test_plugin_mutations_are_audited_without_plugin_code(
    zt_register_plugin, zt_client_factory, zt_identity_for
):
    zt_register_plugin(AuditDemo(), name="auditdemo")
    with zt_client_factory() as client:
        identity = zt_identity_for(client)
        developer, project = identity.project_with("developer")
        viewer = identity.user()
        identity.member(viewer, project, "viewer")
        url = "/api/v1/auditdemo/things"
        ok = client.post(url, json={"project": project.id}, headers=identity.headers(developer))
        assert ok.status_code == 201, ok.text
        denied = client.post(url, json={"project": project.id}, headers=identity.headers(viewer))
        assert denied.status_code == 403
        anonymous = client.post(url, json={"project": project.id})
        assert anonymous.status_code == 401
        key = identity.api_key(developer, project=project)
        by_key = client.post(url, json={"project": project.id}, headers=identity.headers(key))
        assert by_key.status_code == 201

        with identity.platform.db.transaction() as session:
            rows = session.scalars(
                select(AuditEvent).where(AuditEvent.action == f"POST {url}").order_by(AuditEvent.id)
            ).all()
            got = [
                (r.actor_user_id, r.outcome, r.client_addr, r.project_id, r.actor_key_id is None)
                for r in rows
            ]
            assert session.scalar(select(func.count()).select_from(AuditEvent)) == len(rows)
    assert got == [
        (developer.id, "success", "testclient", project.id, True),
        (viewer.id, "denied", "testclient", project.id, True),
        (None, "denied", "testclient", None, True),
        (developer.id, "success", "testclient", project.id, False),
    ]


@pytest.fixture
def zt_identity_for() -> Any:
    """``ZtIdentity`` of the app behind a client built with ``zt_client_factory``."""
    from zhongtai.testing import ZtIdentity

    def make(client: Any) -> ZtIdentity:
        return ZtIdentity(client.app.state["platform"])

    return make


# -- the writer: rows of concurrent requests share INSERTs --------------------------


class HeldInserts:
    """Holds the audit writer's first write to the database until released, so that
    the rows written meanwhile pile up; counts the writes (one INSERT each, of one row
    or many). Made inside the test's event loop."""

    def __init__(self, writer: Any) -> None:
        self.release = threading.Event()
        self.inserts = 0
        self.started = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.writer = writer
        insert = writer._insert

        def held(rows: list[dict[str, Any]]) -> None:
            self.inserts += 1
            self.loop.call_soon_threadsafe(self.started.set)
            self.release.wait(10)
            insert(rows)

        writer._insert = held

    def remove(self) -> None:
        del self.writer._insert  # the class's own again


def audit_values(action: str) -> dict[str, Any]:
    return audit._values(
        action=action,
        outcome="success",
        principal=None,
        actor_user_id=None,
        target_kind=None,
        target_id=None,
        project_id=None,
        org_id=None,
        client_addr="127.0.0.1",
        detail=None,
        occurred_at=None,
    )


def written(platform: Any, prefix: str) -> list[str]:
    with platform.db.transaction() as session:
        return sorted(
            session.scalars(
                select(AuditEvent.action).where(AuditEvent.action.startswith(prefix))
            ).all()
        )


def write_while_the_first_insert_is_held(
    platform: Any, first: dict[str, Any], rest: list[dict[str, Any]]
) -> int:
    """Write ``first``; while its INSERT is held, write ``rest``; return the INSERTs."""
    writer = audit.AuditWriter(platform.db)

    async def main() -> int:
        held = HeldInserts(writer)
        try:
            tasks = [asyncio.ensure_future(writer.write(first))]
            await held.started.wait()
            tasks += [asyncio.ensure_future(writer.write(values)) for values in rest]
            await asyncio.sleep(0.05)
            assert not any(task.done() for task in tasks)  # each waits for its commit
            held.release.set()
            await asyncio.gather(*tasks)  # a row that failed is logged, never raised
            return held.inserts
        finally:
            held.release.set()
            held.remove()

    try:
        return asyncio.run(main())
    finally:
        writer.close()


def test_rows_written_while_an_insert_runs_go_together_in_the_next(zt_platform):
    inserts = write_while_the_first_insert_is_held(
        zt_platform, audit_values("batch.0"), [audit_values(f"batch.{i}") for i in range(1, 40)]
    )
    assert written(zt_platform, "batch.") == sorted(f"batch.{i}" for i in range(40))
    assert inserts == 2  # the first row, then the 39 that waited for it


def test_a_row_that_cannot_be_written_does_not_take_its_batch_with_it(zt_platform, caplog):
    bad = audit_values("bad.row")
    bad["outcome"] = None  # NOT NULL: the database refuses this row
    write_while_the_first_insert_is_held(
        zt_platform,
        audit_values("good.0"),
        [audit_values("good.1"), bad, audit_values("good.2")],
    )
    assert written(zt_platform, "good.") == ["good.0", "good.1", "good.2"]
    assert written(zt_platform, "bad.") == []
    assert "could not write the audit row of bad.row" in caplog.text


def test_rows_written_after_the_writer_closed_are_still_written(zt_platform):
    writer = audit.AuditWriter(zt_platform.db)
    asyncio.run(writer.write(audit_values("open.0")))
    writer.close()
    asyncio.run(writer.write(audit_values("closed.0")))  # shutting down: written directly
    assert written(zt_platform, "open.") == ["open.0"]
    assert written(zt_platform, "closed.") == ["closed.0"]
