"""The data plugin in a real browser: a file uploaded with a progress bar, previewed,
and its quality report read."""

from __future__ import annotations

import re

import pytest

from zhongtai.testing import ZtIdentity, rq_worker_thread, serve_in_thread

PASSWORD = "a long enough password"


@pytest.fixture
def small_parts(zt_clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZHONGTAI_DATA__PART_SIZE", str(5 * 1024 * 1024))


@pytest.mark.zt_plugins("data")
def test_upload_with_progress_preview_and_quality(
    small_parts, zt_app_factory, browser, pages, tmp_path
):
    app = zt_app_factory()
    platform = app.state["platform"]
    identity = ZtIdentity(platform)
    user, _project = identity.project_with("developer")
    from zhongtai.identity.models import User
    from zhongtai.identity.passwords import hash_password

    with platform.db.transaction() as session:
        session.get(User, user.id).password_hash = hash_password(PASSWORD)
    # 27 MB of CSV: six parts of 5 MiB, so the bar moves six times.
    rows = "".join(f"{i},{'cat' if i % 3 else 'dog'},{i * 0.5}\n" for i in range(1_500_000))
    csv_file = tmp_path / "animals.csv"
    csv_file.write_text("id,kind,weight\n" + rows)
    size = csv_file.stat().st_size
    parts = -(-size // (5 * 1024 * 1024))

    with serve_in_thread(app) as url, rq_worker_thread(platform, count=1):
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{url}/ui/login")
        page.fill("#email", user.email)
        page.fill("#password", PASSWORD)
        page.get_by_role("button", name="Sign in", exact=True).click()
        page.wait_for_url(f"{url}/ui")
        page.click("[data-panel='data.datasets']")
        page.fill("#dataset-name", "animals")
        page.get_by_role("button", name="Create dataset", exact=True).click()
        page.get_by_role("button", name="New version", exact=True).click()
        page.wait_for_selector("[data-uploader]")
        page.set_input_files("[data-upload-files]", str(csv_file))
        page.get_by_role("button", name="Upload", exact=True).click()
        row = page.locator("[data-upload-list] li").first
        pages.wait_until(lambda: row.get_attribute("data-done") == "true", seconds=60)
        assert row.get_attribute("data-parts") == str(parts)  # the bar moved once a part
        page.wait_for_selector("tr[data-file='animals.csv']")  # the page reloaded with it
        pages.shot(page, "10-data-draft")
        page.fill("#commit-message", "first animals")
        page.get_by_role("button", name="Commit", exact=True).click()
        page.wait_for_selector("[data-version='1']")
        page.click("tr[data-file='animals.csv'] a")
        page.wait_for_selector("[data-preview]")
        first_cells = page.locator("[data-preview] tbody tr").first.locator("td").all_inner_texts()
        assert first_cells == ["0", "dog", "0.0"]

        def report_shown() -> bool:
            page.reload()
            return page.locator("[data-quality]").count() == 1

        pages.wait_until(report_shown, seconds=60)
        report = page.locator("[data-quality]").inner_text()
        assert "1500000" in report.replace(",", "")
        pages.shot(page, "11-data-file")
        assert not [e for e in errors if "Content Security Policy" in e], errors
        assert re.search(r"/ui/data/datasets/[0-9a-z]+/file", page.url)
        page.close()
