"""The "new training" wizard and the training job page.

``/ui/train/new`` asks in four steps — code, data, resources and backend, review — for
what a ``train.run`` job needs. It is one server-rendered form: every step posts the
whole form (the other steps' answers ride along as hidden fields), the server
validates the spec with the same model and checks the API uses, shows the current
step's errors next to its fields, and moves on only when they are gone. The review
step shows the exact API request (JSON, and as ``curl``) before "Run" submits it.
Arguments are entered one per line, never as a command line to be split.

``/ui/train/jobs/{job_id}`` follows one training job: its state, live log (the core's
log viewer on ``logs/stream``), the MLflow run's loss curves (refreshed while it
runs, as on the run page), the GPUs its processes use, and Cancel.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from zhongtai.identity.access import NotFound
from zhongtai.ui import Panel, Redirect, View

if TYPE_CHECKING:
    from zhongtai.jobs import JobType

__all__ = [
    "STEPS",
    "WIZARD_PANELS",
    "api_request",
    "check_params",
    "form_to_spec",
    "parse_pairs",
    "project_choices",
    "scalar",
]

STEPS = ("code", "data", "resources", "review")
INPUT_ROWS = 3
RUN = "train.job.run"
READ = "train.experiment.read"

# Where each field of the spec is asked for: (step, form field).
_FIELDS: dict[str, tuple[int, str]] = {
    "code.kind": (0, "code_kind"),
    "code.git.url": (0, "git_url"),
    "code.git.commit": (0, "git_commit"),
    "code.git.subdir": (0, "git_subdir"),
    "code.image.image": (0, "image"),
    "code.archive.dataset_version": (0, "archive_version"),
    "code.archive.path": (0, "archive_path"),
    "code.archive.subdir": (0, "git_subdir"),
    "code.dataset_version": (0, "archive_version"),
    "code.path": (0, "archive_path"),
    "code": (0, "code_kind"),
    "entry_point": (0, "entry_point"),
    "args": (0, "args"),
    "inputs": (1, "inputs"),
    "backend": (2, "backend"),
    "backend_options": (2, "backend"),
    "resources.cpu": (2, "cpu"),
    "resources.memory_mb": (2, "memory_mb"),
    "resources.gpus": (2, "gpus"),
    "distributed.procs_per_node": (2, "procs_per_node"),
    "distributed.nodes": (2, "procs_per_node"),
    "timeout": (2, "timeout"),
    "experiment": (2, "experiment"),
    "run_name": (2, "run_name"),
    "hyperparameters": (2, "hyperparameters"),
    "env": (2, "env"),
}
FORM_FIELDS = [
    *("code_kind", "git_url", "git_commit", "git_subdir", "image", "entry_point", "args"),
    *("archive_version", "archive_path"),
    *("backend", "cpu", "memory_mb", "gpus", "procs_per_node", "timeout"),
    *("experiment", "run_name", "hyperparameters", "env"),
    *(f"input_{k}_{i}" for i in range(INPUT_ROWS) for k in ("name", "version")),
]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def scalar(text: str) -> bool | int | float | str:
    """A hyperparameter's value as typed: true/false, an integer, a number, else text."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def parse_pairs(text: str, field: str) -> tuple[dict[str, str], dict[str, str]]:
    """``name=value`` lines as a dict, and errors by field for lines that are not."""
    pairs: dict[str, str] = {}
    for number, line in enumerate(_lines(text), start=1):
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            return {}, {field: f"line {number}: write name=value"}
        pairs[name.strip()] = value.strip()
    return pairs, {}


def form_to_spec(form: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The ``train.run`` params the form describes, and errors of its own syntax."""

    def get(name: str) -> str:
        return str(form.get(name) or "").strip()

    errors: dict[str, str] = {}
    spec: dict[str, Any] = {}
    if get("code_kind") == "image":
        spec["code"] = {"kind": "image", "image": get("image")}
    elif get("code_kind") == "archive":
        archive = {
            "kind": "archive",
            "dataset_version": get("archive_version"),
            "path": get("archive_path"),
        }
        if get("git_subdir"):
            archive["subdir"] = get("git_subdir")
        spec["code"] = archive
    else:
        code = {"kind": "git", "url": get("git_url"), "commit": get("git_commit")}
        if get("git_subdir"):
            code["subdir"] = get("git_subdir")
        spec["code"] = code
    entry = _lines(str(form.get("entry_point") or ""))
    if entry:
        spec["entry_point"] = entry
    spec["args"] = _lines(str(form.get("args") or ""))
    inputs = []
    for i in range(INPUT_ROWS):
        name, version = get(f"input_name_{i}"), get(f"input_version_{i}")
        if name or version:
            inputs.append({"name": name, "dataset_version": version})
    spec["inputs"] = inputs
    if get("backend"):
        spec["backend"] = get("backend")
    resources: dict[str, Any] = {}
    for field in ("cpu", "memory_mb", "gpus"):
        if get(field):
            resources[field] = get(field)
    spec["resources"] = resources
    if get("procs_per_node"):
        spec["distributed"] = {"procs_per_node": get("procs_per_node")}
    if get("timeout"):
        spec["timeout"] = get("timeout")
    spec["experiment"] = get("experiment") or "Default"
    if get("run_name"):
        spec["run_name"] = get("run_name")
    hyper, problems = parse_pairs(str(form.get("hyperparameters") or ""), "hyperparameters")
    errors.update(problems)
    spec["hyperparameters"] = {k: scalar(v) for k, v in hyper.items()}
    env, problems = parse_pairs(str(form.get("env") or ""), "env")
    errors.update(problems)
    spec["env"] = env
    return spec, errors


def _where(loc: str) -> tuple[int, str]:
    """The step and form field an error of the spec at ``loc`` belongs to."""
    if loc.startswith("inputs."):
        parts = loc.split(".")
        index = parts[1] if len(parts) > 1 and parts[1].isdigit() else "0"
        column = "version" if "dataset_version" in loc else "name"
        return 1, f"input_{column}_{index}"
    best = max(
        (key for key in _FIELDS if loc == key or loc.startswith(key + ".")), key=len, default=""
    )
    return _FIELDS.get(best, (2, "_"))


def check_params(
    view: View, job_type: JobType, params: Mapping[str, Any]
) -> tuple[BaseModel | None, list[tuple[str, str]]]:
    """``params`` checked as ``POST /api/v1/jobs`` checks them for ``job_type`` in the
    current project: the schema first, then the type's ``check`` (backend, options,
    datasets, quota, …). The validated params (None if the schema refused them) and
    every problem as (location in the params, message)."""
    from zhongtai.jobs import InvalidParams

    try:
        validated = job_type.params.model_validate(params)
    except ValidationError as exc:
        return None, [
            (".".join(str(part) for part in err["loc"]), str(err["msg"])) for err in exc.errors()
        ]
    if view.project is None:
        return validated, [("_", "choose a project first")]
    if job_type.check is not None:
        with view.platform.db.session() as session:
            try:
                job_type.check(view.platform, session, view.project.id, validated)
            except InvalidParams as exc:
                return validated, [(exc.field, exc.message)]
    return validated, []


def _validate(view: View, spec: dict[str, Any]) -> dict[str, tuple[int, str]]:
    """Every problem of the spec: message -> (step, field), the schema's and the
    platform's alike."""
    from zhongtai_train.jobs import TRAIN_RUN

    _validated, problems = check_params(view, TRAIN_RUN, spec)
    return {message: (0, "_") if loc == "_" else _where(loc) for loc, message in problems}


def project_choices(view: View) -> dict[str, Any]:
    """The backends installed and the project's committed dataset versions."""
    from zhongtai.drivers import available_drivers
    from zhongtai_train.backends import NAMESPACE
    from zhongtai_train.tracking import settings_of

    backends = sorted(name for name, error in available_drivers(NAMESPACE).items() if not error)
    versions: list[dict[str, str]] = []
    record = view.platform.plugins.get("data")
    if record is not None and record.loaded and view.project is not None:
        from sqlalchemy import select

        from zhongtai_data.models import Dataset, Version

        with view.platform.db.session() as session:
            rows = session.execute(
                select(Version.id, Version.number, Dataset.name)
                .join(Dataset, Dataset.id == Version.dataset_id)
                .where(Dataset.project_id == view.project.id, Version.status == "committed")
                .order_by(Dataset.name, Version.number.desc())
                .limit(200)
            ).all()
        versions = [{"id": r[0], "label": f"{r[2]} v{r[1]}"} for r in rows]
    return {
        "backends": backends,
        "default_backend": settings_of(view.platform).default_backend,
        "versions": versions,
    }


def api_request(view: View, job_type: str, params: Mapping[str, Any]) -> dict[str, str]:
    """The ``POST /api/v1/jobs`` request a form makes, as JSON and as a ``curl`` command
    (the wizard's review step, the sweep and evaluation forms)."""
    body = {"type": job_type, "project": view.project.id if view.project else "", "params": params}
    text = json.dumps(body, indent=2, ensure_ascii=False)
    base = view.platform.settings.base_url.rstrip("/")
    curl = (
        f"curl -X POST {shlex.quote(base + '/api/v1/jobs')} \\\n"
        '  -H "Authorization: Bearer $ZT_KEY" -H "Content-Type: application/json" \\\n'
        f"  -d {shlex.quote(json.dumps(body, ensure_ascii=False))}"
    )
    return {"json": text, "curl": curl}


def _wizard(
    view: View, *, step: int = 0, errors: Mapping[str, str] | None = None
) -> dict[str, Any]:
    form = {name: str(view.form.get(name) or "") for name in FORM_FIELDS}
    if not any(form.values()):
        form.update(
            {
                "code_kind": "git",
                "entry_point": "python\ntrain.py",
                "cpu": "1",
                "memory_mb": "2048",
                "gpus": "0",
                "procs_per_node": "1",
                "experiment": "Default",
            }
        )
    spec, _syntax = form_to_spec(form)
    return {
        "step": step,
        "steps": STEPS,
        "form": form,
        "errors": dict(errors or {}),
        "request": api_request(view, "train.run", spec) if step == 3 else None,
        "input_rows": range(INPUT_ROWS),
        **project_choices(view),
    }


def _wizard_page(view: View) -> Mapping[str, Any]:
    return _wizard(view)


def _wizard_post(view: View) -> Redirect | Mapping[str, Any]:
    """Validate the step posted; go back, on, or submit the job."""
    try:
        step = max(0, min(3, int(str(view.form.get("step") or 0))))
    except ValueError:
        step = 0
    action = str(view.form.get("action") or "next")
    if action == "back":
        return _wizard(view, step=max(0, step - 1))
    spec, syntax = form_to_spec(view.form)
    problems = {message: _where(field) for field, message in syntax.items()}
    problems.update(_validate(view, spec))
    # Errors of this step (or an earlier one) stop here; later steps' wait their turn.
    blocking = {m: w for m, w in problems.items() if w[0] <= step or action == "run"}
    if blocking:
        first = min(where[0] for where in blocking.values())
        errors = {field: message for message, (s, field) in blocking.items() if s == first}
        return _wizard(view, step=min(first, step), errors=errors)
    if action != "run":
        return _wizard(view, step=min(step + 1, 3))
    return _submit(view, spec)


def _submit(view: View, spec: dict[str, Any]) -> Redirect | Mapping[str, Any]:
    from zhongtai.jobs import InvalidParams
    from zhongtai.jobs.engine import JobRefused
    from zhongtai_train.spec import TrainSpec
    from zhongtai_train.submit import submit_run

    assert view.project is not None
    try:
        job = submit_run(
            view.platform, view.access, view.project.id, TrainSpec.model_validate(spec)
        )
    except InvalidParams as exc:
        step, field = _where(exc.field)
        return _wizard(view, step=step, errors={field: exc.message})
    except JobRefused as exc:
        return _wizard(view, step=3, errors={"_": str(exc)})
    return Redirect(
        f"/ui/train/jobs/{job['id']}?project={job['project']}", flash="training started"
    )


# --------------------------------------------------------------------------- job page


def _job(view: View) -> Mapping[str, Any]:
    from zhongtai.jobs.models import FINISHED, Job
    from zhongtai_train.models import TrainJob
    from zhongtai_train.panels import REFRESH_SECONDS

    job_id = str(view.params.get("job_id", ""))
    with view.platform.db.session() as session:
        job = session.get(Job, job_id)
        if job is None or job.type != "train.run" or view.project is None:
            raise NotFound("training job")
        if job.project_id != view.project.id:
            raise NotFound("training job")
        view.access.require(session, project_id=job.project_id, permission=READ)
        row = session.get(TrainJob, job.id)
        finished = job.status in FINISHED
        can_run = view.access.has(session, RUN, project_id=job.project_id)
        data = {
            "job": {
                "id": job.id,
                "status": job.status,
                "progress": job.progress,
                "progress_message": job.progress_message,
                "error": job.error,
                "attempts": job.attempts,
                "created_at": job.created_at,
                "started_at": job.started_at,
                "finished_at": job.finished_at,
            },
            "params": json.dumps(job.params, indent=2, ensure_ascii=False),
            "spec": job.params,
            "finished": finished,
            "backend": row.backend if row else (job.params or {}).get("backend") or "",
            "run_id": row.run_id if row else None,
            "state": row.state if row else "queued",
            "reason": row.reason if row else "",
            "can_run": can_run,  # the sweep and evaluation forms' links
        }
    run_id = data["run_id"]
    data["series_url"] = f"/api/v1/train/runs/{run_id}/metrics/" if run_id else None
    data["run_url"] = f"/api/v1/train/runs/{run_id}" if run_id else None
    data["interval"] = REFRESH_SECONDS
    data["gpus_url"] = f"/api/v1/train/gpus/jobs/{job_id}"
    data["gpus"] = _job_gpus(view, job_id)
    return data


def _job_gpus(view: View, job_id: str) -> list[dict[str, Any]]:
    """The GPUs the job's processes were seen on (by the GPU sampler), with peak memory
    and mean utilization; empty on machines without NVIDIA GPUs."""
    from zhongtai.ui.core_pages import call_api
    from zhongtai_train.gpus import job_gpus

    found, _errors = call_api(job_gpus, view, job_id=job_id, since=None, max_points=None)
    return list((found or {}).get("gpus", []))


def _job_post(view: View) -> Redirect | Mapping[str, Any]:
    from zhongtai.jobs.engine import JobConflict, jobs_engine
    from zhongtai.jobs.models import Job
    from zhongtai_train.permissions import JOB_RUN

    job_id = str(view.params.get("job_id", ""))
    here = f"/ui/train/jobs/{job_id}"
    with view.platform.db.session() as session:
        job = session.get(Job, job_id)
        if job is None or job.type != "train.run":
            raise NotFound("training job")
        view.access.require(session, project_id=job.project_id, permission=JOB_RUN)
    if str(view.form.get("action")) == "cancel":
        try:
            jobs_engine(view.platform).cancel(job_id)
        except JobConflict as exc:
            return {**_job(view), "errors": {"_": str(exc)}}
        view.access.audit(action="job.cancel", target_kind="job", target_id=job_id)
        return Redirect(here, flash="cancelling")
    return Redirect(here)


WIZARD_PANELS = [
    Panel(
        name="new",
        title={"en": "New training", "zh": "新建训练"},
        path="/new",
        template="wizard.html",
        icon="play",
        order=35,
        permission=RUN,
        context=_wizard_page,
        on_post=_wizard_post,
    ),
    Panel(
        name="job",
        title={"en": "Training job", "zh": "训练任务"},
        path="/jobs/{job_id:str}",
        template="training_job.html",
        icon="play",
        permission=READ,
        context=_job,
        on_post=_job_post,
    ),
]
