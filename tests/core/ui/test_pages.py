"""The web UI over HTTP: sign-in, pages, forms, escaping, CSRF, CSP, not-found pages."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import jinja2
import pytest
from litestar.testing import TestClient

import zhongtai
from zhongtai.testing import ZtIdentity
from zhongtai.ui import Panel

XSS = "<img src=x onerror=alert(1)>"
PASSWORD = "correct horse battery"


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html[:2000]
    return found.group(1)


def sign_in(client: TestClient[Any], email: str, password: str = PASSWORD) -> str:
    """Sign in through the form; return the session's CSRF token (from the dashboard)."""
    form = client.get("/ui/login")
    assert form.status_code == 200
    answer = client.post(
        "/ui/login",
        data={"email": email, "password": password, "csrf_token": csrf_of(form.text)},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    assert "zt_session" in answer.headers.get("set-cookie", "")
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie
    dashboard = client.get("/ui")
    assert dashboard.status_code == 200, dashboard.text
    return csrf_of(dashboard.text)


@pytest.fixture
def ui(zt_client: TestClient[Any], zt_platform: Any) -> Iterator[tuple[TestClient[Any], Any]]:
    identity = ZtIdentity(zt_platform)
    yield zt_client, identity


def user_with_project(identity: ZtIdentity, role: str = "owner", name: str = "Vision") -> Any:
    from zhongtai.identity.passwords import hash_password

    user, project = identity.project_with(role)
    with identity.platform.db.transaction() as session:
        from zhongtai.identity.models import Project, User

        session.get(User, user.id).password_hash = hash_password(PASSWORD)
        session.get(Project, project.id).name = name
    return user, project


def test_signed_out_pages_redirect_to_sign_in(ui):
    client, _ = ui
    answer = client.get("/ui/jobs?status=failed", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/login?next=/ui/jobs%3Fstatus%3Dfailed"
    assert client.get("/", follow_redirects=False).headers["location"] == "/ui"


def test_sign_in_wrong_password_and_sign_out(ui):
    client, identity = ui
    user, _ = user_with_project(identity)
    form = client.get("/ui/login")
    wrong = client.post(
        "/ui/login",
        data={"email": user.email, "password": "nope", "csrf_token": csrf_of(form.text)},
    )
    assert wrong.status_code == 401
    assert "Wrong email or password" in wrong.text
    csrf = sign_in(client, user.email)
    out = client.post("/ui/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303
    assert client.get("/ui", follow_redirects=False).status_code == 303


def test_every_page_sends_a_strict_csp_and_no_inline_script(ui):
    client, identity = ui
    user, _ = user_with_project(identity)
    with identity.platform.db.transaction() as session:
        from zhongtai.identity.models import User

        session.get(User, user.id).is_superuser = True
    sign_in(client, user.email)
    for path in [
        "/ui",
        "/ui/projects",
        "/ui/keys",
        "/ui/jobs",
        "/ui/admin/users",
        "/ui/admin/plugins",
        "/ui/admin/audit",
        "/ui/login",
    ]:
        page = client.get(path)
        assert page.status_code == 200, (path, page.text[:500])
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
        assert not re.search(r"<script(?![^>]*\bsrc=)", page.text), path
        assert " style=" not in page.text and "<style" not in page.text, path
        assert " on" + "click=" not in page.text, path


def test_a_hostile_project_name_is_text_everywhere(ui):
    client, identity = ui
    user, project = user_with_project(identity, name=XSS)
    sign_in(client, user.email)
    for path in [
        "/ui",
        f"/ui/projects?project={project.id}",
        "/ui/keys",
        "/ui/jobs",
        "/ui/settings",
        "/ui/account",
    ]:
        page = client.get(path)
        assert page.status_code == 200, path
        assert XSS not in page.text, path
        assert "&lt;img src=x onerror=alert(1)&gt;" in page.text, path


def test_state_changes_need_the_csrf_token(ui):
    client, identity = ui
    user, project = user_with_project(identity)
    csrf = sign_in(client, user.email)
    # A cross-site form or fetch carries the cookie but cannot read the token.
    for method, path in [
        ("POST", "/ui/keys"),
        ("POST", "/api/v1/projects"),
        ("PATCH", f"/api/v1/projects/{project.id}"),
        ("DELETE", f"/api/v1/projects/{project.id}"),
    ]:
        answer = client.request(method, path, data={"name": "x"} if method == "POST" else None)
        assert answer.status_code == 403, (method, path, answer.text)
        assert "CSRF" in answer.json()["detail"]
    wrong = client.post("/ui/keys", data={"name": "k", "csrf_token": "0" * 40})
    assert wrong.status_code == 403
    # With the token (form field or the header htmx sends) it works.
    ok = client.patch(
        f"/api/v1/projects/{project.id}",
        json={"description": "set from the UI"},
        headers={"X-CSRF-Token": csrf},
    )
    assert ok.status_code == 200, ok.text
    # A bearer credential needs no CSRF token: a browser never adds one by itself.
    client.cookies.clear()
    key = identity.api_key(user)
    by_key = client.patch(
        f"/api/v1/projects/{project.id}",
        json={"description": "by key"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert by_key.status_code == 200


def test_create_project_shows_errors_next_to_the_field(ui):
    client, identity = ui
    user, project = user_with_project(identity)
    from zhongtai.identity.models import OrgMember, Project

    with identity.platform.db.transaction() as session:
        org_id = session.get(Project, project.id).org_id
        session.add(OrgMember(org_id=org_id, user_id=user.id, role=40))
    csrf = sign_in(client, user.email)
    page = client.get("/ui/projects")
    org = re.search(r'<option value="([^"]+)"', page.text.split('id="org"')[1]).group(1)
    bad = client.post("/ui/projects", data={"csrf_token": csrf, "org": org, "name": ""})
    assert bad.status_code == 422
    assert 'id="name-error"' in bad.text
    good = client.post(
        "/ui/projects",
        data={"csrf_token": csrf, "org": org, "name": "Speech", "slug": "speech"},
        follow_redirects=False,
    )
    assert good.status_code == 303, good.text
    assert "Speech" in client.get("/ui/projects").text
    taken = client.post(
        "/ui/projects", data={"csrf_token": csrf, "org": org, "name": "Again", "slug": "speech"}
    )
    assert taken.status_code == 422
    assert 'id="slug-error"' in taken.text and "already taken" in taken.text


def test_api_key_is_shown_once_and_can_be_revoked(ui):
    client, identity = ui
    user, project = user_with_project(identity)
    csrf = sign_in(client, user.email)
    made = client.post(
        "/ui/keys",
        data={"csrf_token": csrf, "action": "create", "name": "ci", "project": project.id},
    )
    assert made.status_code == 200, made.text
    key = re.search(r'<code id="new-key">([^<]+)</code>', made.text).group(1)
    assert key.startswith("zt_")
    listing = client.get("/ui/keys").text
    assert key not in listing and "ci" in listing
    assert client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {key}"}).is_success
    key_id = re.search(r'name="key" value="([^"]+)"', listing).group(1)
    revoked = client.post(
        "/ui/keys",
        data={"csrf_token": csrf, "action": "revoke", "key": key_id},
        follow_redirects=False,
    )
    assert revoked.status_code == 303
    client.cookies.clear()
    answer = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 401


def test_another_projects_job_is_the_same_not_found_page(ui):
    client, identity = ui
    user, _ = user_with_project(identity)
    _other_user, other = user_with_project(identity, name="Other")
    from zhongtai.jobs.models import Job

    with identity.platform.db.transaction() as session:
        job = Job(
            id="j" * 26,
            type="hello.noop",
            project_id=other.id,
            params={},
            status="succeeded",
            queue="default",
            priority=0,
            attempts=1,
            max_attempts=1,
            timeout=60,
            progress_message="",
            cancel_requested=False,
            log_lines=0,
        )
        session.add(job)
    sign_in(client, user.email)
    theirs = client.get(f"/ui/jobs/{job.id}")
    missing = client.get("/ui/jobs/" + "x" * 26)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.text == missing.text
    assert "Other" not in theirs.text
    # Naming the other project in the query is not-found too, not a switch.
    assert client.get(f"/ui/jobs?project={other.id}").status_code == 404


class BrokenPanels:
    @zhongtai.hookimpl
    def register_panels(self) -> list[Panel]:
        return [
            Panel(name="missing", title={"en": "Missing"}, kind="card", template="nope.html"),
            Panel(name="raises", title={"en": "Raises"}, kind="card", template="boom.html"),
            Panel(name="page", title={"en": "Broken page"}, path="/broken", template="nope.html"),
        ]


@pytest.fixture
def broken(zt_register_plugin: Any) -> None:
    zt_register_plugin(BrokenPanels(), name="broken")


def test_a_broken_panel_shows_an_error_box_and_the_rest_renders(broken, ui):
    client, identity = ui
    user, _ = user_with_project(identity)
    sign_in(client, user.email)
    dashboard = client.get("/ui")
    assert dashboard.status_code == 200
    assert dashboard.text.count('class="panel-error"') == 2
    assert 'data-card="jobs-by-status"' in dashboard.text
    page = client.get("/ui/broken/broken")
    assert page.status_code == 200
    assert 'class="panel-error"' in page.text and 'class="sidebar"' in page.text


def test_language_follows_the_user_then_accept_language(ui):
    client, identity = ui
    user, _ = user_with_project(identity)
    login = client.get("/ui/login", headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    assert "登录" in login.text
    csrf = sign_in(client, user.email)
    assert ">Jobs<" in client.get("/ui").text
    client.post("/ui/language", data={"csrf_token": csrf, "language": "zh-CN", "next": "/ui"})
    page = client.get("/ui")
    assert ">任务<" in page.text and 'lang="zh-CN"' in page.text


@pytest.mark.zt_plugins("hello")
def test_hook_register_panels(ui):
    """The hello plugin's page and card: its route, template, catalog and permission."""
    client, identity = ui
    user, project = user_with_project(identity, role="viewer")
    csrf = sign_in(client, user.email)
    dashboard = client.get("/ui")
    assert 'data-panel="hello.greetings"' in dashboard.text
    assert 'data-card="hello"' in dashboard.text
    page = client.get(f"/ui/hello/greetings?project={project.id}")
    assert page.status_code == 200
    assert "Greetings in this project:" in page.text and "Nobody greeted yet." in page.text
    client.post("/ui/language", data={"csrf_token": csrf, "language": "zh-CN", "next": "/ui"})
    assert "还没有人问候。" in client.get("/ui/hello/greetings").text
    # A template elsewhere cannot be reached through the plugin's name.
    from zhongtai.ui.web import UI_KEY

    ui_state = identity.platform.stash[UI_KEY]
    with pytest.raises(jinja2.TemplateNotFound):
        ui_state.env.get_template("hello/../core/layout.html")


class NoPermissionPanels:
    @zhongtai.hookimpl
    def register_panels(self) -> list[Panel]:
        return [
            Panel(
                name="secret",
                title={"en": "Admins only"},
                path="/secret",
                template="x.html",
                permission="core.users.manage",
            )
        ]


@pytest.fixture
def guarded(zt_register_plugin: Any) -> None:
    zt_register_plugin(NoPermissionPanels(), name="guarded")


def test_a_panel_needs_its_permission_to_be_seen(guarded, ui):
    client, identity = ui
    user, _ = user_with_project(identity)
    sign_in(client, user.email)
    assert 'data-panel="guarded.secret"' not in client.get("/ui").text
    refused = client.get("/ui/guarded/secret")
    assert refused.status_code == 404 and "Not found" in refused.text
    from zhongtai.identity.models import User

    with identity.platform.db.transaction() as session:
        session.get(User, user.id).is_superuser = True
    assert 'data-panel="guarded.secret"' in client.get("/ui").text
    shown = client.get("/ui/guarded/secret")
    assert shown.status_code == 200 and 'class="panel-error"' in shown.text  # no x.html


def test_project_settings_and_members(ui):
    client, identity = ui
    owner, project = user_with_project(identity, role="owner")
    colleague = identity.user("colleague@example.com")
    csrf = sign_in(client, owner.email)
    page = client.get(f"/ui/settings?project={project.id}")
    assert page.status_code == 200 and 'id="p-name"' in page.text
    renamed = client.post(
        "/ui/settings",
        data={"csrf_token": csrf, "action": "update", "name": "Vision 2", "slug": "v2"},
        follow_redirects=False,
    )
    assert renamed.status_code == 303, renamed.text
    assert "Vision 2" in client.get("/ui/settings").text
    bad_slug = client.post(
        "/ui/settings", data={"csrf_token": csrf, "action": "update", "slug": "Not A Slug!"}
    )
    assert bad_slug.status_code == 422 and 'id="slug-error"' in bad_slug.text
    nobody = client.post(
        "/ui/settings",
        data={
            "csrf_token": csrf,
            "action": "add-member",
            "email": "ghost@example.com",
            "role": "viewer",
        },
    )
    assert nobody.status_code == 422 and 'id="email-error"' in nobody.text
    added = client.post(
        "/ui/settings",
        data={
            "csrf_token": csrf,
            "action": "add-member",
            "email": colleague.email,
            "role": "viewer",
        },
        follow_redirects=False,
    )
    assert added.status_code == 303
    listing = client.get("/ui/settings").text
    assert f'data-member="{colleague.email}"' in listing
    changed = client.post(
        "/ui/settings",
        data={"csrf_token": csrf, "action": "set-role", "user": colleague.id, "role": "maintainer"},
        follow_redirects=False,
    )
    assert changed.status_code == 303
    from zhongtai.identity.models import ProjectMember

    with identity.platform.db.transaction() as session:
        from sqlalchemy import select

        role = session.scalar(
            select(ProjectMember.role).where(ProjectMember.user_id == colleague.id)
        )
    assert role == 30
    removed = client.post(
        "/ui/settings",
        data={"csrf_token": csrf, "action": "remove-member", "user": colleague.id},
        follow_redirects=False,
    )
    assert removed.status_code == 303
    assert f'data-member="{colleague.email}"' not in client.get("/ui/settings").text


def test_a_viewer_sees_settings_but_no_forms_to_change_them(ui):
    client, identity = ui
    viewer, project = user_with_project(identity, role="viewer")
    csrf = sign_in(client, viewer.email)
    page = client.get(f"/ui/settings?project={project.id}")
    assert page.status_code == 200
    assert 'id="p-name"' not in page.text and 'id="m-email"' not in page.text
    refused = client.post(
        "/ui/settings", data={"csrf_token": csrf, "action": "update", "name": "Mine now"}
    )
    assert refused.status_code == 422 and "core.project.write" in refused.text


def test_account_profile_and_password(ui):
    client, identity = ui
    user, _ = user_with_project(identity)
    csrf = sign_in(client, user.email)
    saved = client.post(
        "/ui/account",
        data={"csrf_token": csrf, "action": "profile", "display_name": "Grace"},
        follow_redirects=False,
    )
    assert saved.status_code == 303
    assert "Grace" in client.get("/ui").text
    differ = client.post(
        "/ui/account",
        data={
            "csrf_token": csrf,
            "action": "password",
            "current_password": PASSWORD,
            "new_password": "a new long password",
            "new_password_again": "something else",
        },
    )
    assert differ.status_code == 422 and "differ" in differ.text
    wrong = client.post(
        "/ui/account",
        data={
            "csrf_token": csrf,
            "action": "password",
            "current_password": "not it",
            "new_password": "a new long password",
            "new_password_again": "a new long password",
        },
    )
    assert wrong.status_code == 422 and 'id="current_password-error"' in wrong.text
    changed = client.post(
        "/ui/account",
        data={
            "csrf_token": csrf,
            "action": "password",
            "current_password": PASSWORD,
            "new_password": "a new long password",
            "new_password_again": "a new long password",
        },
        follow_redirects=False,
    )
    assert changed.status_code == 303 and changed.headers["location"].startswith("/ui/login")
    # Every session ended, this one too; the new password works.
    assert client.get("/ui", follow_redirects=False).status_code == 303
    sign_in(client, user.email, "a new long password")


def invite(client: TestClient[Any], identity: ZtIdentity, email: str, role: str = "developer"):
    """An owner invites ``email`` to a new organization; returns (token, org id)."""
    owner, project = user_with_project(identity)
    from zhongtai.identity.models import OrgMember, Project

    with identity.platform.db.transaction() as session:
        org_id = session.get(Project, project.id).org_id
        session.add(OrgMember(org_id=org_id, user_id=owner.id, role=50))
    made = client.post(
        f"/api/v1/orgs/{org_id}/invitations",
        json={"email": email, "role": role},
        headers=identity.headers(owner),
    )
    assert made.status_code == 201, made.text
    url = made.json()["accept_url"]
    return url.split("token=", 1)[1], org_id


def test_an_invitation_is_accepted_by_the_signed_in_invitee(ui):
    client, identity = ui
    invitee, _ = user_with_project(identity)
    token, org_id = invite(client, identity, invitee.email)
    bad = client.get("/invite?token=nope")
    assert bad.status_code == 400 and "not a valid invitation" in bad.text
    signed_out = client.get(f"/invite?token={token}")
    assert signed_out.status_code == 200
    assert (
        "/ui/login?next=" in signed_out.text
        and 'name="action" value="accept"' not in signed_out.text
    )
    csrf = sign_in(client, invitee.email)
    page = client.get(f"/invite?token={token}")
    assert 'name="action" value="accept"' in page.text
    forged = client.post("/invite", data={"token": token, "action": "accept"})
    assert forged.status_code == 403
    joined = client.post(
        "/invite",
        data={"token": token, "action": "accept", "csrf_token": csrf},
        follow_redirects=False,
    )
    assert joined.status_code == 303, joined.text
    from sqlalchemy import select

    from zhongtai.identity.models import OrgMember

    with identity.platform.db.transaction() as session:
        role = session.scalar(
            select(OrgMember.role).where(
                OrgMember.org_id == org_id, OrgMember.user_id == invitee.id
            )
        )
    assert role == 20
    again = client.get(f"/invite?token={token}")
    assert again.status_code == 400 and "already been used" in again.text


def test_an_invitee_without_an_account_creates_one(zt_app_factory, zt_settings):
    identity_settings = zt_settings.identity.model_copy(update={"registration": "invite"})
    app = zt_app_factory(settings=zt_settings.model_copy(update={"identity": identity_settings}))
    with TestClient(app, raise_server_exceptions=False) as client:
        identity = ZtIdentity(app.state["platform"])
        token, org_id = invite(client, identity, "newcomer@example.com")
        page = client.get(f"/invite?token={token}")
        assert "newcomer@example.com" in page.text and 'value="register"' in page.text
        csrf = csrf_of(page.text)
        short = client.post(
            "/invite",
            data={
                "token": token,
                "action": "register",
                "csrf_token": csrf,
                "password": "short",
                "password_again": "short",
            },
        )
        assert short.status_code == 422 and 'id="password-error"' in short.text
        made = client.post(
            "/invite",
            data={
                "token": token,
                "action": "register",
                "csrf_token": csrf,
                "display_name": "New Comer",
                "password": PASSWORD,
                "password_again": PASSWORD,
            },
            follow_redirects=False,
        )
        assert made.status_code == 303, made.text
        assert "zt_session" in made.headers["set-cookie"]
        projects = client.get("/ui/projects")
        assert projects.status_code == 200 and "New Comer" in projects.text
        from sqlalchemy import select

        from zhongtai.identity.models import OrgMember, User

        with identity.platform.db.transaction() as session:
            role = session.scalar(
                select(OrgMember.role)
                .join(User, User.id == OrgMember.user_id)
                .where(OrgMember.org_id == org_id, User.email == "newcomer@example.com")
            )
        assert role == 20


def test_superusers_manage_accounts_and_others_get_not_found(ui):
    client, identity = ui
    admin, _ = user_with_project(identity)
    from zhongtai.identity.models import User

    with identity.platform.db.transaction() as session:
        session.get(User, admin.id).is_superuser = True
    csrf = sign_in(client, admin.email)
    short = client.post(
        "/ui/admin/users",
        data={
            "csrf_token": csrf,
            "action": "create",
            "email": "ops@example.com",
            "password": "short",
        },
    )
    assert short.status_code == 422 and 'id="password-error"' in short.text
    assert 'value="ops@example.com"' in short.text and 'value="short"' not in short.text
    made = client.post(
        "/ui/admin/users",
        data={
            "csrf_token": csrf,
            "action": "create",
            "email": "ops@example.com",
            "password": PASSWORD,
            "display_name": "Ops",
        },
        follow_redirects=False,
    )
    assert made.status_code == 303, made.text
    listing = client.get("/ui/admin/users").text
    assert 'data-user="ops@example.com"' in listing
    ops_id = re.search(
        r'data-user="ops@example.com">.*?name="user" value="([^"]+)"', listing, re.S
    ).group(1)
    row = listing.split(f'data-user="{admin.email}"')[1].split("</tr>")[0]
    assert 'name="action"' not in row  # no buttons on one's own account
    off = client.post(
        "/ui/admin/users",
        data={"csrf_token": csrf, "action": "deactivate", "user": ops_id},
        follow_redirects=False,
    )
    assert off.status_code == 303
    other = TestClient(client.app)
    with other:
        form = other.get("/ui/login")
        refused = other.post(
            "/ui/login",
            data={
                "email": "ops@example.com",
                "password": PASSWORD,
                "csrf_token": csrf_of(form.text),
            },
        )
        assert refused.status_code == 401
    client.post("/ui/logout", data={"csrf_token": csrf})
    plain, _ = user_with_project(identity)
    sign_in(client, plain.email)
    assert client.get("/ui/admin/users").status_code == 404
    assert 'data-panel="ui.users"' not in client.get("/ui").text
