"""``zhongtai users``, run as a real process the way an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from sqlalchemy import select

from zhongtai.identity.models import AuditEvent, User
from zhongtai.identity.passwords import verify_password

PASSWORD = "a long enough passphrase"


@pytest.fixture
def run(zt_platform, zt_settings):
    """Run ``zhongtai`` against the test's database (already migrated by ``zt_platform``)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ZHONGTAI_")}
    base.update(
        ZHONGTAI_HOME=str(zt_settings.home),
        ZHONGTAI_DATABASE_URL=zt_settings.effective_database_url,
        ZHONGTAI_PLUGINS="",
    )

    def run_(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "zhongtai", *args],
            env={**base, **env},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run_


def users_in(platform) -> dict[str, User]:
    with platform.db.transaction() as session:
        rows = session.scalars(select(User)).all()
        for row in rows:
            session.expunge(row)
        return {u.email: u for u in rows}


def test_users_command_is_listed(run):
    result = run("--help")
    assert result.returncode == 0, result.stderr
    assert "users" in result.stdout


def test_create_superuser_with_a_prompted_password(run, zt_platform, zt_client):
    # The password is asked twice on the terminal (here: stdin) and never echoed.
    result = run(
        "users",
        "create",
        "--email",
        "Root@Example.com",
        "--display-name",
        "Root",
        "--superuser",
        stdin=f"{PASSWORD}\n{PASSWORD}\n",
    )
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    user = users_in(zt_platform)["root@example.com"]
    assert user.is_superuser and user.is_active and user.display_name == "Root"
    assert verify_password(user.password_hash, PASSWORD)
    with zt_platform.db.transaction() as session:
        row = session.scalars(select(AuditEvent).where(AuditEvent.action == "user.create")).one()
        assert row.detail["via"] == "cli"
        assert row.target_id == user.id
    # The account works over the API, and setup is now closed.
    login = zt_client.post(
        "/api/v1/auth/login", json={"email": "root@example.com", "password": PASSWORD}
    )
    assert login.status_code == 200
    assert zt_client.get("/setup?token=anything").status_code == 409


def test_create_plain_user_listing_and_duplicate(run, zt_platform):
    created = run("users", "create", "--email", "dev@example.com", "--password", PASSWORD)
    assert created.returncode == 0, created.stderr
    assert users_in(zt_platform)["dev@example.com"].is_superuser is False

    duplicate = run("users", "create", "--email", "DEV@example.com", "--password", PASSWORD)
    assert duplicate.returncode != 0
    assert "already registered" in duplicate.stderr
    assert "Traceback" not in duplicate.stderr
    assert len(users_in(zt_platform)) == 1

    listed = run("users", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["email"] for r in rows] == ["dev@example.com"]
    assert "password_hash" not in listed.stdout
    plain = run("users", "list")
    assert "dev@example.com" in plain.stdout


@pytest.mark.parametrize(
    ("email", "password", "expected"),
    [
        ("weak@example.com", "short", "at least 10 characters"),
        ("weak@example.com", "aaaaaaaaaaaaaaaa", "4 different characters"),
        ("weak@example.com", "weak@example.com", "email address"),
        ("not-an-email", PASSWORD, "email"),
    ],
)
def test_create_refuses_bad_input(run, zt_platform, email, password, expected):
    result = run("users", "create", "--email", email, "--password", password)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert users_in(zt_platform) == {}


def test_prompted_passwords_must_match(run, zt_platform):
    result = run(
        "users", "create", "--email", "typo@example.com", stdin=f"{PASSWORD}\n{PASSWORD}x\n"
    )
    assert result.returncode != 0
    assert users_in(zt_platform) == {}
