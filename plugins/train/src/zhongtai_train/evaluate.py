"""``train.evaluate``: a run's model scored on a file of a dataset version.

One attempt of the job:

1. **Checks.** At submission (422 naming the field): the run is an MLflow run of the
   job's project, the dataset version a committed version of it, the file a CSV or
   Parquet file of that version (and the target one of its columns, where the data
   plugin knows them), the evaluator registered, the backend ``local``.
2. **Tracking.** A new MLflow run in the evaluated run's experiment, named
   ``eval-<dataset>-<version number>`` and tagged ``zhongtai.evaluates`` (the
   evaluated run), ``zhongtai.evaluation.dataset_version`` and ``zhongtai.job_id``.
3. **Evaluate, elsewhere.** The file is hard-linked (or copied) into the attempt's
   folder, and ``python -m zhongtai_train.evaluator`` (or a plugin evaluator's own
   module) runs on the backend like training code, with a key limited to the
   project's experiments: it loads the model with MLflow, runs
   ``mlflow.models.evaluate``, logs metrics and charts to the evaluation run and
   writes ``metrics.json``. **A model is a pickle, and the platform never unpickles
   one**: loading it happens only in that process (issue 7).
4. **Record.** The metrics and the charts' artifact paths go to a
   ``train_evaluations`` row (written as ``running`` when the attempt starts, so a
   failed evaluation is listed with its error) and to the job's result.

Evaluators are a registry: ``classifier`` and ``regressor`` (MLflow's default
evaluator) are built in; a plugin adds more with the ``register_evaluators`` hook
this plugin declares (:class:`zhongtai_train.hookspecs.EvaluationHooks`). The setting
``evaluate_after_training`` (experiment name → parameters without ``run_id``)
evaluates every successful ``train.run`` of those experiments (:func:`on_event`).

Routes (``/api/v1/train/…``, ``train.experiment.read`` on the project; another
project's evaluation answers 404): ``GET /evaluations`` (``project``, ``run_id``),
``GET /evaluations/{id}``, ``GET /evaluations/compare?ids=a,b`` (metrics side by side)
and ``GET /evaluators``. Pages: ``/ui/train/evaluations`` (a project's evaluations),
``/ui/train/evaluations/{id}`` (metrics and the report's charts) and
``/ui/train/evaluations/compare?ids=…``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from litestar import get
from litestar.params import Parameter, PathParameter, QueryParameter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select

from zhongtai.hooks.events import utcnow
from zhongtai.identity.guard import AccessDep, authenticated, requires
from zhongtai.jobs import InvalidParams, JobCancelled, JobContext, JobType, Resources
from zhongtai.ui import Panel, View
from zhongtai.web.errors import field_error
from zhongtai.web.pagination import page_for, paginate
from zhongtai.web.params import PlatformDep
from zhongtai_train.backends import Distributed, Launch, Requirements, SpecError
from zhongtai_train.evaluation_models import Evaluation
from zhongtai_train.evaluator import CHART_SUFFIXES, MODEL_TYPES
from zhongtai_train.jobs import (
    TrainFailed,
    _mlflow,
    _save,
    backend_attempt,
    backend_class,
    backend_options,
    dns_label,
    raise_unless_succeeded,
    tracking_uri,
)
from zhongtai_train.permissions import EXPERIMENT_READ, JOB_RUN
from zhongtai_train.spec import ResourcesSpec, relative_path
from zhongtai_train.tracking import settings_of, tracking, workspace_of

if TYPE_CHECKING:
    import httpx
    from sqlalchemy.orm import Session

    from zhongtai.hooks.events import Event
    from zhongtai.jobs.models import Job
    from zhongtai.platform import Platform

__all__ = [
    "EVALUATION_PANELS",
    "EVALUATION_ROUTES",
    "TRAIN_EVALUATE",
    "EvaluateSpec",
    "Evaluator",
    "evaluators",
    "on_event",
    "submit_after_training",
]

log = logging.getLogger("zhongtai.train.evaluate")

#: Seconds an evaluation may run at most (the job's own timeout is a day).
MAX_EVALUATION_SECONDS = 86_400 - 600
#: What the evaluator writes into its output folder.
METRICS_FILE = "metrics.json"
ARTIFACTS_FILE = "artifacts.json"
#: Data files the evaluator reads, by extension.
DATA_SUFFIXES = (".csv", ".parquet", ".pq")
#: The most evaluations one comparison shows.
MAX_COMPARE = 20
MAX_METRICS = 1000

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_VERSION_ID = re.compile(r"^[0-9a-z]{1,32}$")
_EVALUATOR_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


# --------------------------------------------------------------------------- evaluators


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """A way to score a model, chosen by ``name`` in the job's ``evaluator``.

    Either ``model_type`` (``classifier`` or ``regressor``): MLflow's default evaluator
    for that model type, run by ``python -m zhongtai_train.evaluator``; or ``module``:
    a Python module run as ``python -m <module>`` in the evaluation's process, with the
    same arguments (``--model-uri=… --data=… --target=… --evaluator=<name>
    --output=…``), that writes ``metrics.json`` (and ``artifacts.json``) into
    ``--output``. The module must be installed where the workers run.
    """

    name: str
    description: str
    model_type: str | None = None
    module: str | None = None

    def __post_init__(self) -> None:
        if not _EVALUATOR_NAME.match(self.name):
            raise ValueError(f"evaluator name {self.name!r}: use [a-z][a-z0-9_-]*")
        if (self.model_type is None) == (self.module is None):
            raise ValueError(f"evaluator {self.name}: give a model_type or a module (one)")
        if self.model_type is not None and self.model_type not in MODEL_TYPES:
            raise ValueError(f"evaluator {self.name}: model_type is one of {MODEL_TYPES}")
        if self.module is not None and not _MODULE.match(self.module):
            raise ValueError(f"evaluator {self.name}: {self.module!r} is not a module name")

    def argv(self, *, model_uri: str, data: str, target: str, output: str) -> tuple[str, ...]:
        """The evaluation process's command (an argument list, each value one item)."""
        module = self.module or "zhongtai_train.evaluator"
        argv = [
            sys.executable,  # the worker's interpreter, with mlflow installed
            "-m",
            module,
            f"--model-uri={model_uri}",
            f"--data={data}",
            f"--target={target}",
            f"--evaluator={self.name}",
            f"--output={output}",
        ]
        if self.model_type is not None:
            argv.append(f"--model-type={self.model_type}")
        return tuple(argv)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "model_type": self.model_type,
            "module": self.module,
        }


BUILTIN_EVALUATORS = (
    Evaluator(
        "classifier",
        "MLflow's default evaluator for classifiers: accuracy, precision, recall, F1, "
        "log loss, ROC AUC; confusion matrix, ROC and precision-recall curves",
        model_type="classifier",
    ),
    Evaluator(
        "regressor",
        "MLflow's default evaluator for regressors: mean absolute and squared errors, R², MAPE",
        model_type="regressor",
    ),
)


def evaluators(platform: Platform) -> dict[str, Evaluator]:
    """The built-in evaluators and those plugins register, by name."""
    found = {item.name: item for item in BUILTIN_EVALUATORS}
    manager = platform.plugins
    for record, value in manager.call_each("register_evaluators", platform=platform):
        for item in value:
            if not isinstance(item, Evaluator):
                log.warning("plugin %s: register_evaluators returned %r", record.name, item)
            elif item.name in found:
                log.warning("plugin %s: evaluator %s is already registered", record.name, item.name)
            else:
                found[item.name] = item
    return found


# --------------------------------------------------------------------------- the spec


class EvaluateSpec(BaseModel):
    """The parameters of a ``train.evaluate`` job."""

    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(description="the MLflow run whose model is evaluated (32 hex digits)")
    model_path: str = Field(
        default="model", max_length=1024, description="the model's artifact path in the run"
    )
    dataset_version: str = Field(max_length=32, description="a committed dataset version's id")
    file: str = Field(max_length=1024, description="a CSV or Parquet file of that version")
    target: str = Field(min_length=1, max_length=250, description="the column of true values")
    evaluator: str = Field(default="classifier", min_length=1, max_length=64)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    backend: str | None = Field(
        default=None, max_length=64, description="default: the setting default_backend"
    )
    backend_options: dict[str, Any] = Field(default_factory=dict)
    timeout: int | None = Field(
        default=None, ge=10, le=MAX_EVALUATION_SECONDS, description="seconds it may take"
    )

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, value: str) -> str:
        if not _RUN_ID.match(value):
            raise ValueError("must be an MLflow run id (32 lower-case hex digits)")
        return value

    @field_validator("model_path")
    @classmethod
    def _model_path(cls, value: str) -> str:
        return relative_path(value, "model_path")

    @field_validator("dataset_version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not _VERSION_ID.match(value):
            raise ValueError("must be a dataset version id")
        return value

    @field_validator("file")
    @classmethod
    def _file(cls, value: str) -> str:
        relative_path(value, "file")
        if not value.lower().endswith(DATA_SUFFIXES):
            raise ValueError("must be a CSV (.csv) or Parquet (.parquet, .pq) file")
        return value

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("must be printable text")
        return value


# --------------------------------------------------------------------------- checks


def _mlflow_session(platform: Platform) -> Session:
    from sqlalchemy.orm import Session

    return Session(tracking(platform).engine)


def _run_in_project(platform: Platform, project_id: str, run_id: str) -> tuple[str, str] | None:
    """(experiment id, run name) of an active run of the project's workspace, or None."""
    from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlRun

    with _mlflow_session(platform) as session:
        found: Any = session.execute(
            select(SqlRun.experiment_id, SqlRun.name)
            .join(SqlExperiment, SqlExperiment.experiment_id == SqlRun.experiment_id)
            .where(
                SqlRun.run_uuid == run_id,
                SqlRun.lifecycle_stage == "active",
                SqlExperiment.workspace == workspace_of(project_id),
            )
        ).first()
    return (str(found[0]), found[1] or "") if found is not None else None


@dataclasses.dataclass(frozen=True)
class _DataFile:
    dataset_id: str
    dataset: str
    number: int
    sha256: str
    columns: list[str] | None


def _data_file(session: Session, project_id: str, version_id: str, path: str) -> _DataFile | None:
    """The file ``path`` of a committed version of the project (None: no such file)."""
    from zhongtai_data.models import Dataset, File, Version

    found: Any = session.execute(
        select(Dataset.id, Dataset.name, Version.number, File.sha256, File.columns)
        .join(Version, Version.dataset_id == Dataset.id)
        .join(File, File.version_id == Version.id)
        .where(
            Version.id == version_id,
            Version.status == "committed",
            Dataset.project_id == project_id,
            File.path == path,
        )
    ).first()
    if found is None:
        return None
    columns = None
    if isinstance(found[4], list):
        columns = [str(c.get("name")) for c in found[4] if isinstance(c, dict) and "name" in c]
    return _DataFile(found[0], found[1], int(found[2] or 0), found[3], columns or None)


def _version_in_project(session: Session, project_id: str, version_id: str) -> bool:
    from zhongtai_data.models import Dataset, Version

    return (
        session.scalar(
            select(Version.id)
            .join(Dataset, Dataset.id == Version.dataset_id)
            .where(
                Version.id == version_id,
                Version.status == "committed",
                Dataset.project_id == project_id,
            )
        )
        is not None
    )


def _has_data_plugin(platform: Platform) -> bool:
    record = platform.plugins.get("data")
    return record is not None and bool(record.loaded)


def check_evaluation(
    platform: Platform, session: Session, project_id: str, spec: BaseModel
) -> None:
    """What the schema cannot know, checked at submission (422 naming the field)."""
    assert isinstance(spec, EvaluateSpec)
    if spec.evaluator not in (found := evaluators(platform)):
        raise InvalidParams(
            "evaluator", f"no evaluator {spec.evaluator!r}; there are {', '.join(sorted(found))}"
        )
    if _run_in_project(platform, project_id, spec.run_id) is None:
        raise InvalidParams("run_id", "no such run in this project")
    if not _has_data_plugin(platform):
        raise InvalidParams("dataset_version", "evaluations need the data plugin")
    if not _version_in_project(session, project_id, spec.dataset_version):
        raise InvalidParams("dataset_version", "no such committed version in this project")
    data = _data_file(session, project_id, spec.dataset_version, spec.file)
    if data is None:
        raise InvalidParams("file", "no such file in this version")
    if data.columns is not None and spec.target not in data.columns:
        raise InvalidParams("target", f"the file has no column {spec.target!r}")
    _backend(platform, spec, check=True)


def _backend(platform: Platform, spec: EvaluateSpec, *, check: bool = False) -> tuple[Any, Any]:
    """The backend class and its validated options (InvalidParams naming the field)."""
    cls = backend_class(spec.backend or settings_of(platform).default_backend)
    options = backend_options(platform, cls, spec.backend_options)
    if cls.name != "local":
        # The dataset file is materialized on the worker, as train.run's inputs are.
        raise InvalidParams(
            "backend", f"evaluations do not yet run on the {cls.name} backend (only local)"
        )
    if check:
        launch = _launch(
            job_id="check",
            project_id="",
            attempt=0,
            argv=("python",),
            env={},
            workdir=Path("/nonexistent"),
            spec=spec,
            options=options,
        )
        try:
            cls(platform).check(launch)
        except SpecError as exc:
            raise InvalidParams(exc.field, exc.message) from None
    return cls, options


def _launch(
    *,
    job_id: str,
    project_id: str,
    attempt: int,
    argv: tuple[str, ...],
    env: dict[str, str],
    workdir: Path,
    spec: EvaluateSpec,
    options: BaseModel,
) -> Launch:
    return Launch(
        job_id=job_id,
        project_id=project_id,
        attempt=attempt,
        name=dns_label(f"zt-eval-{job_id}"),
        argv=argv,
        env=env,
        secret_env=frozenset({"MLFLOW_TRACKING_TOKEN"}),
        workdir=workdir,
        image=None,
        requirements=Requirements(
            spec.resources.cpu, spec.resources.memory_mb, spec.resources.gpus
        ),
        distributed=Distributed(1, 1),
        inputs=(),
        timeout=spec.timeout or MAX_EVALUATION_SECONDS,
        options=options,
    )


# --------------------------------------------------------------------------- the job


def run_evaluation(ctx: JobContext, spec: EvaluateSpec) -> dict[str, Any]:
    """The ``train.evaluate`` handler (see the module's documentation)."""
    platform = ctx.platform
    found = _run_in_project(platform, ctx.project_id, spec.run_id)
    if found is None:
        raise TrainFailed(f"run {spec.run_id} is not (or no longer) a run of this project")
    experiment_id = found[0]
    evaluation_id = _record_start(ctx, spec, experiment_id)
    try:
        result = _evaluate(ctx, spec, experiment_id, evaluation_id)
    except JobCancelled:
        _record_end(platform, evaluation_id, "cancelled", error="cancelled")
        raise
    except Exception as exc:
        _record_end(platform, evaluation_id, "failed", error=str(exc)[:2000])
        raise
    _record_end(
        platform,
        evaluation_id,
        "succeeded",
        metrics=result["metrics"],
        artifacts=result["artifacts"],
    )
    return result


def _evaluate(
    ctx: JobContext, spec: EvaluateSpec, experiment_id: str, evaluation_id: str
) -> dict[str, Any]:
    platform = ctx.platform
    evaluator = evaluators(platform).get(spec.evaluator)
    if evaluator is None:
        raise TrainFailed(f"the evaluator {spec.evaluator!r} is not installed here")
    with platform.db.session() as session:
        data = _data_file(session, ctx.project_id, spec.dataset_version, spec.file)
    if data is None:
        raise TrainFailed(f"{spec.file} is not (or no longer) a file of the dataset version")
    try:
        cls, options = _backend(platform, spec)
    except InvalidParams as exc:
        raise TrainFailed(f"{exc.field}: {exc.message}") from None
    timeout = spec.timeout or MAX_EVALUATION_SECONDS
    run_id: str | None = None
    report: tuple[dict[str, float | None], list[str]] | None = None
    with backend_attempt(ctx, cls(platform), gpus=spec.resources.gpus) as attempt:
        workdir = attempt.folder / "work"
        workdir.mkdir()
        ctx.progress(0.0, "fetching the data")
        _materialize(ctx, data, spec, workdir / "data" / spec.file)
        key = attempt.mint_key(timeout)
        with attempt.mlflow_client(key) as client:
            run_id = _start_evaluation_run(ctx, client, spec, experiment_id, data, evaluator)
            _save_evaluation(platform, evaluation_id, eval_run_id=run_id)
            _save(platform, ctx.job_id, run_id=run_id, experiment_id=experiment_id)
            argv = evaluator.argv(
                model_uri=f"runs:/{spec.run_id}/{spec.model_path}",
                data=f"data/{spec.file}",
                target=spec.target,
                output="output",
            )
            env = {
                "MLFLOW_TRACKING_URI": tracking_uri(platform),
                "MLFLOW_TRACKING_TOKEN": key,
                "MLFLOW_RUN_ID": run_id,
                "MLFLOW_EXPERIMENT_ID": experiment_id,
                "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                "MPLBACKEND": "Agg",
                "ZHONGTAI_JOB_ID": ctx.job_id,
                "ZT_PROJECT_ID": ctx.project_id,
            }
            launch = _launch(
                job_id=ctx.job_id,
                project_id=ctx.project_id,
                attempt=ctx.attempt,
                argv=argv,
                env=env,
                workdir=workdir,
                spec=spec,
                options=options,
            )
            outcome = attempt.run(launch, client, run_id)
            if outcome.state == "succeeded":
                # Read before the attempt's folder goes, at the end of the block.
                report = _read_report(workdir / "output", client, run_id)
    raise_unless_succeeded(attempt.outcome, "the evaluation")
    assert report is not None and run_id is not None
    metrics, artifacts = report
    ctx.log(f"[zhongtai] {len(metrics)} metrics, {len(artifacts)} charts in run {run_id}")
    return {
        "evaluation_id": evaluation_id,
        "run_id": spec.run_id,
        "eval_run_id": run_id,
        "experiment_id": experiment_id,
        "evaluator": spec.evaluator,
        "metrics": metrics,
        "artifacts": artifacts,
    }


def _materialize(ctx: JobContext, data: _DataFile, spec: EvaluateSpec, destination: Path) -> None:
    """The version's file at ``destination``: hard-linked from the local store, or copied."""
    from zhongtai_data.local import place_blob

    ctx.log(f"[zhongtai] data: {spec.file} of {data.dataset} version {data.number}")
    place_blob(ctx.platform, data.sha256, destination)


def _start_evaluation_run(
    ctx: JobContext,
    client: httpx.Client,
    spec: EvaluateSpec,
    experiment_id: str,
    data: _DataFile,
    evaluator: Evaluator,
) -> str:
    name = f"eval-{data.dataset}-{data.number}"[:250]
    tags = [
        {"key": "mlflow.runName", "value": name},
        {"key": "mlflow.user", "value": ctx.owner_id or ""},
        {"key": "zhongtai.job_id", "value": ctx.job_id},
        {"key": "zhongtai.evaluates", "value": spec.run_id},
        {"key": "zhongtai.evaluation.dataset_version", "value": spec.dataset_version},
        {"key": "zhongtai.evaluator", "value": evaluator.name},
    ]
    made = _mlflow(
        client,
        "POST",
        "runs/create",
        json={
            "experiment_id": experiment_id,
            "run_name": name,
            "start_time": int(utcnow().timestamp() * 1000),
            "tags": tags,
        },
    )
    run_id = str(made["run"]["info"]["run_id"])
    params = {
        "model_uri": f"runs:/{spec.run_id}/{spec.model_path}",
        "dataset_version": spec.dataset_version,
        "file": spec.file,
        "target": spec.target,
        "evaluator": evaluator.name,
    }
    _mlflow(
        client,
        "POST",
        "runs/log-batch",
        json={"run_id": run_id, "params": [{"key": k, "value": v} for k, v in params.items()]},
    )
    ctx.log(f"[zhongtai] evaluating run {spec.run_id} in MLflow run {run_id} ({name})")
    return run_id


def _read_report(
    output: Path, client: httpx.Client, run_id: str
) -> tuple[dict[str, float | None], list[str]]:
    """The metrics and chart paths the evaluator wrote; without ``metrics.json``, the
    metrics it logged to its run."""
    raw: Any
    try:
        raw = json.loads((output / METRICS_FILE).read_text())
    except FileNotFoundError:
        found = _mlflow(client, "GET", "runs/get", params={"run_id": run_id})
        raw = {m["key"]: m.get("value") for m in found["run"].get("data", {}).get("metrics", [])}
    except ValueError as exc:
        raise TrainFailed(f"the evaluator wrote a {METRICS_FILE} that is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise TrainFailed(f"the evaluator's {METRICS_FILE} is not an object of numbers")
    metrics: dict[str, float | None] = {}
    for name, value in list(raw.items())[:MAX_METRICS]:
        if not isinstance(name, str) or not 0 < len(name) <= 250:
            continue
        metrics[name] = _finite(value)
    try:
        listed = json.loads((output / ARTIFACTS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        listed = []
    artifacts = []
    for path in listed if isinstance(listed, list) else []:
        if isinstance(path, str) and path.lower().endswith(CHART_SUFFIXES):
            try:
                artifacts.append(relative_path(path, "artifact"))
            except ValueError:
                continue
    return metrics, artifacts[:100]


def _finite(value: Any) -> float | None:
    """A metric's value as JSON can hold it: a finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _record_start(ctx: JobContext, spec: EvaluateSpec, experiment_id: str) -> str:
    """The job's evaluation row, new or reset for this attempt; its id."""
    with ctx.platform.db.transaction() as session:
        row = session.scalar(select(Evaluation).where(Evaluation.job_id == ctx.job_id))
        if row is None:
            row = Evaluation(project_id=ctx.project_id, job_id=ctx.job_id, created_by=ctx.owner_id)
            session.add(row)
        row.run_id = spec.run_id
        row.experiment_id = experiment_id
        row.eval_run_id = None
        row.model_path = spec.model_path
        row.dataset_version = spec.dataset_version
        row.file = spec.file
        row.target = spec.target
        row.evaluator = spec.evaluator
        row.metrics, row.artifacts = {}, []
        row.status, row.error, row.finished_at = "running", None, None
        session.flush()
        return row.id


def _save_evaluation(platform: Platform, evaluation_id: str, **values: Any) -> None:
    with platform.db.transaction() as session:
        row = session.get(Evaluation, evaluation_id)
        if row is not None:
            for name, value in values.items():
                setattr(row, name, value)


def _record_end(
    platform: Platform,
    evaluation_id: str,
    status: str,
    *,
    metrics: Mapping[str, float | None] | None = None,
    artifacts: Sequence[str] | None = None,
    error: str | None = None,
) -> None:
    values: dict[str, Any] = {"status": status, "error": error, "finished_at": utcnow()}
    if metrics is not None:
        values["metrics"] = dict(metrics)
    if artifacts is not None:
        values["artifacts"] = list(artifacts)
    _save_evaluation(platform, evaluation_id, **values)


TRAIN_EVALUATE = JobType(
    "train.evaluate",
    run_evaluation,
    EvaluateSpec,
    description="Evaluate: score a run's model on a dataset version with a registered evaluator",
    queue="train",
    timeout=86_400,
    retries=0,
    resources=Resources(cpu=1.0, memory_mb=2048, gpus=0),
    permission=JOB_RUN.name,
    check=check_evaluation,
)


# --------------------------------------------------------------------------- after training

_AUTO_LOCK = threading.Lock()


def on_event(event: Event, platform: Platform) -> None:
    """``on_event``: after a successful ``train.run`` of an experiment named in the
    setting ``evaluate_after_training``, submit its evaluation.

    This runs in the thread that committed, so it only starts a short thread that
    submits the job in a transaction of its own (:func:`submit_after_training`).
    """
    if getattr(event, "name", None) != "job.succeeded":
        return
    if getattr(event, "job_type", None) != "train.run":
        return
    if not settings_of(platform).evaluate_after_training:
        return
    job_id = str(getattr(event, "job_id", ""))
    threading.Thread(
        target=_submit_quietly,
        args=(platform, job_id),
        name=f"zt-train-evaluate-after-{job_id}",
        daemon=True,
    ).start()


def _submit_quietly(platform: Platform, job_id: str) -> None:
    try:
        submit_after_training(platform, job_id)
    except Exception:
        log.warning("could not evaluate training job %s", job_id, exc_info=True)


def submit_after_training(platform: Platform, train_job_id: str) -> Job | None:
    """Submit the evaluation the setting asks for after ``train_job_id`` succeeded, as
    its owner and a child of it; None when none is wanted, one exists already, or the
    owner may no longer start jobs in the project."""
    from mlflow.store.tracking.dbmodels.models import SqlExperiment

    from zhongtai.identity.access import has_permission
    from zhongtai.identity.principal import Principal
    from zhongtai.jobs.engine import jobs_engine
    from zhongtai.jobs.models import Job
    from zhongtai_train.models import TrainJob

    wanted: Mapping[str, Any] = settings_of(platform).evaluate_after_training
    with platform.db.session() as session:
        train = session.get(TrainJob, train_job_id)
        job = session.get(Job, train_job_id)
        if train is None or job is None or train.run_id is None or train.experiment_id is None:
            return None
        run_id, experiment_id = train.run_id, train.experiment_id
        project_id, owner_id = job.project_id, job.owner_id
    if owner_id is None or not experiment_id.isdigit():
        return None
    with _mlflow_session(platform) as mlflow_session:
        experiment = mlflow_session.get(SqlExperiment, int(experiment_id))
        name = str(experiment.name) if experiment is not None else None
    config = wanted.get(name) if name is not None else None
    if config is None:
        return None
    try:
        spec = EvaluateSpec.model_validate({**config, "run_id": run_id})
    except ValidationError as exc:
        log.warning("evaluate_after_training[%r] is not a valid evaluation: %s", name, exc)
        return None
    engine = jobs_engine(platform)
    job_type = engine.types.get(TRAIN_EVALUATE.name)
    if job_type is None:
        return None
    principal = Principal(user_id=owner_id)
    with _AUTO_LOCK, platform.db.transaction() as session:
        done = session.scalar(
            select(Job.id).where(Job.parent_id == train_job_id, Job.type == TRAIN_EVALUATE.name)
        )
        if done is not None:
            return None
        for permission in ("jobs.submit", JOB_RUN.name):
            if not has_permission(
                session, principal, platform.permissions.get(permission), project_id=project_id
            ):
                log.warning(
                    "not evaluating training job %s: its owner may not %s", train_job_id, permission
                )
                return None
        submitted = engine.submit(
            session,
            job_type=job_type,
            project_id=project_id,
            principal=principal,
            params=spec,
            parent_id=train_job_id,
        )
    log.info("training job %s: evaluation job %s submitted", train_job_id, submitted.id)
    engine.dispatch([submitted])
    return submitted


# --------------------------------------------------------------------------- the API

TAGS = ["train"]
Ref = Annotated[str, PathParameter(min_length=1, max_length=32)]


def _dataset_names(
    platform: Platform, version_ids: Sequence[str]
) -> dict[str, tuple[str, str, int]]:
    """version id → (dataset id, dataset name, number), in one query."""
    if not version_ids or not _has_data_plugin(platform):
        return {}
    from zhongtai_data.models import Dataset, Version

    with platform.db.session() as session:
        rows: Any = session.execute(
            select(Version.id, Dataset.id, Dataset.name, Version.number)
            .join(Dataset, Dataset.id == Version.dataset_id)
            .where(Version.id.in_(set(version_ids)))
        ).all()
    return {v: (d, name, int(n or 0)) for v, d, name, n in rows}


def evaluation_dict(
    row: Evaluation, datasets: Mapping[str, tuple[str, str, int]] | None = None
) -> dict[str, Any]:
    dataset = (datasets or {}).get(row.dataset_version)
    return {
        "id": row.id,
        "project": row.project_id,
        "job_id": row.job_id,
        "run_id": row.run_id,
        "experiment_id": row.experiment_id,
        "eval_run_id": row.eval_run_id,
        "model_path": row.model_path,
        "dataset_version": row.dataset_version,
        "dataset_id": dataset[0] if dataset else None,
        "dataset": dataset[1] if dataset else None,
        "version": dataset[2] if dataset else None,
        "file": row.file,
        "target": row.target,
        "evaluator": row.evaluator,
        "metrics": dict(row.metrics or {}),
        "artifacts": list(row.artifacts or []),
        "status": row.status,
        "error": row.error,
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
    }


@get("/evaluations", tags=TAGS, sync_to_thread=True, opt=requires(EXPERIMENT_READ))
def list_evaluations(
    platform: PlatformDep,
    access: AccessDep,
    project: Annotated[str | None, Parameter(max_length=64)] = None,
    run_id: Annotated[str | None, Parameter(max_length=32)] = None,
    limit: Annotated[int | None, Parameter(ge=1)] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
) -> dict[str, Any]:
    """Evaluations of the caller's projects, newest first; ``project`` and ``run_id``
    (the evaluated run) narrow the list."""
    from zhongtai.identity.access import NotFound

    page = page_for(platform.settings, limit, cursor)
    query = select(Evaluation).where(Evaluation.project_id.in_(access.visible_projects()))
    with platform.db.session() as session:
        if project is not None:
            try:
                access.require(session, project_id=project)
            except NotFound:
                raise field_error("project", "no such project", 404) from None
            query = query.where(Evaluation.project_id == project)
        if run_id is not None:
            query = query.where(Evaluation.run_id == run_id)
        found = paginate(session, query, Evaluation.id, page, newest_first=True)
    datasets = _dataset_names(platform, [row.dataset_version for row in found.items])
    return {
        "items": [evaluation_dict(row, datasets) for row in found.items],
        "next_cursor": found.next_cursor,
    }


def _evaluation_of(platform: Platform, access: Any, evaluation_id: str) -> Evaluation:
    """The evaluation, if the caller may read its project (else 404, as for none)."""
    with platform.db.session() as session:
        row = session.get(Evaluation, evaluation_id)
        access.require(session, project_id=row.project_id if row is not None else None)
        assert row is not None  # require raised NotFound otherwise
        session.expunge(row)
        return row


@get(
    "/evaluations/{evaluation_id:str}",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(EXPERIMENT_READ),
)
def get_evaluation(platform: PlatformDep, access: AccessDep, evaluation_id: Ref) -> dict[str, Any]:
    row = _evaluation_of(platform, access, evaluation_id)
    return evaluation_dict(row, _dataset_names(platform, [row.dataset_version]))


@get("/evaluations/compare", tags=TAGS, sync_to_thread=True, opt=requires(EXPERIMENT_READ))
def compare_evaluations(
    platform: PlatformDep,
    access: AccessDep,
    ids: Annotated[list[str], Parameter(min_items=1)],
) -> dict[str, Any]:
    """Up to 20 evaluations side by side: one row per metric any of them has."""
    picked = [i.strip() for item in ids for i in item.split(",") if i.strip()]
    if not picked or len(picked) > MAX_COMPARE:
        raise field_error("ids", f"name 1 to {MAX_COMPARE} evaluations")
    if len(set(picked)) != len(picked):
        raise field_error("ids", "an evaluation is named twice")
    rows = [_evaluation_of(platform, access, i) for i in picked]
    datasets = _dataset_names(platform, [row.dataset_version for row in rows])
    items = [evaluation_dict(row, datasets) for row in rows]
    keys = sorted({key for item in items for key in item["metrics"]})
    metrics = []
    for key in keys:
        values = [item["metrics"].get(key) for item in items]
        metrics.append({"key": key, "values": values, "differs": len({v for v in values}) > 1})
    return {"evaluations": items, "metrics": metrics}


@get("/evaluators", tags=TAGS, sync_to_thread=True, opt=authenticated())
def list_evaluators(platform: PlatformDep) -> dict[str, Any]:
    """The evaluators a ``train.evaluate`` job may name (built in and from plugins)."""
    return {"items": [item.describe() for item in evaluators(platform).values()]}


EVALUATION_ROUTES: list[Any] = [
    list_evaluations,
    compare_evaluations,
    get_evaluation,
    list_evaluators,
]


# --------------------------------------------------------------------------- the pages

UI = "/ui/train"
API = "/api/v1/train"
READ = EXPERIMENT_READ.name


def _project_id(view: View) -> str | None:
    return view.project.id if view.project is not None else None


def _statuses(view: View) -> dict[str, str]:
    _ = view.gettext
    return {
        "running": _("running"),
        "succeeded": _("succeeded"),
        "failed": _("failed"),
        "cancelled": _("cancelled"),
    }


def _evaluations_page(view: View) -> Mapping[str, Any]:
    """The current project's evaluations (``run`` narrows them to one evaluated run)."""
    run = (view.query.get("run") or "").strip() or None
    page, errors = _call(
        list_evaluations,
        view,
        project=_project_id(view),
        run_id=run,
        limit=None,
        cursor=view.query.get("cursor") or None,
    )
    page = page or {"items": [], "next_cursor": None}
    keys = sorted({k for item in page["items"] for k in item["metrics"]})
    return {
        "page": page,
        "errors": errors,
        "run": run or "",
        "columns": keys[:6],
        "labels": _statuses(view),
        "max_compare": MAX_COMPARE,
    }


def _call(handler: Any, view: View, **kwargs: Any) -> tuple[Any, dict[str, str]]:
    from zhongtai.ui.core_pages import call_api

    return call_api(handler, view, **kwargs)


def _evaluation_page(view: View) -> Mapping[str, Any]:
    """One evaluation: what was evaluated on what, its metrics and the report's charts."""
    from zhongtai.identity.access import NotFound

    evaluation_id = str(view.params.get("evaluation_id", ""))
    item, _errors = _call(get_evaluation, view, evaluation_id=evaluation_id)
    if item is None or item.get("project") != _project_id(view):
        raise NotFound("evaluation")
    download = f"{API}/runs/{item['eval_run_id']}/artifacts/download" if item["eval_run_id"] else ""
    charts = [
        {"path": path, "name": path.rsplit("/", 1)[-1].rsplit(".", 1)[0].replace("_", " ")}
        for path in item["artifacts"]
    ]
    return {
        "evaluation": item,
        "metrics": sorted(item["metrics"].items()),
        "charts": charts,
        "download_url": download,
        "labels": _statuses(view),
    }


def _compare_page(view: View) -> Mapping[str, Any]:
    """Up to 20 evaluations of the current project side by side."""
    from zhongtai.identity.access import NotFound

    _ = view.gettext
    given = view.request.query_params.getall("ids", [])
    ids = list(
        dict.fromkeys(i.strip() for item in given for i in str(item).split(",") if i.strip())
    )
    empty: dict[str, Any] = {"evaluations": [], "metrics": []}
    if not ids:
        return {"compare": empty, "errors": {}, "labels": _statuses(view)}
    if len(ids) > MAX_COMPARE:
        message = _("Compare at most %(most)s evaluations at a time: %(picked)s were picked.")
        errors = {"ids": message % {"most": MAX_COMPARE, "picked": len(ids)}}
        return {"compare": empty, "errors": errors, "labels": _statuses(view)}
    compared, errors = _call(compare_evaluations, view, ids=ids)
    if compared is None:
        return {"compare": empty, "errors": errors, "labels": _statuses(view)}
    for item in compared["evaluations"]:
        if item["project"] != _project_id(view):
            raise NotFound("evaluation")
    return {"compare": compared, "errors": {}, "labels": _statuses(view)}


EVALUATION_PANELS = [
    Panel(
        name="evaluations",
        title={"en": "Evaluations", "zh": "评估"},
        path="/evaluations",
        template="evaluations.html",
        icon="list",
        order=32,
        permission=READ,
        context=_evaluations_page,
    ),
    Panel(
        name="evaluation-compare",
        title={"en": "Compare evaluations", "zh": "比较评估"},
        path="/evaluations/compare",
        template="evaluation_compare.html",
        icon="list",
        nav=False,
        permission=READ,
        context=_compare_page,
    ),
    Panel(
        name="evaluation",
        title={"en": "Evaluation", "zh": "评估详情"},
        path="/evaluations/{evaluation_id:str}",
        template="evaluation.html",
        icon="list",
        permission=READ,
        context=_evaluation_page,
    ),
]
