"""The forms that start a sweep and an evaluation from the UI.

- ``/ui/train/sweeps/new?from=<training job>``: a ``train.sweep`` whose trials run that
  job's spec (shown as JSON, editable). The search space is entered as rows (name,
  kind, low and high or comma-separated choices, an optional step), then the metric
  and its direction, the sampler, the budget, parallelism and pruning: the fields of
  :class:`~zhongtai_train.sweep.SweepSpec`. A searched parameter replaces the fixed
  value the training had (the spec's ``hyperparameters``).
- ``/ui/train/evaluations/new?run=<run id>``: a ``train.evaluate`` of the run's model
  on a file of one of the project's committed dataset versions, with one of the
  registered evaluators: the fields of :class:`~zhongtai_train.evaluate.EvaluateSpec`.

Each is one server-rendered form, checked as ``POST /api/v1/jobs`` checks the job
type's params (its schema, then its ``check``: :func:`~zhongtai_train.wizard.check_params`)
with every problem shown next to its field and what was typed kept. "Show the API
request" shows the exact request as JSON and ``curl`` (the wizard's review step does
the same); "Start" submits it the wizard's way
(:func:`~zhongtai_train.submit.submit_job`) and opens the sweep's page, or the
evaluation's job page (the evaluation itself is recorded once the job starts).
Another project's job or run in ``from``/``run`` is not found, as on its own page.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from zhongtai.identity.access import NotFound
from zhongtai.ui import Panel, Redirect, View
from zhongtai_train.permissions import EXPERIMENT_READ, JOB_RUN
from zhongtai_train.wizard import api_request, check_params, project_choices, scalar

if TYPE_CHECKING:
    from zhongtai.jobs import JobType

__all__ = ["FORM_PANELS", "form_to_evaluation", "form_to_sweep"]

SPACE_ROWS = 3  # search space rows at first; "Another parameter" adds one
KINDS = ("float", "log-float", "int", "log-int", "categorical")
_BOUNDS = ("low", "high", "step", "choices")
SWEEP_FIELDS = (
    *("trial", "space", "metric", "direction", "sampler", "trials", "parallelism", "seed"),
    *("pruning", "pruner_startup_trials", "pruner_warmup_steps"),
)
EVALUATION_FIELDS = (
    *("run_id", "model_path", "dataset_version", "file", "target", "evaluator"),
    *("backend", "cpu", "memory_mb", "gpus", "timeout"),
)
MAX_DATA_FILES = 500  # files offered in the evaluation form's list


def _text(form: Mapping[str, Any], name: str) -> str:
    return str(form.get(name) or "").strip()


def _number(text: str) -> int | float | str:
    """A number as typed (an integer where it is one); anything else stays text, for
    the schema to refuse with its own message."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _default(model: type[BaseModel], name: str) -> Any:
    return model.model_fields[name].get_default(call_default_factory=True)


def _shown(value: Any) -> str:
    """A default as the form shows it (``1.0`` as ``1``)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _submit(
    view: View, job_type: JobType, params: BaseModel
) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
    """Submit as the wizard does; the job, or the problems as (params location, message)."""
    from zhongtai.identity.access import Forbidden
    from zhongtai.jobs import InvalidParams
    from zhongtai.jobs.engine import JobRefused
    from zhongtai_train.submit import submit_job

    assert view.project is not None  # check_params refused the form otherwise
    try:
        return submit_job(view.platform, view.access, view.project.id, job_type, params), []
    except InvalidParams as exc:
        return None, [(exc.field, exc.message)]
    except JobRefused as exc:
        return None, [("_", str(exc))]
    except Forbidden as exc:
        return None, [
            ("_", view.gettext("You may not do this here (it takes %(what)s).") % {"what": exc})
        ]


# --------------------------------------------------------------------------- sweep


def _rows(form: Mapping[str, Any]) -> int:
    from zhongtai_train.sweep import MAX_PARAMS

    try:
        return max(1, min(MAX_PARAMS, int(_text(form, "rows") or SPACE_ROWS)))
    except ValueError:
        return SPACE_ROWS


def _space_param(kind: str, values: Mapping[str, str]) -> dict[str, Any]:
    """One row of the search space as the params' ``space`` takes it."""
    if kind == "categorical":
        choices = [scalar(c.strip()) for c in values["choices"].split(",") if c.strip()]
        return {"type": "categorical", "choices": choices}
    # An unknown kind goes through as it is: the schema names the kinds there are.
    param: dict[str, Any] = {"type": kind.removeprefix("log-")}
    if kind.startswith("log-"):
        param["log"] = True
    for bound in ("low", "high", "step"):
        if values[bound]:
            param[bound] = _number(values[bound])
    return param


def form_to_sweep(
    form: Mapping[str, Any], gettext: Callable[[str], str]
) -> tuple[dict[str, Any], dict[str, str], dict[str, int]]:
    """The ``train.sweep`` params the form describes, the errors of its own syntax by
    field, and the row of each searched parameter."""
    _ = gettext
    errors: dict[str, str] = {}
    params: dict[str, Any] = {}
    space: dict[str, Any] = {}
    rows: dict[str, int] = {}
    for i in range(_rows(form)):
        name = _text(form, f"space_name_{i}")
        values = {bound: _text(form, f"space_{bound}_{i}") for bound in _BOUNDS}
        if not name and not any(values.values()):
            continue  # a row left empty
        if not name:
            errors[f"space_name_{i}"] = _("Name the parameter.")
        elif name in rows:
            errors[f"space_name_{i}"] = _("This parameter is searched in another row already.")
        else:
            rows[name] = i
            space[name] = _space_param(_text(form, f"space_kind_{i}") or "float", values)
    if not space and not errors:
        errors["space"] = _("Add at least one parameter to search.")
    params["space"] = space

    text = _text(form, "trial")
    if text:
        try:
            trial = json.loads(text)
        except ValueError as exc:
            errors["trial"] = _("Not JSON: %(error)s") % {"error": exc}
            trial = text
        if isinstance(trial, dict):
            fixed = trial.get("hyperparameters")
            if isinstance(fixed, dict):
                # The searched value replaces the training's own.
                trial["hyperparameters"] = {k: v for k, v in fixed.items() if k not in space}
        elif "trial" not in errors:
            errors["trial"] = _("Give the training spec as a JSON object.")
        params["trial"] = trial
    for name in ("metric", "direction", "sampler"):
        if _text(form, name):
            params[name] = _text(form, name)
    for name in ("trials", "parallelism", "seed", "pruner_startup_trials", "pruner_warmup_steps"):
        if _text(form, name):
            params[name] = _number(_text(form, name))
    params["pruning"] = _text(form, "pruning") in ("on", "true", "1")
    return params, errors, rows


def _sweep_field(loc: str, rows: Mapping[str, int], space: Mapping[str, Any]) -> str:
    """The form field a problem of the params at ``loc`` belongs to."""
    from zhongtai_train.spec import _PARAM_NAME

    parts = loc.split(".")
    if parts[0] == "space":
        if len(parts) == 1:
            # The space as a whole, or a name the schema refuses: that name's row.
            bad = [rows[n] for n in space if n in rows and not _PARAM_NAME.fullmatch(n)]
            return f"space_name_{bad[0]}" if bad else "space"
        row = rows.get(parts[1])
        if row is None:
            return "space"
        bound = next((p for p in parts[2:] if p in _BOUNDS), None)
        return f"space_{bound}_{row}" if bound else f"space_kind_{row}"
    return parts[0] if parts[0] in SWEEP_FIELDS else "_"


def _message(loc: str, message: str, field: str) -> str:
    """The message as shown next to ``field``: with the place inside it where the field
    holds a whole spec (the trial's JSON)."""
    if field == "trial" and loc.startswith("trial."):
        return f"{loc.removeprefix('trial.')}: {message}"
    return message


def _base_trial(params: Mapping[str, Any]) -> dict[str, Any]:
    """A training job's spec as the base of a sweep's trials: without its run name
    (each trial is named ``trial-<n>``) and the fields it left at their defaults, so
    the form shows what was chosen."""
    from pydantic import ValidationError

    from zhongtai_train.spec import TrainSpec

    try:
        base = TrainSpec.model_validate(params).model_dump(mode="json", exclude_defaults=True)
    except ValidationError:  # a spec of an older version: as it was stored
        base = dict(params)
    base.pop("run_name", None)
    return base


def _from_job(view: View) -> dict[str, Any] | None:
    """The training job of ``?from=``: its id, spec and MLflow run (NotFound unless it is
    a ``train.run`` job of the current project)."""
    from zhongtai.jobs.models import Job
    from zhongtai_train.models import TrainJob

    job_id = (view.query.get("from") or "").strip()
    if not job_id:
        return None
    with view.platform.db.session() as session:
        job = session.get(Job, job_id[:64])
        if job is None or job.type != "train.run" or view.project is None:
            raise NotFound("training job")
        if job.project_id != view.project.id:
            raise NotFound("training job")
        view.access.require(session, project_id=job.project_id, permission=EXPERIMENT_READ)
        row = session.get(TrainJob, job.id)
        return {
            "id": job.id,
            "params": dict(job.params or {}),
            "run_id": row.run_id if row is not None else None,
        }


def _metric_keys(view: View, run_id: str | None) -> list[str]:
    """The metrics a run logged (not MLflow's system metrics), for the metric's list."""
    from zhongtai.ui.core_pages import call_api
    from zhongtai_train import api

    if not run_id:
        return []
    run, _errors = call_api(api.get_run, view, run_id=run_id)
    return sorted(k for k in (run or {}).get("metrics", {}) if not k.startswith("system/"))


def _sweep_form(
    view: View,
    *,
    errors: Mapping[str, str] | None = None,
    request: Mapping[str, str] | None = None,
    rows: int | None = None,
) -> dict[str, Any]:
    from zhongtai_train.sweep import SweepSpec

    source = _from_job(view)
    keys = _metric_keys(view, source["run_id"] if source else None)
    count = rows or _rows(view.form)
    names = [*SWEEP_FIELDS, "rows"]
    names += [f"space_{c}_{i}" for i in range(count) for c in ("name", "kind", *_BOUNDS)]
    form = {name: str(view.form.get(name) or "") for name in names}
    if not view.form:
        trial = _base_trial(source["params"]) if source else {}
        form.update(
            {
                "trial": json.dumps(trial, indent=2, ensure_ascii=False) if trial else "",
                "metric": keys[0] if keys else "",
                "direction": _default(SweepSpec, "direction"),
                "sampler": _default(SweepSpec, "sampler"),
                "trials": _shown(_default(SweepSpec, "trials")),
                "parallelism": _shown(_default(SweepSpec, "parallelism")),
                "pruner_startup_trials": _shown(_default(SweepSpec, "pruner_startup_trials")),
                "pruner_warmup_steps": _shown(_default(SweepSpec, "pruner_warmup_steps")),
            }
        )
    form["rows"] = str(count)
    fixed = (source["params"].get("hyperparameters") or {}) if source else {}
    return {
        "form": form,
        "errors": dict(errors or {}),
        "request": request,
        "rows": range(count),
        "kinds": KINDS,
        "samplers": ("tpe", "random", "grid"),
        "source": source,
        "metric_keys": keys,
        "fixed": sorted(fixed.items()) if isinstance(fixed, dict) else [],
        "action": view.url("/ui/train/sweeps/new", **{"from": source["id"] if source else None}),
    }


def _sweep_page(view: View) -> Mapping[str, Any]:
    return _sweep_form(view)


def _sweep_post(view: View) -> Redirect | Mapping[str, Any]:
    """Add a row, show the request, or start the sweep."""
    from zhongtai_train.sweep import TRAIN_SWEEP

    _from_job(view)  # another project's job in ``from`` is not found, posted or not
    action = _text(view.form, "action") or "review"
    if action == "more":
        return _sweep_form(view, rows=_rows(view.form) + 1)
    params, errors, rows = form_to_sweep(view.form, view.gettext)
    validated, problems = check_params(view, TRAIN_SWEEP, params)
    if not problems and validated is not None and action == "run" and not errors:
        job, problems = _submit(view, TRAIN_SWEEP, validated)
        if job is not None:
            return Redirect(
                view.url(f"/ui/train/sweeps/{job['id']}"), flash=view.gettext("sweep started")
            )
    for loc, message in problems:
        field = _sweep_field(loc, rows, params["space"])
        errors.setdefault(field, _message(loc, message, field))
    if errors:
        return _sweep_form(view, errors=errors)
    return _sweep_form(view, request=api_request(view, TRAIN_SWEEP.name, params))


# --------------------------------------------------------------------------- evaluation


def form_to_evaluation(form: Mapping[str, Any]) -> dict[str, Any]:
    """The ``train.evaluate`` params the form describes (empty fields left out: the
    schema's defaults, or its "required")."""
    params: dict[str, Any] = {}
    for name in ("run_id", "model_path", "dataset_version", "file", "target", "evaluator"):
        if _text(form, name):
            params[name] = _text(form, name)
    if _text(form, "backend"):
        params["backend"] = _text(form, "backend")
    resources = {k: _number(_text(form, k)) for k in ("cpu", "memory_mb", "gpus") if _text(form, k)}
    if resources:
        params["resources"] = resources
    if _text(form, "timeout"):
        params["timeout"] = _number(_text(form, "timeout"))
    return params


def _evaluation_field(loc: str) -> str:
    parts = loc.split(".")
    if parts[0] == "resources" and len(parts) > 1 and parts[1] in EVALUATION_FIELDS:
        return parts[1]
    if parts[0] == "backend_options":
        return "backend"
    return parts[0] if parts[0] in EVALUATION_FIELDS else "_"


def _evaluated_run(view: View) -> dict[str, Any] | None:
    """The run of ``?run=`` (NotFound unless it is a run of the current project)."""
    from zhongtai.ui.core_pages import call_api
    from zhongtai_train import api

    run_id = (view.query.get("run") or "").strip()
    if not run_id:
        return None
    run, _errors = call_api(api.get_run, view, run_id=run_id[:64])
    if run is None or view.project is None or run.get("project") != view.project.id:
        raise NotFound("run")
    return {"id": run["id"], "name": run.get("name") or run["id"]}


def _data_files(view: View, version_ids: list[str]) -> list[dict[str, Any]]:
    """The CSV and Parquet files of the project's committed versions (those the list of
    versions offers), with their columns where the data plugin knows them."""
    from sqlalchemy import select

    from zhongtai_data.models import File
    from zhongtai_train.evaluate import DATA_SUFFIXES

    if not version_ids:
        return []
    with view.platform.db.session() as session:
        found = session.execute(
            select(File.version_id, File.path, File.columns)
            .where(File.version_id.in_(version_ids))
            .order_by(File.path)
            .limit(MAX_DATA_FILES)
        ).all()
    files = []
    for version_id, path, columns in found:
        if str(path).lower().endswith(DATA_SUFFIXES):
            names = [str(c["name"]) for c in columns or [] if isinstance(c, dict) and "name" in c]
            files.append({"version": version_id, "path": path, "columns": names})
    return files


def _evaluation_form(
    view: View,
    *,
    errors: Mapping[str, str] | None = None,
    request: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    from zhongtai_train.evaluate import EvaluateSpec, _has_data_plugin, evaluators
    from zhongtai_train.spec import ResourcesSpec

    run = _evaluated_run(view)
    has_data = _has_data_plugin(view.platform)
    choices = project_choices(view)
    versions = choices["versions"]
    files = _data_files(view, [v["id"] for v in versions]) if has_data else []
    form = {name: str(view.form.get(name) or "") for name in EVALUATION_FIELDS}
    if not view.form:
        first = versions[0]["id"] if versions else ""
        resources = ResourcesSpec()
        form.update(
            {
                "run_id": run["id"] if run else "",
                "model_path": _default(EvaluateSpec, "model_path"),
                "dataset_version": first,
                "file": next((f["path"] for f in files if f["version"] == first), ""),
                "evaluator": _default(EvaluateSpec, "evaluator"),
                "cpu": _shown(resources.cpu),
                "memory_mb": _shown(resources.memory_mb),
                "gpus": _shown(resources.gpus),
            }
        )
    return {
        "form": form,
        "errors": dict(errors or {}),
        "request": request,
        "run": run,
        "has_data": has_data,
        "versions": versions,
        "paths": sorted({f["path"] for f in files}),
        "columns": sorted({c for f in files for c in f["columns"]}),
        "evaluators": [e.describe() for e in evaluators(view.platform).values()],
        "backends": choices["backends"],
        "default_backend": choices["default_backend"],
        "action": view.url("/ui/train/evaluations/new", run=run["id"] if run else None),
    }


def _evaluation_page(view: View) -> Mapping[str, Any]:
    return _evaluation_form(view)


def _evaluation_post(view: View) -> Redirect | Mapping[str, Any]:
    """Show the request, or start the evaluation and follow its job."""
    from zhongtai_train.evaluate import TRAIN_EVALUATE

    _evaluated_run(view)  # another project's run in ``run`` is not found, posted or not
    params = form_to_evaluation(view.form)
    validated, problems = check_params(view, TRAIN_EVALUATE, params)
    if not problems and validated is not None and _text(view.form, "action") == "run":
        job, problems = _submit(view, TRAIN_EVALUATE, validated)
        if job is not None:
            return Redirect(
                view.url(f"/ui/jobs/{job['id']}"), flash=view.gettext("evaluation started")
            )
    errors: dict[str, str] = {}
    for loc, message in problems:
        errors.setdefault(_evaluation_field(loc), message)
    if errors:
        return _evaluation_form(view, errors=errors)
    return _evaluation_form(view, request=api_request(view, TRAIN_EVALUATE.name, params))


FORM_PANELS = [
    Panel(
        name="sweep-new",
        title={"en": "New sweep", "zh": "新建超参数搜索"},
        path="/sweeps/new",
        template="sweep_new.html",
        icon="list",
        nav=False,
        permission=JOB_RUN.name,
        context=_sweep_page,
        on_post=_sweep_post,
    ),
    Panel(
        name="evaluation-new",
        title={"en": "New evaluation", "zh": "新建评估"},
        path="/evaluations/new",
        template="evaluation_new.html",
        icon="list",
        nav=False,
        permission=JOB_RUN.name,
        context=_evaluation_page,
        on_post=_evaluation_post,
    ),
]
