"""The data plugin's hook implementations (the module its entry point names)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import zhongtai

# The tables, as soon as the plugin loads: the core checks their names and Alembic's
# autogenerate sees them.
from zhongtai_data import models  # noqa: F401
from zhongtai_data.permissions import PERMISSIONS
from zhongtai_data.settings import DataSettings

if TYPE_CHECKING:
    from zhongtai.identity.roles import Permission
    from zhongtai.jobs import JobType
    from zhongtai.platform import Platform
    from zhongtai.ui import Panel

MIGRATIONS = Path(__file__).parent / "migrations" / "versions"


@zhongtai.hookimpl
def register_settings() -> type[DataSettings]:
    return DataSettings


@zhongtai.hookimpl
def register_permissions() -> list[Permission]:
    return PERMISSIONS


@zhongtai.hookimpl
def register_migrations() -> Path:
    """The ``data`` Alembic branch."""
    return MIGRATIONS


@zhongtai.hookimpl
def register_routes() -> list[Any]:
    """``/api/v1/data/datasets…``."""
    from zhongtai_data.api import ROUTES

    return list(ROUTES)


@zhongtai.hookimpl
def register_job_types() -> list[JobType]:
    """``data.quality``: schema, rows and quality report of a version's tabular files;
    ``data.sweep``: expired uploads; ``data.import``: a source into a new version."""
    from zhongtai_data.quality import QUALITY
    from zhongtai_data.sources import IMPORT
    from zhongtai_data.sweep import SWEEP

    return [QUALITY, SWEEP, IMPORT]


@zhongtai.hookimpl
def startup(platform: Platform) -> None:
    """Queue the sweep of expired uploads, unless one is waiting already."""
    import logging

    from zhongtai_data.sweep import schedule_sweep

    try:
        schedule_sweep(platform)
    except Exception:  # the API works without it; the next start tries again
        logging.getLogger("zhongtai.data").warning("could not queue data.sweep", exc_info=True)


@zhongtai.hookimpl
def register_panels() -> list[Panel]:
    from zhongtai_data.panels import PANELS

    return list(PANELS)
