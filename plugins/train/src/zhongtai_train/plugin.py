"""The train plugin's hook implementations (the module its entry point names)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zhongtai

# The tables, as soon as the plugin loads: the core checks their names and Alembic's
# autogenerate sees them.
from zhongtai_train import models  # noqa: F401
from zhongtai_train.permissions import PERMISSIONS
from zhongtai_train.settings import TrainSettings

if TYPE_CHECKING:
    from zhongtai.identity.roles import Permission
    from zhongtai.jobs import JobType
    from zhongtai.platform import Platform
    from zhongtai.ui import Panel

log = logging.getLogger("zhongtai.train")

MIGRATIONS = Path(__file__).parent / "migrations" / "versions"


@zhongtai.hookimpl
def register_settings() -> type[TrainSettings]:
    return TrainSettings


@zhongtai.hookimpl
def register_permissions() -> list[Permission]:
    return PERMISSIONS


@zhongtai.hookimpl
def register_migrations() -> Path:
    """The ``train`` Alembic branch."""
    return MIGRATIONS


@zhongtai.hookimpl
def register_routes() -> list[Any]:
    """``/api/v1/train/experiments``, ``…/runs``, ``…/gpus``."""
    from zhongtai_train.api import ROUTES
    from zhongtai_train.gpus import GPU_ROUTES

    return [*ROUTES, *GPU_ROUTES]


@zhongtai.hookimpl
def register_root_routes() -> dict[str, list[Any]]:
    """``/mlflow/…``: MLflow's REST API, artifact proxy and UI, behind the platform's auth."""
    from zhongtai_train.proxy import PROXY_ROUTES

    return {"mlflow": list(PROXY_ROUTES)}


@zhongtai.hookimpl
def register_job_types() -> list[JobType]:
    """``train.run``: training code on a backend (local, ray, kubernetes, …)."""
    from zhongtai_train.jobs import TRAIN_RUN

    return [TRAIN_RUN]


@zhongtai.hookimpl
def register_panels() -> list[Panel]:
    from zhongtai_train.gpus import GPU_PANELS
    from zhongtai_train.panels import PANELS

    return [*PANELS, *GPU_PANELS]


@zhongtai.hookimpl
def startup(platform: Platform) -> None:
    """Sample this node's GPUs (the MLflow server itself starts on first use)."""
    from zhongtai_train.gpus import start_sampler
    from zhongtai_train.tracking import tracking

    tracking(platform)
    try:
        start_sampler(platform)
    except Exception:  # monitoring is an extra; the plugin works without it
        log.warning("could not start the GPU sampler", exc_info=True)


@zhongtai.hookimpl
async def shutdown(platform: Platform) -> None:
    """Stop the GPU sampler and the MLflow server (and close the connections to it)."""
    import anyio.to_thread

    from zhongtai_train.gpus import stop_sampler
    from zhongtai_train.proxy import close_session
    from zhongtai_train.tracking import SERVER

    await anyio.to_thread.run_sync(stop_sampler, platform)
    if SERVER in platform.stash:
        await close_session(platform.stash[SERVER])
        await anyio.to_thread.run_sync(platform.stash[SERVER].stop)
