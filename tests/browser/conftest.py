"""Browser tests: headless Chromium (Debian's ``chromium``) driven by Playwright.

Screenshots of the main pages go to ``$ZHONGTAI_SCREENSHOTS`` (default: a folder
under pytest's temporary directory); the run prints where. Without Chromium the
tests are skipped, unless ``ZHONGTAI_REQUIRE_BROWSER`` is set (CI sets it), when
they fail.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("ZHONGTAI_CHROMIUM") or shutil.which("chromium") or ""
FLAGS = [
    "--headless=new",
    "--no-sandbox",  # the tests may run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
_SHOTS: list[Path] = []


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("ZHONGTAI_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    _SHOTS.append(folder)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one test module. Not longer: while Playwright's synchronous API is
    open, the test thread counts as running an event loop, and later tests that call
    ``asyncio.run`` would fail."""
    if not CHROMIUM:
        if os.environ.get("ZHONGTAI_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield launched
        finally:
            launched.close()


class Pages:
    """What the tests do with pages: screenshots, waiting, and watching for errors."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.server_errors: list[str] = []  # the server's logged exceptions, newest last

    def shot(self, page: Any, name: str) -> None:
        """A full-page screenshot ``<name>.png`` in the screenshots folder."""
        page.screenshot(path=str(self.folder / f"{name}.png"), full_page=True)

    def wait_until(self, predicate: Callable[[], object], seconds: float = 30) -> None:
        """Poll from the test (the pages' CSP forbids the eval of wait_for_function).
        A timeout names the server's last logged exception, if there was one: the
        short test summary then says why a page never showed what was awaited."""
        deadline = time.monotonic() + seconds
        while not predicate():
            if time.monotonic() >= deadline:
                last = self.server_errors[-1] if self.server_errors else "none"
                raise AssertionError(f"timed out; the server's last error: {last}")
            time.sleep(0.05)

    @staticmethod
    def watch_errors(page: Any) -> list[str]:
        """Console errors (a CSP violation is one), script errors and failed requests;
        not the browser's own request for /favicon.ico, which the platform does not
        serve. The list fills as they happen."""
        errors: list[str] = []

        def console(message: Any) -> None:
            if message.type == "error" and "favicon.ico" not in message.location.get("url", ""):
                errors.append(f"{message.text} {message.location.get('url', '')}")

        page.on("console", console)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on(
            "response",
            lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None,
        )
        return errors


class _ServerErrors(logging.Handler):
    """Keeps ``type: message`` of each exception the platform logs (the innermost cause)."""

    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None and (exc.__cause__ or exc.__context__) is not None:
            exc = exc.__cause__ or exc.__context__
        where = record.getMessage()
        self.into.append(f"{where}: {type(exc).__name__}: {exc}" if exc else where)


@pytest.fixture
def pages(screenshots: Path) -> Iterator[Pages]:
    found = Pages(screenshots)
    handler = _ServerErrors(found.server_errors)
    logger = logging.getLogger("zhongtai")
    logger.addHandler(handler)
    try:
        yield found
    finally:
        logger.removeHandler(handler)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for folder in _SHOTS:
        shots = sorted(p.name for p in folder.glob("*.png"))
        if shots:
            terminalreporter.write_line(f"browser screenshots ({len(shots)}): {folder}")
