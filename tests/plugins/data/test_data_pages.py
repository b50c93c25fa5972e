"""The data plugin's pages: datasets, drafts, commit, file preview, quality, diff."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from litestar.testing import TestClient

from zhongtai.testing import ZtIdentity, rq_worker_thread

pytestmark = pytest.mark.zt_plugins("data")
PASSWORD = "correct horse battery"


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html[:1500]
    return found.group(1)


@pytest.fixture
def signed_in(zt_client: TestClient[Any], zt_platform: Any) -> Any:
    from zhongtai.identity.models import User
    from zhongtai.identity.passwords import hash_password

    identity = ZtIdentity(zt_platform)
    user, project = identity.project_with("developer")
    with zt_platform.db.transaction() as session:
        session.get(User, user.id).password_hash = hash_password(PASSWORD)
    form = zt_client.get("/ui/login")
    zt_client.post(
        "/ui/login",
        data={"email": user.email, "password": PASSWORD, "csrf_token": csrf_of(form.text)},
    )
    csrf = csrf_of(zt_client.get("/ui").text)
    with rq_worker_thread(zt_platform, count=1):
        yield zt_client, csrf, project, identity


def test_a_dataset_from_the_pages(signed_in):
    client, csrf, project, _identity = signed_in
    listing = client.get(f"/ui/data/datasets?project={project.id}")
    assert listing.status_code == 200 and 'data-panel="data.datasets"' in listing.text
    bad = client.post("/ui/data/datasets", data={"csrf_token": csrf, "name": "a/b"})
    assert bad.status_code == 422 and 'id="name-error"' in bad.text
    made = client.post(
        "/ui/data/datasets",
        data={"csrf_token": csrf, "name": "<img src=x onerror=alert(1)>", "tags": "vision, test"},
        follow_redirects=False,
    )
    assert made.status_code == 303, made.text
    page_url = made.headers["location"].split("?")[0]
    dataset_id = page_url.rsplit("/", 1)[1]
    draft = client.post(
        page_url, data={"csrf_token": csrf, "action": "new-draft"}, follow_redirects=False
    )
    draft_id = re.search(r"draft=([0-9a-z]+)", draft.headers["location"]).group(1)
    page = client.get(draft.headers["location"])
    assert "data-uploader" in page.text and "&lt;img src=x onerror=alert(1)&gt;" in page.text
    assert "<img src=x" not in page.text
    # The page's script uses the API with the session cookie and the CSRF header.
    added = client.post(
        f"/api/v1/data/datasets/{dataset_id}/versions/{draft_id}/files",
        data={"path": "t.csv"},
        files={"file": ("t.csv", b"a,b\n1,2\n1,2\n3,\n", "text/csv")},
        headers={"X-CSRF-Token": csrf},
    )
    assert added.status_code == 201, added.text
    done = client.post(
        page_url,
        data={"csrf_token": csrf, "action": "commit", "draft": draft_id, "message": "first"},
        follow_redirects=False,
    )
    assert done.status_code == 303
    version_page = client.get(done.headers["location"])
    assert 'data-version="1"' in version_page.text and 'data-file="t.csv"' in version_page.text
    file_url = f"{page_url}/file?version=1&path=t.csv"
    deadline = time.monotonic() + 30
    while "data-quality" not in (shown := client.get(file_url).text):
        assert time.monotonic() < deadline, "no quality report"
        time.sleep(0.2)
    assert "data-preview" in shown and "<td>3</td>" in shown
    assert "Duplicate rows" in shown
    assert client.get(f"{page_url}/file?version=1&path=nope.csv").status_code == 404


def test_another_projects_dataset_page_is_not_found(signed_in):
    client, _csrf, _project, identity = signed_in
    owner, other = identity.project_with("owner")
    theirs = identity.headers(owner)
    made = client.post(
        "/api/v1/data/datasets", json={"project": other.id, "name": "secret"}, headers=theirs
    ).json()
    page = client.get(f"/ui/data/datasets/{made['id']}")
    missing = client.get("/ui/data/datasets/" + "x" * 26)
    assert page.status_code == missing.status_code == 404
    assert "secret" not in page.text


def test_sources_page_registers_without_showing_secrets(signed_in, zt_platform):
    from zhongtai.testing import database_server_for_tests

    client, csrf, project, _identity = signed_in
    from zhongtai.identity.models import ProjectMember, User

    with zt_platform.db.transaction() as session:  # maintainers manage sources
        from sqlalchemy import select

        member = session.scalar(select(ProjectMember).where(ProjectMember.project_id == project.id))
        member.role = 30
        assert session.get(User, member.user_id) is not None
    page = client.get(f"/ui/data/sources?project={project.id}")
    assert page.status_code == 200 and "Register a source" in page.text
    bad = client.post(
        "/ui/data/sources",
        data={
            "csrf_token": csrf,
            "action": "create",
            "name": "db",
            "kind": "sql",
            "url": "sqlite:////etc/passwd",
        },
    )
    assert bad.status_code == 422 and 'id="url-error"' in bad.text
    server = database_server_for_tests() or "postgresql://postgres@127.0.0.1:5432/postgres"
    secret_url = server.replace("postgres@", "postgres:hunter2secret@", 1)
    made = client.post(
        "/ui/data/sources",
        data={
            "csrf_token": csrf,
            "action": "create",
            "name": "warehouse",
            "kind": "sql",
            "url": secret_url,
        },
        follow_redirects=False,
    )
    assert made.status_code == 303, made.text
    listing = client.get("/ui/data/sources").text
    assert 'data-source="warehouse"' in listing and "hunter2secret" not in listing
