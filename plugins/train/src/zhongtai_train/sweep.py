"""``train.sweep``: a hyperparameter search whose trials are ``train.run`` jobs.

A sweep is submitted like any job (``POST /api/v1/jobs`` with ``type: train.sweep``).
Its spec names a base training spec (``trial``, whose ``hyperparameters`` stay fixed),
a search space, the MLflow metric to optimize and how to search (sampler, budget,
parallelism, pruning). The sweep job itself only coordinates:

1. **Study.** An Optuna study named ``sweep-<job id>`` is created, or found again
   when the sweep is retried (``POST /api/v1/jobs/{id}/retry`` continues it: trials
   that finished stay finished, trials whose jobs still run are watched again).
2. **Trials.** Up to ``parallelism`` trials run at once. Each asks Optuna for values
   of the space, and becomes a ``train.run`` child job (``parent`` = the sweep, same
   owner and project) with the fixed hyperparameters and the sampled ones, and the
   run name ``trial-<n>``.
3. **Watching.** Every second the children's jobs are read. A succeeded child's
   final value is the latest value of ``metric`` in its MLflow run; a failed or
   cancelled child, or one that never logged the metric, fails its trial. With
   ``pruning`` the metric's values per step are reported to Optuna while the child
   runs, and a trial that Optuna's median rule prunes has its job cancelled.
4. **End.** The result names the best trial (its value, parameters, job and run). A
   sweep that is cancelled, times out or fails cancels the trials still running.

Where the study lives: Optuna's own tables (``studies``, ``trials``,
``alembic_version``, …) have fixed names without the ``train_`` prefix the platform
requires of this plugin's tables, so they are kept apart from the platform's: on
PostgreSQL in the schema ``optuna`` of the platform's database (created if missing;
the connection's ``search_path`` points there, as MLflow's schema does in
:mod:`zhongtai_train.tracking`), on the embedded SQLite database in its own file,
``train/optuna.db`` under the data directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
import threading
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal

from litestar import get
from litestar.params import PathParameter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select

from zhongtai.identity.guard import AccessDep, requires
from zhongtai.jobs import InvalidParams, JobCancelled, JobContext, JobType, Resources
from zhongtai.platform import StashKey
from zhongtai.ui import Panel, View
from zhongtai.web.params import PlatformDep
from zhongtai_train.permissions import EXPERIMENT_READ, JOB_RUN
from zhongtai_train.spec import _PARAM_NAME, MAX_ARG, Hyperparameter, TrainSpec

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.storages import RDBStorage
    from optuna.study import Study
    from optuna.trial import FrozenTrial, Trial
    from sqlalchemy.orm import Session

    from zhongtai.identity.guard import Access
    from zhongtai.jobs.engine import JobEngine
    from zhongtai.platform import Platform

__all__ = [
    "SWEEP_PANELS",
    "SWEEP_ROUTES",
    "TRAIN_SWEEP",
    "CategoricalParam",
    "FloatParam",
    "IntParam",
    "SweepSpec",
    "check_sweep",
    "run_sweep",
    "study_name",
    "study_storage",
]

log = logging.getLogger("zhongtai.train.sweep")

NAME = "train.sweep"
SCHEMA = "optuna"  # on PostgreSQL: Optuna's tables, apart from the platform's
POLL_SECONDS = 0.1  # between two looks at the trials' jobs (a few indexed reads)
REFUSED_RETRY = 5.0  # seconds before a trial that admission refused is submitted again
MAX_PARAMS = 50  # parameters in a search space
MAX_CHOICES = 1000  # choices of one categorical parameter
MAX_GRID = 10_000  # points of a grid
MAX_FIXED = 200  # hyperparameters a train.run spec takes in all
MAX_REPORTED = 10_000  # intermediate values reported per trial (log per epoch, not per batch)
_METRIC = re.compile(r"[\w./ -]{1,250}")  # an MLflow metric key
LIVE = ("queued", "scheduled", "held", "running")
_STATES = {
    "RUNNING": "running",
    "WAITING": "waiting",
    "COMPLETE": "completed",
    "PRUNED": "pruned",
    "FAIL": "failed",
}


class SweepFailed(RuntimeError):
    """The sweep cannot go on; the message is the job's error."""


# --------------------------------------------------------------------------- the spec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IntParam(_Strict):
    """Integers from ``low`` to ``high`` (both included), every ``step``th one, or on a
    log scale (``log``: more values tried near ``low``)."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(default=1, ge=1)
    log: bool = False


class FloatParam(_Strict):
    """Numbers from ``low`` to ``high``; ``log`` samples on a log scale (learning
    rates); ``step`` makes them discrete (and lets the grid sampler use them)."""

    type: Literal["float"]
    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)
    step: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    log: bool = False


Choice = Annotated[Hyperparameter, Field(union_mode="smart")]


class CategoricalParam(_Strict):
    """One of ``choices`` (booleans, numbers or strings, each once)."""

    type: Literal["categorical"]
    choices: list[Choice] = Field(min_length=1, max_length=MAX_CHOICES)

    @field_validator("choices")
    @classmethod
    def _choices(cls, value: list[Hyperparameter]) -> list[Hyperparameter]:
        for item in value:
            if isinstance(item, str) and ("\x00" in item or len(item) > MAX_ARG):
                raise ValueError(f"a choice is at most {MAX_ARG} characters, without NUL")
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError("a choice must be a finite number")
        return value


Param = Annotated[IntParam | FloatParam | CategoricalParam, Field(discriminator="type")]


class SweepSpec(_Strict):
    """The parameters of a ``train.sweep`` job."""

    trial: TrainSpec = Field(
        description="the train.run spec every trial runs; its hyperparameters are fixed"
    )
    space: dict[str, Param] = Field(
        min_length=1,
        max_length=MAX_PARAMS,
        description="the hyperparameters searched: int, float or categorical",
    )
    metric: str = Field(min_length=1, max_length=250, description="the MLflow metric key")
    direction: Literal["minimize", "maximize"] = "minimize"
    sampler: Literal["grid", "random", "tpe"] = "tpe"
    trials: int = Field(default=10, ge=1, le=1000, description="the budget: trials in all")
    parallelism: int = Field(default=1, ge=1, le=32, description="trials running at once")
    pruning: bool = Field(
        default=False,
        description="stop trials whose metric, per step, is worse than the median of the "
        "completed trials at that step",
    )
    pruner_startup_trials: int = Field(
        default=5, ge=0, le=1000, description="completed trials before any is pruned"
    )
    pruner_warmup_steps: int = Field(
        default=0, ge=0, description="steps of a trial before it may be pruned"
    )
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        if not _METRIC.fullmatch(value):
            raise ValueError("a metric key is letters, digits, spaces and _ - . /")
        return value

    @field_validator("space")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not _PARAM_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a parameter name (letters, digits, _ . -)")
        return value


def _count(param: IntParam | FloatParam) -> int:
    """How many values a stepped range has (``high`` rounded down to a step, as Optuna
    does)."""
    if isinstance(param, IntParam):
        return (param.high - param.low) // param.step + 1
    assert param.step is not None
    return int((Decimal(str(param.high)) - Decimal(str(param.low))) // Decimal(str(param.step))) + 1


def space_problem(spec: SweepSpec) -> tuple[str, str] | None:
    """What is wrong with the search space that its schema cannot say, as (field,
    message), or None."""
    fixed = spec.trial.hyperparameters
    for name, param in spec.space.items():
        where = f"space.{name}"
        if name in fixed:
            return where, "is also a fixed hyperparameter (trial.hyperparameters)"
        if isinstance(param, CategoricalParam):
            seen: list[Hyperparameter] = []
            for item in param.choices:
                # True == 1 in Python, and Optuna would take one for the other.
                if any(item == other for other in seen):
                    return f"{where}.choices", f"{item!r} is given twice (true equals 1)"
                seen.append(item)
            continue
        if param.low >= param.high:
            return f"{where}.high", "must be greater than low"
        if param.log and param.low <= 0:
            return f"{where}.low", "must be greater than 0 on a log scale"
        stepped = param.step is not None if isinstance(param, FloatParam) else param.step != 1
        if param.log and stepped:
            return f"{where}.step", "a log scale takes no step"
        if param.step is not None and param.step > param.high - param.low:
            return f"{where}.step", "is larger than the range from low to high"
    if len(fixed) + len(spec.space) > MAX_FIXED:
        return "space", f"at most {MAX_FIXED} hyperparameters in all, fixed and searched"
    if spec.sampler == "grid":
        size = 1
        for name, param in spec.space.items():
            if isinstance(param, FloatParam) and param.step is None:
                return (
                    f"space.{name}.step",
                    "the grid sampler needs a step for a float (or list the values as "
                    "a categorical parameter)",
                )
            size *= len(param.choices) if isinstance(param, CategoricalParam) else _count(param)
            if size > MAX_GRID:
                return "space", f"the grid has more than {MAX_GRID} points"
    return None


def grid_space(spec: SweepSpec) -> dict[str, list[Hyperparameter]]:
    """Every value of each parameter, for Optuna's grid sampler."""
    grid: dict[str, list[Hyperparameter]] = {}
    for name, param in spec.space.items():
        if isinstance(param, CategoricalParam):
            grid[name] = list(param.choices)
        elif isinstance(param, IntParam):
            grid[name] = list(range(param.low, param.high + 1, param.step))
        else:
            assert param.step is not None
            low, step = Decimal(str(param.low)), Decimal(str(param.step))
            grid[name] = [float(low + i * step) for i in range(_count(param))]
    return grid


def budget(spec: SweepSpec) -> int:
    """The trials the sweep runs: ``trials``, or the grid's size if that is smaller."""
    if spec.sampler != "grid":
        return spec.trials
    size = 1
    for values in grid_space(spec).values():
        size *= len(values)
    return min(spec.trials, size)


def distributions(spec: SweepSpec) -> dict[str, BaseDistribution]:
    """The space as Optuna distributions."""
    _optuna()
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, BaseDistribution] = {}
    for name, param in spec.space.items():
        if isinstance(param, IntParam):
            out[name] = IntDistribution(param.low, param.high, log=param.log, step=param.step)
        elif isinstance(param, FloatParam):
            out[name] = FloatDistribution(param.low, param.high, log=param.log, step=param.step)
        else:
            out[name] = CategoricalDistribution(param.choices)
    return out


def check_sweep(platform: Platform, session: Session, project_id: str, spec: BaseModel) -> None:
    """What the schema cannot know, checked at submission (422 naming the field): the
    space, and the trial's spec as ``train.run`` checks it (fields ``trial.…``)."""
    from zhongtai_train.jobs import TRAIN_RUN, check_spec

    assert isinstance(spec, SweepSpec)
    problem = space_problem(spec)
    if problem is not None:
        raise InvalidParams(*problem)
    if platform.job_types.get(TRAIN_RUN.name) is None:
        raise InvalidParams("trial", f"the job type {TRAIN_RUN.name} is not installed")
    try:
        check_spec(platform, session, project_id, spec.trial)
    except InvalidParams as exc:
        raise InvalidParams(f"trial.{exc.field}", exc.message) from None


# --------------------------------------------------------------------------- the study

_STORAGE: StashKey[RDBStorage] = StashKey()
_STORAGE_LOCK = threading.Lock()
_IMPORT_LOCK = threading.Lock()


def _optuna() -> None:
    """Import Optuna once, under a lock. Its packages import each other, so two threads
    importing it for the first time at once (a sweep's worker and the sweep's page, say)
    can get "cannot import name … from partially initialized module". Called where a
    thread may first need Optuna: the API's checks, the page, a sweep's ``open``
    (every later step of a sweep runs after it)."""
    with _IMPORT_LOCK:
        import optuna.distributions
        import optuna.pruners
        import optuna.samplers
        import optuna.storages
        import optuna.study
        import optuna.trial  # noqa: F401


def study_name(job_id: str) -> str:
    return f"sweep-{job_id}"


def storage_url(platform: Platform) -> str:
    """The SQLAlchemy URL of Optuna's storage (see the module's documentation)."""
    from sqlalchemy.engine import make_url

    if platform.settings.is_embedded_database:
        folder = platform.settings.home / "train"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return f"sqlite:///{folder / 'optuna.db'}"
    url = make_url(platform.settings.effective_database_url).set(drivername="postgresql+psycopg")
    url = url.update_query_dict({"options": f"-csearch_path={SCHEMA}"})
    return url.render_as_string(hide_password=False)


def study_storage(platform: Platform) -> RDBStorage:
    """The platform's Optuna storage (made, and its tables created, on first use)."""
    if _STORAGE in platform.stash:
        return platform.stash[_STORAGE]
    with _STORAGE_LOCK:
        if _STORAGE in platform.stash:
            return platform.stash[_STORAGE]
        _optuna()
        import optuna
        from sqlalchemy import text

        # Optuna's messages go through the platform's logging, not straight to stderr.
        optuna.logging.disable_default_handler()
        optuna.logging.enable_propagation()
        url = storage_url(platform)
        if platform.settings.is_embedded_database:
            options: dict[str, Any] = {"connect_args": {"timeout": 30}}
        else:
            with platform.db.engine.begin() as conn:
                conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
            options = {"pool_pre_ping": True}
        storage = optuna.storages.RDBStorage(url, engine_kwargs=options)
        platform.stash[_STORAGE] = storage
        return storage


def _best(trials: list[FrozenTrial], direction: str) -> FrozenTrial | None:
    """The completed trial with the best value (the first of equals)."""
    _optuna()
    from optuna.trial import TrialState

    done = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE and t.value is not None and not math.isnan(t.value)
    ]
    if not done:
        return None
    sign = 1.0 if direction == "minimize" else -1.0
    return min(done, key=lambda t: (sign * float(t.value or 0.0), t.number))


# --------------------------------------------------------------------------- MLflow


def _latest_metric(platform: Platform, run_id: str, key: str) -> float | None:
    """The latest value of ``key`` in the run (NaN as logged), or None if never logged."""
    from sqlalchemy import text

    from zhongtai_train.tracking import tracking

    with tracking(platform).engine.connect() as conn:
        row = conn.execute(
            text('SELECT value, is_nan FROM latest_metrics WHERE run_uuid = :run AND "key" = :key'),
            {"run": run_id, "key": key},
        ).first()
    if row is None:
        return None
    return math.nan if row[1] else float(row[0])


def _steps_after(
    platform: Platform, run_id: str, key: str, after: int | None
) -> list[tuple[int, float]]:
    """(step, value) of the metric's steps after ``after``, the last value logged at
    each step (MLflow's (run, key, step) index makes this a short range scan)."""
    from sqlalchemy import text

    from zhongtai_train.tracking import tracking

    with tracking(platform).engine.connect() as conn:
        rows = conn.execute(
            text(
                'SELECT step, value, is_nan FROM metrics WHERE run_uuid = :run AND "key" = :key '
                'AND step > :after ORDER BY step, "timestamp" LIMIT :limit'
            ),
            {
                "run": run_id,
                "key": key,
                "after": -(2**63) if after is None else after,
                "limit": MAX_REPORTED + 1,
            },
        ).all()
    last: dict[int, float] = {}
    for step, value, is_nan in rows:
        last[int(step)] = math.nan if is_nan else float(value)
    return sorted(last.items())


# --------------------------------------------------------------------------- the job


@dataclasses.dataclass
class _Active:
    """A trial whose job has not finished (or was not submitted yet)."""

    trial: Trial
    job_id: str | None
    run_id: str | None = None
    last_step: int | None = None  # the last step reported to Optuna
    reported: int = 0
    pruning_checked: int = -1  # completed trials when should_prune last ran
    retry_at: float = 0.0  # when a refused submission is tried again
    refused: bool = False


class _Sweep:
    """One attempt of a sweep job (see the module's documentation)."""

    def __init__(self, ctx: JobContext, spec: SweepSpec) -> None:
        from zhongtai.identity.principal import Principal
        from zhongtai.jobs.engine import jobs_engine
        from zhongtai_train.jobs import TRAIN_RUN

        problem = space_problem(spec)
        if problem is not None:
            raise SweepFailed(f"{problem[0]}: {problem[1]}")
        if ctx.owner_id is None:
            raise SweepFailed("the sweep has no owner to run its trials for")
        self.ctx = ctx
        self.spec = spec
        self.platform = ctx.platform
        self.engine: JobEngine = jobs_engine(self.platform)
        child_type = self.engine.types.get(TRAIN_RUN.name)
        if child_type is None:
            raise SweepFailed(f"the job type {TRAIN_RUN.name} is not installed")
        self.child_type = child_type
        # The trials act for the sweep's owner: train.run gives the code an MLflow key
        # of the job's owner.
        self.principal = Principal(user_id=ctx.owner_id)
        self.distributions = distributions(spec)
        self.budget = budget(spec)
        self.name = study_name(ctx.job_id)
        self.active: dict[int, _Active] = {}
        self.created = 0
        self.completed = 0
        self.best_value: float | None = None
        self._progress: tuple[int, float | None] | None = None

    # -- the study -------------------------------------------------------------------

    def open(self) -> Study:
        _optuna()
        import optuna
        from optuna.trial import TrialState

        spec = self.spec
        storage = study_storage(self.platform)
        try:
            earlier = storage.get_all_trials(storage.get_study_id_from_name(self.name))
        except KeyError:
            earlier = []
        # A retried sweep must not draw the same values again: the seed moves on.
        seed = None if spec.seed is None else (spec.seed + len(earlier)) % 2**32
        sampler: optuna.samplers.BaseSampler
        if spec.sampler == "grid":
            sampler = _grid_sampler(grid_space(spec), seed)
        elif spec.sampler == "random":
            sampler = optuna.samplers.RandomSampler(seed=seed)
        else:
            sampler = optuna.samplers.TPESampler(seed=seed)
        pruner: optuna.pruners.BasePruner = (
            optuna.pruners.MedianPruner(
                n_startup_trials=spec.pruner_startup_trials,
                n_warmup_steps=spec.pruner_warmup_steps,
            )
            if spec.pruning
            else optuna.pruners.NopPruner()
        )
        study = optuna.create_study(
            storage=storage,
            study_name=self.name,
            direction=spec.direction,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
        if not earlier:
            study.set_user_attr("job_id", self.ctx.job_id)
            study.set_user_attr("metric", spec.metric)
            self.ctx.log(
                f"[sweep] study {self.name}: {spec.sampler} sampler, {self.budget} trials, "
                f"{spec.parallelism} at a time, {spec.direction} {spec.metric}"
                + (", pruning" if spec.pruning else "")
            )
        self.created = len(earlier)
        self.completed = sum(1 for t in earlier if t.state == TrialState.COMPLETE)
        best = _best(earlier, spec.direction)
        self.best_value = best.value if best is not None else None
        self.study = study
        self._resume(earlier)
        return study

    def _resume(self, earlier: list[FrozenTrial]) -> None:
        """Watch again the trials an earlier attempt left running."""
        from optuna.trial import Trial, TrialState

        running = [t for t in earlier if t.state == TrialState.RUNNING]
        if not running:
            return
        children = self._children_by_name()
        for frozen in running:
            job_id = frozen.user_attrs.get("job_id") or children.get(_run_name(frozen.number))
            entry = _Active(Trial(self.study, frozen._trial_id), job_id, last_step=frozen.last_step)
            entry.reported = len(frozen.intermediate_values)
            if job_id and "job_id" not in frozen.user_attrs:
                entry.trial.set_user_attr("job_id", job_id)
            self.active[frozen.number] = entry
            self.ctx.log(
                f"[sweep] trial {frozen.number}: continued"
                + (f" (job {job_id})" if job_id else " (its job was not submitted yet)")
            )

    def _children_by_name(self) -> dict[str, str]:
        from zhongtai.jobs.models import Job

        with self.platform.db.session() as session:
            rows = session.execute(
                select(Job.id, Job.params).where(Job.parent_id == self.ctx.job_id)
            ).all()
        found: dict[str, str] = {}
        for job_id, params in rows:
            name = params.get("run_name") if isinstance(params, dict) else None
            if isinstance(name, str):
                found[name] = job_id
        return found

    # -- the loop --------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.open()
        try:
            while True:
                if self.ctx.cancelled:
                    raise JobCancelled()
                self._start_trials()
                self._poll()
                self._report_progress()
                if not self.active and self.created >= self.budget:
                    break
                self.ctx.wait(POLL_SECONDS)
        except BaseException as exc:
            reason = (
                "the sweep was cancelled"
                if isinstance(exc, JobCancelled)
                else f"the sweep failed: {exc}"
            )
            self._stop_all(reason)
            raise
        return self._result()

    def _start_trials(self) -> None:
        while len(self.active) < self.spec.parallelism and self.created < self.budget:
            trial = self.study.ask(self.distributions)
            self.created += 1
            entry = _Active(trial, None)
            self.active[trial.number] = entry
            self.ctx.log(f"[sweep] trial {trial.number}: {_params_text(trial.params)}")
            if not self._submit(trial.number, entry):
                return  # admission refused it: the others would be refused too

    def _submit(self, number: int, entry: _Active) -> bool:
        """Submit the trial's train.run job; False if admission refused it for now."""
        from zhongtai.jobs.engine import JobRefused

        if time.monotonic() < entry.retry_at:
            return False
        spec = self.spec
        try:
            child = TrainSpec.model_validate(
                {
                    **spec.trial.model_dump(),
                    "hyperparameters": {**spec.trial.hyperparameters, **entry.trial.params},
                    "run_name": _run_name(number),
                }
            )
        except ValidationError as exc:
            self._fail(number, entry, f"its spec is not valid: {exc.errors()[0]['msg']}")
            return True
        try:
            with self.platform.db.transaction() as session:
                job = self.engine.submit(
                    session,
                    job_type=self.child_type,
                    project_id=self.ctx.project_id,
                    principal=self.principal,
                    params=child,
                    parent_id=self.ctx.job_id,
                )
        except JobRefused as exc:
            entry.retry_at = time.monotonic() + REFUSED_RETRY
            if not entry.refused:
                entry.refused = True
                self.ctx.log(f"[sweep] trial {number}: waiting to be admitted ({exc})")
            return False
        except InvalidParams as exc:
            raise SweepFailed(
                f"trial {number} was refused: trial.{exc.field}: {exc.message}"
            ) from None
        self.engine.dispatch([job])
        entry.job_id = job.id
        entry.trial.set_user_attr("job_id", job.id)
        self.ctx.log(f"[sweep] trial {number}: job {job.id}")
        return True

    def _poll(self) -> None:
        from zhongtai.jobs.models import Job
        from zhongtai_train.models import TrainJob

        ids = [e.job_id for e in self.active.values() if e.job_id is not None]
        jobs: dict[str, tuple[str, str | None]] = {}
        runs: dict[str, str | None] = {}
        if ids:
            with self.platform.db.session() as session:
                for job_id, status, error in session.execute(
                    select(Job.id, Job.status, Job.error).where(Job.id.in_(ids))
                ):
                    jobs[job_id] = (status, error)
                runs = dict(
                    session.execute(
                        select(TrainJob.job_id, TrainJob.run_id).where(TrainJob.job_id.in_(ids))
                    ).all()
                )
        for number, entry in sorted(self.active.items()):
            if entry.job_id is None:
                self._submit(number, entry)
                continue
            if entry.run_id is None:
                entry.run_id = runs.get(entry.job_id)
            status, error = jobs.get(entry.job_id, ("gone", None))
            if status == "succeeded":
                self._complete(number, entry)
            elif status in ("failed", "cancelled", "gone"):
                detail = f": {error.splitlines()[0][:300]}" if error else ""
                self._fail(number, entry, f"its job {entry.job_id} {status}{detail}")
            elif status == "running" and self.spec.pruning and entry.run_id is not None:
                self._watch(number, entry)

    def _complete(self, number: int, entry: _Active) -> None:
        spec = self.spec
        if entry.run_id is None:
            self._fail(number, entry, "its job left no MLflow run")
            return
        if spec.pruning:
            self._report(number, entry)  # the whole curve, for the median of later trials
        value = _latest_metric(self.platform, entry.run_id, spec.metric)
        if value is None:
            self._fail(
                number,
                entry,
                f"the metric {spec.metric!r} was never logged to its run {entry.run_id}",
            )
            return
        if math.isnan(value):
            self._fail(number, entry, f"the metric {spec.metric!r} is NaN")
            return
        self.study.tell(entry.trial, value)
        self.completed += 1
        del self.active[number]
        better = self.best_value is None or (
            value < self.best_value if spec.direction == "minimize" else value > self.best_value
        )
        if better:
            self.best_value = value
        self.ctx.log(
            f"[sweep] trial {number}: completed, {spec.metric} = {value:.6g}"
            + (" (best so far)" if better else "")
        )

    def _fail(self, number: int, entry: _Active, reason: str) -> None:
        from optuna.trial import TrialState

        entry.trial.set_user_attr("reason", reason[:500])
        self.study.tell(entry.trial, state=TrialState.FAIL)
        self.active.pop(number, None)
        self.ctx.log(f"[sweep] trial {number}: failed: {reason}")

    def _report(self, number: int, entry: _Active) -> bool:
        """Report the metric's new steps to Optuna; whether there were any."""
        assert entry.run_id is not None
        if entry.reported >= MAX_REPORTED:
            return False
        points = _steps_after(self.platform, entry.run_id, self.spec.metric, entry.last_step)
        for step, value in points:
            if entry.reported >= MAX_REPORTED:
                self.ctx.log(
                    f"[sweep] trial {number}: {MAX_REPORTED} steps of {self.spec.metric} "
                    "reported; later ones are not used for pruning"
                )
                break
            entry.trial.report(value, step)
            entry.last_step = step
            entry.reported += 1
        return bool(points)

    def _watch(self, number: int, entry: _Active) -> None:
        """Report a running trial's new steps; prune it if Optuna says so."""
        from optuna.trial import TrialState

        new = self._report(number, entry)
        if entry.last_step is None:
            return
        if not new and entry.pruning_checked == self.completed:
            return  # nothing changed since the last answer
        entry.pruning_checked = self.completed
        if not entry.trial.should_prune():
            return
        assert entry.job_id is not None
        self._cancel_child(entry.job_id)
        reason = (
            f"pruned at step {entry.last_step}: {self.spec.metric} worse than the median "
            "of the completed trials"
        )
        entry.trial.set_user_attr("reason", reason)
        self.study.tell(entry.trial, state=TrialState.PRUNED)
        del self.active[number]
        self.ctx.log(f"[sweep] trial {number}: {reason}; its job {entry.job_id} is cancelled")

    def _cancel_child(self, job_id: str) -> None:
        from zhongtai.jobs.engine import JobConflict

        with contextlib.suppress(JobConflict, LookupError):  # it finished meanwhile
            self.engine.cancel(job_id)

    def _stop_all(self, reason: str) -> None:
        """Cancel the trials still running and fail them with ``reason``."""
        for number, entry in sorted(self.active.items()):
            try:
                if entry.job_id is not None:
                    self._cancel_child(entry.job_id)
                self._fail(number, entry, reason)
            except Exception:
                log.warning(
                    "sweep %s: could not stop trial %s", self.ctx.job_id, number, exc_info=True
                )

    def _report_progress(self) -> None:
        done = self.created - len(self.active)
        if self._progress == (done, self.best_value):
            return
        self._progress = (done, self.best_value)
        best = "—" if self.best_value is None else f"{self.best_value:.6g}"
        self.ctx.progress(done / self.budget, f"{done}/{self.budget} trials, best {best}")

    def _result(self) -> dict[str, Any]:
        from optuna.trial import TrialState

        from zhongtai_train.models import TrainJob

        trials = self.study.get_trials(deepcopy=False)
        counts = {
            name: sum(1 for t in trials if t.state == state)
            for name, state in (
                ("completed", TrialState.COMPLETE),
                ("pruned", TrialState.PRUNED),
                ("failed", TrialState.FAIL),
            )
        }
        best = _best(trials, self.spec.direction)
        if best is None:
            raise SweepFailed(
                f"no trial completed ({counts['pruned']} pruned, {counts['failed']} failed)"
            )
        job_id = best.user_attrs.get("job_id")
        run_id = None
        if job_id:
            with self.platform.db.session() as session:
                row = session.get(TrainJob, job_id)
                run_id = row.run_id if row is not None else None
        self.ctx.log(
            f"[sweep] best: trial {best.number}, {self.spec.metric} = {best.value:.6g}, "
            f"{_params_text(best.params)}"
        )
        return {
            "study": self.name,
            "best_trial": best.number,
            "best_value": best.value,
            "best_params": best.params,
            "best_job_id": job_id,
            "best_run_id": run_id,
            "trials": len(trials),
            **counts,
        }


def _grid_sampler(grid: dict[str, list[Hyperparameter]], seed: int | None) -> Any:
    """Optuna's grid sampler, without its ``study.stop()`` once every point was tried:
    that only works inside ``study.optimize``, and the sweep's budget (at most the
    grid's size) already ends it."""
    import optuna

    class GridSampler(optuna.samplers.GridSampler):
        def after_trial(self, *args: Any, **kwargs: Any) -> None:
            pass

    return GridSampler(grid, seed=seed)


def _run_name(number: int) -> str:
    return f"trial-{number}"


def _params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items())


def run_sweep(ctx: JobContext, spec: SweepSpec) -> dict[str, Any]:
    """The ``train.sweep`` handler (see the module's documentation)."""
    return _Sweep(ctx, spec).run()


TRAIN_SWEEP = JobType(
    NAME,
    run_sweep,
    SweepSpec,
    description="Train: a hyperparameter search (Optuna) whose trials are train.run jobs",
    queue="train",
    timeout=7 * 86_400,
    retries=0,
    resources=Resources(cpu=0.1, memory_mb=256, gpus=0),
    permission=JOB_RUN.name,
    check=check_sweep,
    # Its trials are jobs of their own, and the study is in the database: an attempt
    # whose worker died is picked up where it was (see _Sweep._resume).
    resume_interrupted=True,
)


# --------------------------------------------------------------------------- the API


def _trials_of(platform: Platform, name: str) -> list[FrozenTrial]:
    storage = study_storage(platform)
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return []
    return storage.get_all_trials(study_id)


def sweep_dict(platform: Platform, access: Access, job_id: str) -> dict[str, Any]:
    """A sweep job, its spec and its trials, if the caller can read its project's
    experiments (else :class:`~zhongtai.identity.access.NotFound`)."""
    from zhongtai.jobs.models import Job
    from zhongtai_train.models import TrainJob

    with platform.db.session() as session:
        job = session.get(Job, job_id)
        project = job.project_id if job is not None and job.type == NAME else None
        access.require(session, project_id=project, permission=EXPERIMENT_READ)
        assert job is not None
        children = session.execute(
            select(Job.id, Job.status, Job.params).where(Job.parent_id == job.id)
        ).all()
        child_ids = [c[0] for c in children]
        runs: dict[str, str | None] = (
            dict(
                session.execute(
                    select(TrainJob.job_id, TrainJob.run_id).where(TrainJob.job_id.in_(child_ids))
                ).all()
            )
            if child_ids
            else {}
        )
        session.expunge(job)
    status_of = {c[0]: c[1] for c in children}
    by_name = {
        c[2].get("run_name"): c[0]
        for c in children
        if isinstance(c[2], dict) and c[2].get("run_name")
    }
    try:
        spec: SweepSpec | None = SweepSpec.model_validate(job.params)
    except ValidationError:
        spec = None
    direction = spec.direction if spec is not None else "minimize"
    started = job.attempts > 0
    frozen = _trials_of(platform, study_name(job.id)) if started else []
    best = _best(frozen, direction)
    trials: list[dict[str, Any]] = []
    for t in frozen:
        child = t.user_attrs.get("job_id") or by_name.get(_run_name(t.number))
        trials.append(
            {
                "number": t.number,
                "state": _STATES.get(t.state.name, t.state.name.lower()),
                "params": t.params,
                "value": None if t.value is None or math.isnan(t.value) else t.value,
                "reason": t.user_attrs.get("reason"),
                "job": child,
                "job_status": status_of.get(child) if child else None,
                "run": runs.get(child) if child else None,
                "run_name": _run_name(t.number),
                "last_step": t.last_step,
                "best": best is not None and t.number == best.number,
            }
        )
    counts: dict[str, int] = {}
    for item in trials:
        state = str(item["state"])
        counts[state] = counts.get(state, 0) + 1
    best_item = next((item for item in trials if item["best"]), None)
    return {
        "id": job.id,
        "project": job.project_id,
        "status": job.status,
        "error": job.error,
        "progress": job.progress,
        "progress_message": job.progress_message,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "study": study_name(job.id),
        "metric": spec.metric if spec else None,
        "direction": direction,
        "sampler": spec.sampler if spec else None,
        "budget": budget(spec) if spec else None,
        "parallelism": spec.parallelism if spec else None,
        "pruning": spec.pruning if spec else None,
        "experiment": spec.trial.experiment if spec else None,
        "space": {k: v.model_dump(mode="json") for k, v in spec.space.items()} if spec else {},
        "fixed": dict(spec.trial.hyperparameters) if spec else {},
        "counts": counts,
        "best": best_item,
        "trials": trials,
    }


@get("/sweeps/{job_id:str}", tags=["train"], sync_to_thread=True, opt=requires(EXPERIMENT_READ))
def get_sweep(
    platform: PlatformDep,
    access: AccessDep,
    job_id: Annotated[str, PathParameter(min_length=1, max_length=32)],
) -> dict[str, Any]:
    """A sweep: its spec, status and trials (number, state, parameters, value, the
    trial's job and MLflow run), the best trial flagged. 404 unless the caller can read
    the experiments of the sweep's project."""
    return sweep_dict(platform, access, job_id)


SWEEP_ROUTES: list[Any] = [get_sweep]


# --------------------------------------------------------------------------- the page


def _sweep_page(view: View) -> Mapping[str, Any]:
    """The sweep of the current project: facts, the trial table and the scatter view."""
    from zhongtai.identity.access import NotFound
    from zhongtai.ui.core_pages import call_api

    job_id = str(view.params.get("job_id", ""))
    sweep, _errors = call_api(get_sweep, view, job_id=job_id)
    current = view.project.id if view.project is not None else None
    if sweep is None or sweep["project"] != current:
        raise NotFound("sweep")
    _ = view.gettext
    return {
        "sweep": sweep,
        "names": sorted(sweep["space"]),
        "live": sweep["status"] in LIVE,
        "api_url": f"/api/v1/train/sweeps/{sweep['id']}",
        "interval": 3,
        "states": {
            "running": _("running"),
            "waiting": _("waiting"),
            "completed": _("completed"),
            "pruned": _("pruned"),
            "failed": _("failed"),
        },
    }


SWEEP_PANELS: list[Panel] = [
    Panel(
        name="sweep",
        title={"en": "Sweep", "zh": "超参数搜索"},
        path="/sweeps/{job_id:str}",
        template="sweep.html",
        icon="list",
        nav=False,
        permission=EXPERIMENT_READ.name,
        context=_sweep_page,
    ),
]
