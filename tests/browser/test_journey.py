"""A newcomer's first session in a real browser, and a plugin's panel coming and going."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from zhongtai.identity.api.auth import setup_token
from zhongtai.testing import ZtIdentity, rq_worker_thread, serve_in_thread

PASSWORD = "a long enough password"
ASSET_BUDGET = 300 * 1024  # bytes of JavaScript and CSS on the first dashboard load


def button(page: Any, name: str) -> Any:
    return page.get_by_role("button", name=name, exact=True)


def watch_csp(page: Any) -> list[str]:
    """Console errors the page raises (a CSP violation shows up as one)."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


@pytest.mark.zt_plugins("hello")
def test_first_run_to_a_live_job_log(zt_app_factory, browser, pages):
    app = zt_app_factory()
    platform = app.state["platform"]
    # On the rq queue driver (the PostgreSQL + Redis run) jobs need a worker.
    with serve_in_thread(app) as url, rq_worker_thread(platform, count=1):
        context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 860})
        page = context.new_page()
        problems = watch_csp(page)

        # First-run setup through the link printed at start-up.
        page.goto(f"{url}/setup?token={setup_token(platform.secret_key)}")
        page.fill("#email", "admin@example.com")
        page.fill("#display_name", "Ada Admin")
        page.fill("#password", PASSWORD)
        page.fill("#password_confirm", PASSWORD)
        page.click("button[type=submit]")
        assert "Administrator created" in page.content()

        # Sign in: a page asked for while signed out comes back after the form.
        page.goto(f"{url}/ui/projects")
        assert page.url.startswith(f"{url}/ui/login?next=")
        pages.shot(page, "01-login")
        page.fill("#email", "admin@example.com")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{url}/ui/projects")

        # An organization, then a project (a field error first).
        page.fill("#org-name", "Acme Research")
        button(page, "Create organization").click()
        page.wait_for_selector("text=organization created")
        page.fill("#name", "")
        button(page, "Create project").click()
        assert page.locator("#name-error").is_visible()
        page.fill("#name", "Vision")
        page.fill("#description", "image models")
        button(page, "Create project").click()
        page.wait_for_selector("text=project created")
        assert page.locator("#project-switch option:checked").inner_text() == "Vision"
        pages.shot(page, "02-projects")

        # An API key: shown once, copied, then revoked.
        page.click("[data-panel='ui.keys']")
        page.fill("#key-name", "laptop")
        button(page, "Create key").click()
        key = page.locator("#new-key").inner_text()
        assert key.startswith("zt_")
        page.click("[data-copy]")
        pages.shot(page, "03-api-key")
        page.goto(f"{url}/ui/keys")
        assert key not in page.content()
        button(page, "Revoke").click()
        page.wait_for_selector("text=key revoked")
        assert page.locator("table.list tbody tr").first.inner_text().count("revoked") == 1

        # The example plugin's job: its log lines arrive while it runs.
        page.click("[data-panel='jobs.jobs']")
        page.select_option("#job-type", "hello.echo")
        page.fill("#job-params", json.dumps({"text": "hello", "repeat": 300, "delay": 0.01}))
        button(page, "Submit").click()
        page.wait_for_url(re.compile(r".*/ui/jobs/[0-9a-z]+.*"))
        viewer = page.locator("[data-log-viewer]")
        seen: list[int] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen.append(int(viewer.get_attribute("data-lines") or 0))
            if viewer.get_attribute("data-status") == "succeeded" and seen[-1] == 300:
                break
            time.sleep(0.05)
        assert seen[-1] == 300, seen[-20:]
        assert any(0 < n < 300 for n in seen), "no line was shown before the job ended"
        lines = page.locator("[data-log-lines]").inner_text().splitlines()
        assert lines[0] == "1: hello" and lines[-1] == "300: hello"
        page.fill("[data-log-search]", "29")
        assert page.locator("[data-log-lines]").inner_text().splitlines()[0] == "29: hello"
        page.fill("[data-log-search]", "")
        page.reload()  # the job is done: the page shows the stored outcome
        pages.wait_until(lambda: viewer.get_attribute("data-lines") == "300")
        pages.shot(page, "04-job")

        # Fast output: 10,000 lines as fast as the job can write them, all shown.
        page.goto(f"{url}/ui/jobs")
        page.select_option("#job-type", "hello.echo")
        page.fill("#job-params", json.dumps({"text": "fast", "repeat": 10_000}))
        button(page, "Submit").click()
        page.wait_for_url(re.compile(r".*/ui/jobs/[0-9a-z]+.*"))
        fast = page.locator("[data-log-viewer]")
        pages.wait_until(lambda: fast.get_attribute("data-lines") == "10000", seconds=90)
        lines = page.locator("[data-log-lines]").inner_text().splitlines()
        assert len(lines) == 10_000 and lines[0] == "1: fast" and lines[-1] == "10000: fast"
        assert lines == [f"{i}: fast" for i in range(1, 10_001)]

        # The plugin's page is in the navigation, with its card on the dashboard.
        assert page.locator("[data-panel='hello.greetings']").count() == 1
        page.goto(f"{url}/ui")
        assert page.locator("[data-card='hello']").count() == 1
        assert page.locator("[data-card='jobs-by-status']").count() == 1
        pages.shot(page, "05-dashboard")

        # 中文: the navigation changes, and stays for the next page.
        page.click(".usermenu summary")
        page.click("button[name=language][value=zh-CN]")
        page.wait_for_selector("[data-panel='jobs.jobs'] >> text=任务")
        assert page.locator("[data-panel='ui.projects']").inner_text().strip() == "项目"
        pages.shot(page, "06-dashboard-zh")
        page.click("[data-panel='jobs.jobs']")
        assert "提交任务" in page.content()
        pages.shot(page, "07-jobs-zh")
        page.click("[data-job] a")
        page.wait_for_selector("[data-log-viewer]")
        assert "日志" in page.content()
        pages.shot(page, "08-job-zh")
        page.click("[data-panel='ui.settings']")
        assert "添加成员" in page.content()
        pages.shot(page, "09-settings-zh")
        assert not [p for p in problems if "Content Security Policy" in p], problems
        cookies = context.cookies()
        context.close()

        # A fresh browser's first dashboard load: JavaScript and CSS within budget.
        fresh = browser.new_context()
        fresh.add_cookies([{"name": c["name"], "value": c["value"], "url": url} for c in cookies])
        sized: dict[str, int] = {}

        def count(response: Any) -> None:
            if re.search(r"\.(js|css)(\?|$)", response.url):
                sized[response.url] = len(response.body())

        first = fresh.new_page()
        first.on("response", count)
        first.goto(f"{url}/ui")
        first.wait_for_load_state("networkidle")
        total = sum(sized.values())
        print(f"first dashboard load: {total} bytes of JS and CSS in {len(sized)} files")
        assert sized, "no script or style sheet was loaded"
        assert total <= ASSET_BUDGET, sized
        fresh.close()


def test_a_plugin_panel_shows_only_when_the_plugin_is_installed(zt_app_factory, browser):
    app = zt_app_factory(plugins=[])  # the built-in plugins only
    platform = app.state["platform"]
    identity = ZtIdentity(platform)
    user, _project = identity.project_with("owner")
    from zhongtai.identity.models import User
    from zhongtai.identity.passwords import hash_password

    with platform.db.transaction() as session:
        session.get(User, user.id).password_hash = hash_password(PASSWORD)
    with serve_in_thread(app) as url:
        page = browser.new_page()
        page.goto(f"{url}/ui/login")
        page.fill("#email", user.email)
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{url}/ui")
        assert page.locator("[data-panel='jobs.jobs']").count() == 1
        assert page.locator("[data-panel='hello.greetings']").count() == 0
        assert page.locator("[data-card='hello']").count() == 0
        page.goto(f"{url}/ui/hello/greetings")
        assert "Not found" in page.content()
        page.close()
