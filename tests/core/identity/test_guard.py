"""The access guard and the automatic audit, seen from a plugin's routes."""

from __future__ import annotations

from typing import Any

from litestar import get, post
from sqlalchemy import select

import zhongtai
from zhongtai.identity.guard import AccessDep, requires
from zhongtai.identity.models import AuditEvent
from zhongtai.identity.roles import Permission, Role
from zhongtai.web.params import PlatformDep

READ = Permission("guarddemo.thing.read", "Read things", Role.viewer)
WRITE = Permission("guarddemo.thing.write", "Write things", Role.developer)


class GuardDemo:
    @zhongtai.hookimpl
    def register_permissions(self) -> list[Permission]:
        return [READ, WRITE]

    @zhongtai.hookimpl
    def register_routes(self) -> list[Any]:
        @get("/projects/{project_id:str}/thing", opt=requires(READ), sync_to_thread=True)
        def read_thing(platform: PlatformDep, access: AccessDep, project_id: str) -> dict[str, str]:
            with platform.db.transaction() as session:
                access.require(session, project_id=project_id)
            return {"project": project_id}

        @post("/projects/{project_id:str}/thing", opt=requires(WRITE), sync_to_thread=True)
        def write_thing(
            platform: PlatformDep, access: AccessDep, project_id: str
        ) -> dict[str, str]:
            with platform.db.transaction() as session:
                access.require(session, project_id=project_id)
            return {"project": project_id}

        return [read_thing, write_thing]


def _audit_rows(platform) -> list[AuditEvent]:
    with platform.db.transaction() as session:
        rows = list(session.scalars(select(AuditEvent).order_by(AuditEvent.occurred_at)))
        session.expunge_all()
        return rows


def test_reads_are_not_audited_and_writes_are_with_their_project(
    zt_register_plugin, zt_client_factory
) -> None:
    from zhongtai.testing import ZtIdentity

    zt_register_plugin(GuardDemo(), name="guarddemo")
    with zt_client_factory() as client:
        platform = client.app.state["platform"]
        identity = ZtIdentity(platform)
        user, project = identity.project_with("developer")
        headers = identity.headers(user)
        url = f"/api/v1/guarddemo/projects/{project.id}/thing"
        assert client.get(url, headers=headers).status_code == 200
        assert _audit_rows(platform) == []
        assert client.post(url, headers=headers).status_code == 201
        (row,) = _audit_rows(platform)
        assert row.project_id == project.id
        assert row.actor_user_id == user.id
        assert row.outcome == "success"
        assert row.action == "POST /api/v1/guarddemo/projects/{project_id}/thing"


def test_a_route_naming_an_undeclared_permission_is_refused_not_a_500(zt_app, zt_identity) -> None:
    from litestar.testing import TestClient

    from zhongtai.identity.guard import ACCESS_OPT, iter_route_handlers

    for _method, path, handler in iter_route_handlers(zt_app):
        if path == "/api/v1/plugins":
            handler.opt[ACCESS_OPT] = "nobody.declared.this"
    headers = zt_identity.headers(zt_identity.user(superuser=True))
    with TestClient(zt_app) as client:
        response = client.get("/api/v1/plugins", headers=headers)
    assert response.status_code == 403
    assert "undeclared permission" in response.json()["detail"]


def test_unknown_email_spends_the_same_password_check_as_a_wrong_password(
    zt_client, zt_identity, monkeypatch
) -> None:
    """Both run one argon2 verification (against a dummy hash when there is no account),
    so response time does not tell which emails are registered."""
    from zhongtai.identity import passwords

    zt_identity.user("known@example.com")
    checked: list[str] = []
    real = passwords._hasher

    class Counting:
        def verify(self, stored: str, password: str) -> bool:
            checked.append(stored)
            return real.verify(stored, password)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    monkeypatch.setattr(passwords, "_hasher", Counting())
    for email in ("known@example.com", "nobody@example.com"):
        response = zt_client.post(
            "/api/v1/auth/login", json={"email": email, "password": "wrong password 1"}
        )
        assert response.status_code == 401
    assert len(checked) == 2
    assert all(stored.startswith("$argon2id$") for stored in checked)
