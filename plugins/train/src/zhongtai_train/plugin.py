"""The train plugin's hook implementations (the module its entry point names)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zhongtai
from zhongtai.jobs import admits_only

# The tables, as soon as the plugin loads: the core checks their names and Alembic's
# autogenerate sees them.
from zhongtai_train import evaluation_models, models  # noqa: F401
from zhongtai_train.permissions import PERMISSIONS
from zhongtai_train.settings import TrainSettings

if TYPE_CHECKING:
    from zhongtai.hooks.events import Event
    from zhongtai.identity.roles import Permission
    from zhongtai.jobs import Admission, AdmissionRequest, JobType
    from zhongtai.platform import Platform
    from zhongtai.ui import Panel

log = logging.getLogger("zhongtai.train")

MIGRATIONS = Path(__file__).parent / "migrations" / "versions"


@zhongtai.hookimpl
def register_hookspecs() -> list[object]:
    """``register_evaluators``: other plugins add evaluators for ``train.evaluate``."""
    from zhongtai_train.hookspecs import EvaluationHooks

    return [EvaluationHooks]


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
    from zhongtai_train.evaluate import EVALUATION_ROUTES
    from zhongtai_train.gpus import GPU_ROUTES
    from zhongtai_train.quotas import QUOTA_ROUTES
    from zhongtai_train.submit import SUBMIT_ROUTES
    from zhongtai_train.sweep import SWEEP_ROUTES

    return [
        *ROUTES,
        *GPU_ROUTES,
        *QUOTA_ROUTES,
        *SUBMIT_ROUTES,
        *SWEEP_ROUTES,
        *EVALUATION_ROUTES,
    ]


@zhongtai.hookimpl
def register_root_routes() -> dict[str, list[Any]]:
    """``/mlflow/…``: MLflow's REST API, artifact proxy and UI, behind the platform's auth."""
    from zhongtai_train.proxy import PROXY_ROUTES

    return {"mlflow": list(PROXY_ROUTES)}


@zhongtai.hookimpl
def register_job_types() -> list[JobType]:
    """``train.run``: training code on a backend (local, ray, kubernetes, …);
    ``train.sweep``: a hyperparameter search whose trials are ``train.run`` jobs;
    ``train.evaluate``: a run's model scored on a dataset version."""
    from zhongtai_train.evaluate import TRAIN_EVALUATE
    from zhongtai_train.jobs import TRAIN_RUN
    from zhongtai_train.sweep import TRAIN_SWEEP

    return [TRAIN_RUN, TRAIN_SWEEP, TRAIN_EVALUATE]


@zhongtai.hookimpl
@admits_only(*models.GPU_COUNTED_TYPES)
def admit_job(request: AdmissionRequest, platform: Platform) -> Admission | None:
    """GPU quotas: a training job that would take its project over waits as held (other
    jobs never wait for this policy: see ``admits_only``)."""
    from zhongtai_train.quotas import admit

    return admit(request, platform)


@zhongtai.hookimpl
def on_event(event: Event, platform: Platform) -> None:
    """Evaluate successful training jobs of the experiments the setting
    ``evaluate_after_training`` names."""
    if event.name != "job.succeeded" or getattr(event, "job_type", None) != "train.run":
        return  # every event of the platform comes here: decide before importing
    from zhongtai_train.evaluate import on_event as evaluate_after_training

    evaluate_after_training(event, platform)


@zhongtai.hookimpl
def register_panels() -> list[Panel]:
    from zhongtai_train.evaluate import EVALUATION_PANELS
    from zhongtai_train.forms import FORM_PANELS
    from zhongtai_train.gpus import GPU_PANELS
    from zhongtai_train.panels import PANELS
    from zhongtai_train.quotas import QUOTA_PANELS
    from zhongtai_train.sweep import SWEEP_PANELS
    from zhongtai_train.wizard import WIZARD_PANELS

    return [
        *PANELS,
        *WIZARD_PANELS,
        *GPU_PANELS,
        *QUOTA_PANELS,
        *SWEEP_PANELS,
        *EVALUATION_PANELS,
        *FORM_PANELS,
    ]


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
