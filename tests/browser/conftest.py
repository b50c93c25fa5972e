"""Browser tests: headless Chromium (Debian's ``chromium``) driven by Playwright.

Screenshots of the main pages go to ``$ZHONGTAI_SCREENSHOTS`` (default: a folder
under pytest's temporary directory); the run prints where. Without Chromium the
tests are skipped, unless ``ZHONGTAI_REQUIRE_BROWSER`` is set (CI sets it), when
they fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
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


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for folder in _SHOTS:
        shots = sorted(p.name for p in folder.glob("*.png"))
        if shots:
            terminalreporter.write_line(f"browser screenshots ({len(shots)}): {folder}")
