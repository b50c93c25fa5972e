"""GPU quotas: how many GPUs a project's training jobs may hold at once.

A project's quota is its row in ``train_gpu_quotas`` (set by a holder of
``train.quota.manage``, an admin of the project or its organization), else the setting
``gpu_quota``; with neither there is no limit. A job's GPUs are
``resources.gpus`` times ``distributed.nodes`` of its spec; the GPUs in use are those of the
project's ``train.run`` jobs that are running.

* **At submission** a job asking for more GPUs than its project's quota could ever give
  is refused with 422 naming ``params.resources.gpus`` (through the job type's
  ``check``): it would wait forever.
* **Admission** (the core's ``admit_job`` hook, at submission, release and start): a job
  that would take the project over its quota waits as ``held``, with the reason in its
  progress message; the core offers held jobs again whenever a job of the project
  finishes, by priority then submission order, and this policy lets one through
  once the GPUs are free. Within the quota this policy has no opinion and the next
  one (the core's limit on running jobs) decides.

The quota counts what the platform started. GPUs used outside it (another scheduler on
the same cluster) are not seen; on Kubernetes, pair it with a ``ResourceQuota`` on
``requests.nvidia.com/gpu`` for the namespace.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

from litestar import delete as delete_route
from litestar import get, put
from litestar.params import PathParameter
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from zhongtai.hooks.events import utcnow
from zhongtai.identity.access import NotFound
from zhongtai.identity.guard import AccessDep, authenticated, requires
from zhongtai.identity.models import Project
from zhongtai.jobs import Admission, AdmissionRequest, InvalidParams
from zhongtai.jobs.models import Job
from zhongtai.ui import Panel, Redirect, View
from zhongtai.web.params import PlatformDep
from zhongtai_train.backends import Backend
from zhongtai_train.models import GPU_COUNTED_TYPES, GpuQuota
from zhongtai_train.permissions import EXPERIMENT_READ, QUOTA_MANAGE
from zhongtai_train.tracking import settings_of

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from zhongtai.platform import Platform

__all__ = [
    "QUOTA_PANELS",
    "QUOTA_ROUTES",
    "admit",
    "check_gpus",
    "gpus_in_use",
    "gpus_of",
    "quota_of",
]


def gpus_of(params: Any) -> int:
    """GPUs a training or evaluation job's (stored or validated) params ask for, all
    nodes together."""
    if isinstance(params, BaseModel):
        params = params.model_dump()
    if not isinstance(params, dict):
        return 0
    resources = params.get("resources") or {}
    distributed = params.get("distributed") or {}
    try:
        return max(0, int(resources.get("gpus", 0))) * max(1, int(distributed.get("nodes", 1)))
    except (TypeError, ValueError):
        return 0


def quota_of(platform: Platform, session: Session, project_id: str) -> int | None:
    """The project's quota: its own, else the setting's; None means no limit."""
    own = session.get(GpuQuota, project_id)
    if own is not None:
        return own.gpus
    return settings_of(platform).gpu_quota


def gpus_in_use(session: Session, project_id: str, *, besides: str | None = None) -> int:
    """GPUs held by the project's running training jobs (other than ``besides``)."""
    query = select(Job.id, Job.params).where(
        Job.project_id == project_id, Job.type.in_(GPU_COUNTED_TYPES), Job.status == "running"
    )
    return sum(gpus_of(params) for job_id, params in session.execute(query) if job_id != besides)


def check_gpus(platform: Platform, session: Session, project_id: str, params: Any) -> None:
    """Refuse (422) a job that asks for more GPUs than its project may ever hold."""
    wanted = gpus_of(params)
    if wanted == 0:
        return
    limit = quota_of(platform, session, project_id)
    if limit is not None and wanted > limit:
        raise InvalidParams(
            "resources.gpus",
            f"the job needs {wanted} GPUs; the project's quota is {limit}",
        )


def admit(request: AdmissionRequest, platform: Platform) -> Admission | None:
    """Hold a training job that would take its project over its GPU quota."""
    job = request.job
    if job.type not in GPU_COUNTED_TYPES:
        return None
    wanted = gpus_of(job.params)
    if wanted == 0:
        return None
    limit = quota_of(platform, request.session, job.project_id)
    if limit is None:
        return None
    if wanted > limit:
        # Submitted before the quota was lowered: it can never start.
        return Admission.hold(f"needs {wanted} GPUs; the project's GPU quota is {limit}")
    used = gpus_in_use(request.session, job.project_id, besides=job.id)
    if used + wanted > limit:
        return Admission.hold(
            f"waiting for GPUs: {used} of the project's {limit} in use, this job needs {wanted}"
        )
    return None


# --------------------------------------------------------------------------- the API


ProjectRef = Annotated[str, PathParameter(pattern=r"^[0-9a-z]{1,32}$")]


class QuotaIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gpus: int = Field(ge=0, le=100_000, description="GPUs the project's jobs may hold at once")


def _quota_dict(platform: Platform, session: Session, project_id: str) -> dict[str, Any]:
    own = session.get(GpuQuota, project_id)
    limit = own.gpus if own is not None else settings_of(platform).gpu_quota
    held = session.scalars(
        select(Job.progress_message).where(
            Job.project_id == project_id, Job.type.in_(GPU_COUNTED_TYPES), Job.status == "held"
        )
    ).all()
    return {
        "project": project_id,
        "gpus": limit,
        "source": "project" if own is not None else "setting",
        "in_use": gpus_in_use(session, project_id),
        "waiting_jobs": len(held),
        "updated_at": own.updated_at.isoformat() if own is not None else None,
    }


@get("/quotas/{project_id:str}", sync_to_thread=True, opt=requires(EXPERIMENT_READ))
def get_quota(platform: PlatformDep, access: AccessDep, project_id: ProjectRef) -> dict[str, Any]:
    """The project's GPU quota (``gpus``: null means no limit), where it comes from, and
    how many GPUs its running training jobs hold."""
    with platform.db.session() as session:
        access.require(session, project_id=project_id if session.get(Project, project_id) else None)
        return _quota_dict(platform, session, project_id)


@put("/quotas/{project_id:str}", sync_to_thread=True, opt=requires(QUOTA_MANAGE))
def set_quota(
    platform: PlatformDep, access: AccessDep, project_id: ProjectRef, data: QuotaIn
) -> dict[str, Any]:
    """Set the project's own GPU quota. Lowering it stops no running job; jobs that no
    longer fit wait when they next ask to start."""
    with platform.db.transaction() as session:
        exists = session.get(Project, project_id) is not None
        access.require(session, project_id=project_id if exists else None)
        access.require(session, project_id=project_id, permission=QUOTA_MANAGE)
        row = session.get(GpuQuota, project_id)
        if row is None:
            row = GpuQuota(project_id=project_id, gpus=data.gpus)
            session.add(row)
        row.gpus = data.gpus
        row.updated_by = access.principal.user_id
        row.updated_at = utcnow()
        session.flush()
        access.audit(
            action="train.quota.set",
            target_kind="project",
            target_id=project_id,
            project_id=project_id,
            detail={"gpus": data.gpus},
        )
        answer = _quota_dict(platform, session, project_id)
    _release_held(platform, project_id)
    return answer


@delete_route(
    "/quotas/{project_id:str}", sync_to_thread=True, opt=requires(QUOTA_MANAGE), status_code=200
)
def clear_quota(platform: PlatformDep, access: AccessDep, project_id: ProjectRef) -> dict[str, Any]:
    """Remove the project's own quota: the setting ``gpu_quota`` applies again."""
    with platform.db.transaction() as session:
        exists = session.get(Project, project_id) is not None
        access.require(session, project_id=project_id if exists else None)
        access.require(session, project_id=project_id, permission=QUOTA_MANAGE)
        row = session.get(GpuQuota, project_id)
        if row is not None:
            session.delete(row)
            session.flush()
        access.audit(
            action="train.quota.clear",
            target_kind="project",
            target_id=project_id,
            project_id=project_id,
        )
        answer = _quota_dict(platform, session, project_id)
    _release_held(platform, project_id)
    return answer


def _release_held(platform: Platform, project_id: str) -> None:
    """A raised quota may let held jobs start now rather than when a job next ends."""
    from zhongtai.jobs.engine import jobs_engine

    jobs_engine(platform).release_held(project_id)


@get("/backends", sync_to_thread=True, opt=authenticated())
def list_backends(platform: PlatformDep) -> dict[str, Any]:
    """The training backends installed here, the default, and each one's options schema
    (``operator_options`` are those only the operator's settings may give)."""
    from zhongtai.drivers import available_drivers, load_driver
    from zhongtai_train.backends import NAMESPACE

    items = []
    for name, error in sorted(available_drivers(NAMESPACE).items()):
        entry: dict[str, Any] = {"name": name, "available": error is None, "error": error}
        if error is None:
            cls = load_driver(NAMESPACE, name)
            if isinstance(cls, type) and issubclass(cls, Backend):
                entry.update(cls.describe())
                entry["operator_options"] = sorted(cls.operator_options)
        items.append(entry)
    return {"default": settings_of(platform).default_backend, "items": items}


QUOTA_ROUTES = [get_quota, set_quota, clear_quota, list_backends]


# --------------------------------------------------------------------------- the page


def _page(view: View) -> Mapping[str, Any]:
    """The current project's GPU quota, the GPUs in use, the jobs waiting for GPUs, and
    for its admins a form to change the quota."""
    if view.project is None:
        return {"quota": None, "can_manage": False, "waiting": [], "errors": {}}
    with view.platform.db.session() as session:
        view.access.require(session, project_id=view.project.id, permission=EXPERIMENT_READ)
        quota = _quota_dict(view.platform, session, view.project.id)
        can_manage = view.access.has(session, QUOTA_MANAGE, project_id=view.project.id)
        waiting = [
            {"id": job_id, "gpus": gpus_of(params), "why": why}
            for job_id, params, why in session.execute(
                select(Job.id, Job.params, Job.progress_message)
                .where(
                    Job.project_id == view.project.id,
                    Job.type.in_(GPU_COUNTED_TYPES),
                    Job.status == "held",
                )
                .order_by(Job.priority.desc(), Job.id)
                .limit(50)
            )
        ]
    return {"quota": quota, "can_manage": can_manage, "waiting": waiting, "errors": {}}


def _post(view: View) -> Redirect | Mapping[str, Any]:
    """Set (``gpus``) or remove (``action=clear``) the project's quota."""
    from zhongtai.ui.core_pages import call_api

    if view.project is None:
        raise NotFound("project")
    here = view.url("/ui/train/quota")
    if str(view.form.get("action")) == "clear":
        _done, errors = call_api(clear_quota, view, project_id=view.project.id)
    else:
        _done, errors = call_api(
            set_quota,
            view,
            QuotaIn,
            data={"gpus": str(view.form.get("gpus") or "").strip()},
            project_id=view.project.id,
        )
    if errors:
        return {**_page(view), "errors": errors}
    return Redirect(here, flash="quota saved")


QUOTA_PANELS = [
    Panel(
        name="quota",
        title={"en": "GPU quota", "zh": "GPU 配额"},
        path="/quota",
        template="quota.html",
        icon="square",
        order=90,
        permission=EXPERIMENT_READ.name,
        context=_page,
        on_post=_post,
    )
]
