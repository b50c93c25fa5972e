"""``POST /api/v1/train/jobs``: start a training job from a spec file, JSON or YAML.

Teams keep training specs next to their code as YAML (``train.yaml``) and submit them
from CI: ``curl --data-binary @train.yaml -H "Content-Type: application/yaml"
".../api/v1/train/jobs?project=<id>"``. The body is the ``train.run`` spec itself (what
``params`` holds in ``POST /api/v1/jobs``), and the answer is the job.

YAML is read with PyYAML's safe loader only: tags that build Python objects
(``!!python/object/apply:os.system``) are refused with 422, never constructed. Anchors
and aliases are refused too: a few lines of nested aliases ("billion laughs") would
otherwise expand into gigabytes. JSON is JSON; any other content type is 415.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import yaml
from litestar import Request, post
from litestar.exceptions import HTTPException
from litestar.params import Parameter
from pydantic import BaseModel, ValidationError

from zhongtai.identity.guard import AccessDep, requires
from zhongtai.jobs import InvalidParams
from zhongtai.web.errors import field_error
from zhongtai.web.params import PlatformDep
from zhongtai_train.permissions import JOB_RUN
from zhongtai_train.spec import TrainSpec

if TYPE_CHECKING:
    from zhongtai.identity.guard import Access
    from zhongtai.jobs import JobType
    from zhongtai.platform import Platform

__all__ = ["SUBMIT_ROUTES", "load_spec", "submit_job", "submit_run"]

MAX_SPEC_BYTES = 256 * 1024
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


class SpecSyntaxError(ValueError):
    """The body is not a spec document (the message says where)."""


class _SafeNoAliases(yaml.SafeLoader):
    """The safe loader, refusing anchors and aliases."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases are not accepted", event.start_mark
            )
        return super().compose_node(parent, index)


def load_spec(body: bytes, content_type: str) -> dict[str, Any]:
    """The spec mapping in ``body``; SpecSyntaxError if it is not one."""
    if len(body) > MAX_SPEC_BYTES:
        raise SpecSyntaxError(f"a spec is at most {MAX_SPEC_BYTES // 1024} KiB")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecSyntaxError("the spec is not UTF-8 text") from None
    if content_type in YAML_TYPES:
        try:
            found = yaml.load(text, Loader=_SafeNoAliases)  # noqa: S506 - a SafeLoader
        except yaml.YAMLError as exc:
            raise SpecSyntaxError(f"not safe YAML: {exc}") from None
    else:
        try:
            found = json.loads(text)
        except ValueError as exc:
            raise SpecSyntaxError(f"not JSON: {exc}") from None
    if not isinstance(found, dict):
        raise SpecSyntaxError("the spec must be a mapping of fields")
    return found


@post("/jobs", sync_to_thread=True, opt=requires(JOB_RUN), status_code=201)
def submit_training(
    request: Request[Any, Any, Any],
    platform: PlatformDep,
    access: AccessDep,
    project: Annotated[str, Parameter(query="project", pattern=r"^[0-9a-z]{1,32}$")],
    body: bytes,
) -> dict[str, Any]:
    """Submit a ``train.run`` job whose spec is the body, as JSON or YAML."""
    from zhongtai.jobs.engine import JobRefused

    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in (*YAML_TYPES, "application/json"):
        raise HTTPException(
            status_code=415,
            detail="send the spec as application/json or application/yaml",
        )
    try:
        spec = TrainSpec.model_validate(load_spec(body, content_type))
    except SpecSyntaxError as exc:
        raise field_error("body", str(exc), 422) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise field_error(where or "body", str(first["msg"]), 422) from None
    try:
        return submit_run(platform, access, project, spec)
    except InvalidParams as exc:
        raise field_error(exc.field, exc.message, 422) from None
    except JobRefused as exc:
        raise HTTPException(
            status_code=429, detail=str(exc), headers={"Retry-After": "5"}
        ) from None


def submit_run(platform: Platform, access: Access, project: str, spec: TrainSpec) -> dict[str, Any]:
    """Queue a ``train.run`` job of ``project`` for the caller (see :func:`submit_job`)."""
    from zhongtai_train.jobs import TRAIN_RUN

    return submit_job(platform, access, project, TRAIN_RUN, spec)


def submit_job(
    platform: Platform, access: Access, project: str, job_type: JobType, params: BaseModel
) -> dict[str, Any]:
    """Queue a job of one of this plugin's types (``train.run``, ``train.sweep``,
    ``train.evaluate``) in ``project`` for the caller, with the checks and the audit
    record of ``POST /api/v1/jobs``; the job as the jobs API shows it. The spec file
    route and the UI's forms all submit through here.

    Raises:
        NotFound, Forbidden: the caller may not start the job in the project.
        InvalidParams: the job type's check refused the parameters (422 naming the field).
        JobRefused: admission refused it (429).
    """
    from zhongtai.identity.permissions import JOBS_SUBMIT
    from zhongtai.jobs.api import job_dict
    from zhongtai.jobs.engine import jobs_engine

    engine = jobs_engine(platform)
    engine.driver.check()
    with platform.db.transaction() as session:
        # A project the caller cannot see is a 404 (require's answer), one it may not
        # start the job in a 403.
        if job_type.permission is not None:
            access.require(session, project_id=project, permission=job_type.permission)
        access.require(session, project_id=project, permission=JOBS_SUBMIT)
        job = engine.submit(
            session,
            job_type=job_type,
            project_id=project,
            principal=access.principal,
            params=params,
        )
        access.audit(action="job.submit", target_kind="job", target_id=job.id, project_id=project)
        answer = job_dict(job)
    engine.dispatch([job])
    return answer


SUBMIT_ROUTES = [submit_training]
