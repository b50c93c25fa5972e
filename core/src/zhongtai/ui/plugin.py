"""The web UI as a built-in plugin: its routes, and the core's own panels.

The core's pages go in through ``register_panels`` like any plugin's; the jobs
built-in plugin adds the jobs pages the same way (:mod:`zhongtai.jobs.ui`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import zhongtai

if TYPE_CHECKING:
    from zhongtai.platform import Platform
    from zhongtai.ui.panels import Panel


@zhongtai.hookimpl
def register_routes(platform: Platform) -> list[Any]:
    from zhongtai.ui.web import ui_routes

    return ui_routes(platform)


@zhongtai.hookimpl
def register_panels() -> list[Panel]:
    from zhongtai.ui.core_pages import PANELS

    return list(PANELS)
