"""``train.run``: a training job, from a commit to a finished MLflow run.

One attempt of the job:

1. **Take over.** If an earlier attempt of the same job started work on a backend (its
   worker died), that work is cancelled and cleaned up first: a retry never leaves two
   copies of one training running.
2. **Code.** Git code is fetched at the requested commit into a private folder
   (``git init`` + ``git fetch --depth 1 -- <url> <commit>``, an argument list, with
   ``GIT_ALLOW_PROTOCOL`` limited to https and ssh, and no prompt). An image brings
   its own code.
3. **Inputs.** Each dataset version is made available at ``ZT_INPUT_<NAME>``: its
   files hard-linked (or copied) from the local store into the attempt's folder.
4. **Tracking.** The experiment is found or created in the project, and a run created
   with the job's tags and the hyperparameters as parameters. The code gets
   ``MLFLOW_TRACKING_URI``, ``MLFLOW_RUN_ID``, ``MLFLOW_EXPERIMENT_ID`` and
   ``MLFLOW_TRACKING_TOKEN``: a platform API key of the job's owner, limited to this
   project and to reading and writing experiments, that expires with the run's
   deadline and is revoked when the job ends. ``mlflow.start_run()`` in the code then
   continues that run; nothing needs configuring.
5. **Run and watch.** The backend starts the work; its log lines become the job's log
   (live in the UI and ``logs/stream``), its state the job's. Cancelling the job, or the
   spec's ``timeout`` passing, stops the work (``DeadlineExceeded``).
6. **Always**: the key is revoked, the backend cleans up, the folder is removed, and
   an MLflow run still marked running is ended FINISHED, FAILED or KILLED.

A failed run fails the job with the backend's reason (``exit code 3``,
``BackoffLimitExceeded``, …); the platform adds no retries of its own (the job type's
``retries`` is 0; resubmit or ``POST /api/v1/jobs/{id}/retry``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, ValidationError
from sqlalchemy import select

from zhongtai.hooks.events import utcnow
from zhongtai.jobs import InvalidParams, JobCancelled, JobContext, JobType, Resources
from zhongtai.metadata.lineage import EntityRef
from zhongtai_train.backends import (
    NAMESPACE,
    Backend,
    BackendError,
    Distributed,
    InputMount,
    Launch,
    Outcome,
    Requirements,
    SpecError,
)
from zhongtai_train.events import DATA_VERSION_KIND, RUN_KIND
from zhongtai_train.models import TrainJob
from zhongtai_train.permissions import EXPERIMENT_READ, EXPERIMENT_WRITE, JOB_RUN
from zhongtai_train.spec import ArchiveCode, GitCode, ImageCode, TrainSpec, relative_path
from zhongtai_train.tracking import settings_of

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from zhongtai.platform import Platform

__all__ = [
    "TRAIN_RUN",
    "Attempt",
    "TrainFailed",
    "backend_attempt",
    "backend_class",
    "backend_options",
    "raise_unless_succeeded",
    "run_training",
]

log = logging.getLogger("zhongtai.train.jobs")

POLL_SECONDS = 0.5
FIRST_POLL = 0.05  # the first looks at a starting run; growing to POLL_SECONDS
DEEPSPEED_FILE = "deepspeed_config.json"
JOB_KIND = "job"  # a platform job, as a lineage entity
#: Where dataset inputs go inside the code's folder on a backend that ships the folder.
INPUTS_FOLDER = ".zt-inputs"
TAIL_LINES = 10  # lines of a failed run's output quoted in the job's error
GIT_TIMEOUT = 600  # seconds for the checkout
KEY_MARGIN = timedelta(minutes=15)  # the code's key outlives the deadline by this much
# A run's own deadline leaves the job (7 days at most) time to stop it and clean up.
MAX_RUN_SECONDS = 7 * 86_400 - 600
_DNS_LABEL = re.compile(r"[^a-z0-9-]+")


class TrainFailed(RuntimeError):
    """The training ended badly; the message is the job's error."""


# --------------------------------------------------------------------------- backends


def backend_class(name: str) -> type[Backend]:
    """The installed backend called ``name``; InvalidParams when there is none."""
    from zhongtai.drivers import DriverError, load_driver

    try:
        found = load_driver(NAMESPACE, name)
    except DriverError as exc:
        raise InvalidParams("backend", str(exc)) from None
    if not (isinstance(found, type) and issubclass(found, Backend)):
        raise InvalidParams("backend", f"{name} is not a zhongtai_train backend")
    return found


def backend_options(platform: Platform, cls: type[Backend], given: dict[str, Any]) -> BaseModel:
    """The backend's options: the setting's defaults for it, then the job's, validated."""
    for name in sorted(set(given) & cls.operator_options):
        raise InvalidParams(
            f"backend_options.{name}",
            f"only the operator sets this (the setting train.backend_options.{cls.name})",
        )
    merged = {**settings_of(platform).backend_options.get(cls.name, {}), **given}
    try:
        return cls.options_model.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidParams(
            f"backend_options.{where}" if where else "backend_options", first["msg"]
        ) from None


def _launch_for_check(spec: TrainSpec, options: BaseModel, job_id: str = "check") -> Launch:
    """A Launch with what is known before the job runs, for :meth:`Backend.check`."""
    return Launch(
        job_id=job_id,
        project_id="",
        attempt=0,
        name=dns_label(f"zt-train-{job_id}"),
        argv=(*spec.entry_point, *spec.args),
        env={},
        secret_env=frozenset(),
        workdir=None if isinstance(spec.code, ImageCode) else Path("/nonexistent"),
        image=spec.code.image if isinstance(spec.code, ImageCode) else None,
        requirements=Requirements(
            spec.resources.cpu, spec.resources.memory_mb, spec.resources.gpus
        ),
        distributed=Distributed(spec.distributed.nodes, spec.distributed.procs_per_node),
        inputs=tuple(
            InputMount(item.name, item.dataset_version, None, None) for item in spec.inputs
        ),
        timeout=spec.timeout or MAX_RUN_SECONDS,
        options=options,
    )


def check_spec(platform: Platform, session: Session, project_id: str, spec: BaseModel) -> None:
    """What the schema cannot know, checked at submission (422 naming the field)."""
    assert isinstance(spec, TrainSpec)
    settings = settings_of(platform)
    cls = backend_class(spec.backend or settings.default_backend)
    options = backend_options(platform, cls, spec.backend_options)
    git_file = isinstance(spec.code, GitCode) and spec.code.url.startswith("file://")
    if git_file and not settings.allow_file_git:
        raise InvalidParams("code.url", "file:// repositories are off (the setting allow_file_git)")
    from zhongtai_train.quotas import check_gpus

    check_gpus(platform, session, project_id, spec)
    if isinstance(spec.code, ArchiveCode):
        _check_archive(platform, session, project_id, spec.code)
    if spec.inputs:
        versions = _input_versions(
            platform, session, project_id, [i.dataset_version for i in spec.inputs]
        )
        for index, item in enumerate(spec.inputs):
            if item.dataset_version not in versions:
                raise InvalidParams(
                    f"inputs.{index}.dataset_version", "no such committed version in this project"
                )
    try:
        cls(platform).check(_launch_for_check(spec, options))
    except SpecError as exc:
        raise InvalidParams(exc.field, exc.message) from None


def _check_archive(
    platform: Platform, session: Session, project_id: str, code: ArchiveCode
) -> None:
    if code.dataset_version not in _input_versions(
        platform, session, project_id, [code.dataset_version], field="code"
    ):
        raise InvalidParams("code.dataset_version", "no such committed version in this project")
    from zhongtai_data.models import File

    found = session.scalar(
        select(File.id).where(File.version_id == code.dataset_version, File.path == code.path)
    )
    if found is None:
        raise InvalidParams("code.path", "no such file in the version")
    if not code.path.lower().endswith((".zip", ".tar", ".tar.gz", ".tgz")):
        raise InvalidParams("code.path", "must be a .zip, .tar or .tar.gz archive")


def _input_versions(
    platform: Platform, session: Session, project_id: str, ids: list[str], field: str = "inputs"
) -> set[str]:
    """Which of ``ids`` are committed dataset versions of the project."""
    record = platform.plugins.get("data")
    if record is None or not record.loaded:
        raise InvalidParams(field, "datasets need the data plugin")
    from zhongtai_data.models import Dataset, Version

    found = session.scalars(
        select(Version.id)
        .join(Dataset, Dataset.id == Version.dataset_id)
        .where(Version.id.in_(ids), Dataset.project_id == project_id, Version.status == "committed")
    )
    return set(found)


# --------------------------------------------------------------------------- the job


def dns_label(text: str) -> str:
    """``text`` as a DNS-1123 label (lower case, digits, '-'; at most 63 characters)."""
    label = _DNS_LABEL.sub("-", text.lower()).strip("-")[:63].rstrip("-")
    return label or "zt-train"


def jobs_dir(platform: Platform) -> Path:
    configured = settings_of(platform).jobs_dir
    return Path(configured) if configured else platform.settings.home / "train" / "jobs"


def tracking_uri(platform: Platform) -> str:
    configured = settings_of(platform).job_tracking_uri
    return configured or f"{platform.settings.base_url.rstrip('/')}/mlflow"


def run_training(ctx: JobContext, spec: TrainSpec) -> dict[str, Any]:
    """The ``train.run`` handler (see the module's documentation)."""
    platform = ctx.platform
    settings = settings_of(platform)
    cls = backend_class(spec.backend or settings.default_backend)
    options = backend_options(platform, cls, spec.backend_options)
    run: dict[str, str] | None = None
    gpus = spec.resources.gpus * spec.distributed.nodes
    with backend_attempt(ctx, cls(platform), gpus=gpus, resume=True) as attempt:
        if attempt.earlier is not None:
            run = attempt.resume(spec.timeout or MAX_RUN_SECONDS)
            return _result(cls.name, run, attempt.outcome)
        ctx.progress(0.0, "fetching the code")
        workdir = _checkout(ctx, spec, attempt.folder, settings.allow_file_git)
        if workdir is not None and spec.distributed.deepspeed_config is not None:
            # Next to the code, so every backend that ships the folder ships it too.
            (workdir / DEEPSPEED_FILE).write_text(json.dumps(spec.distributed.deepspeed_config))
        inputs = _materialize_inputs(
            ctx,
            spec,
            workdir / INPUTS_FOLDER
            if cls.ships_workdir and workdir is not None
            else attempt.folder / "inputs",
        )
        timeout = spec.timeout or MAX_RUN_SECONDS
        key = attempt.mint_key(timeout)
        with attempt.mlflow_client(key) as client:
            run = _start_run(ctx, client, spec, cls.name)
            _save(platform, ctx.job_id, run_id=run["run_id"], experiment_id=run["experiment_id"])
            _record_lineage(ctx, spec, run["run_id"])
            env = _environment(platform, ctx, spec, run, key)
            launch = Launch(
                job_id=ctx.job_id,
                project_id=ctx.project_id,
                attempt=ctx.attempt,
                name=dns_label(f"zt-train-{ctx.job_id}"),
                argv=_argv(spec),
                env=env,
                secret_env=frozenset({"MLFLOW_TRACKING_TOKEN"}),
                workdir=workdir,
                image=spec.code.image if isinstance(spec.code, ImageCode) else None,
                requirements=Requirements(
                    spec.resources.cpu, spec.resources.memory_mb, spec.resources.gpus
                ),
                distributed=Distributed(spec.distributed.nodes, spec.distributed.procs_per_node),
                inputs=inputs,
                timeout=timeout,
                options=options,
            )
            attempt.run(launch, client, run["run_id"])
    return _result(cls.name, run, attempt.outcome)


def _record_lineage(ctx: JobContext, spec: TrainSpec, run_id: str) -> None:
    """Dataset versions (inputs, a code archive) → this job → its MLflow run."""
    job = EntityRef(JOB_KIND, ctx.job_id)
    for item in spec.inputs:
        ctx.record_lineage(EntityRef(DATA_VERSION_KIND, item.dataset_version), job, "input")
    if isinstance(spec.code, ArchiveCode):
        ctx.record_lineage(EntityRef(DATA_VERSION_KIND, spec.code.dataset_version), job, "code")
    ctx.record_lineage(job, EntityRef(RUN_KIND, run_id), "produced")


def _result(backend: str, run: dict[str, str] | None, outcome: Outcome) -> dict[str, Any]:
    raise_unless_succeeded(outcome, "training")
    return {
        "backend": backend,
        "run_id": run["run_id"] if run else None,
        "experiment_id": run["experiment_id"] if run else None,
        "state": outcome.state,
        "exit_code": outcome.exit_code,
    }


@dataclasses.dataclass(frozen=True)
class EarlierRun:
    """A run an earlier attempt started on the backend and never saw end: its worker
    died (``train.run`` resumes interrupted attempts)."""

    attempt: int
    handle: str
    run_id: str | None
    experiment_id: str | None
    key_id: str | None
    started: datetime


class Attempt:
    """One attempt of a job that runs a process on a backend with an MLflow run:
    ``train.run`` and ``train.evaluate`` alike. Made by :func:`backend_attempt`, which
    always cleans up after it (see :func:`_finish`)."""

    def __init__(
        self, ctx: JobContext, backend: Backend, folder: Path, earlier: EarlierRun | None
    ) -> None:
        self.ctx = ctx
        self.backend = backend
        #: The attempt's private folder (removed when it ends).
        self.folder = folder
        #: The run of an interrupted attempt that this one follows instead of starting one.
        self.earlier = earlier
        self.key_ids: list[str] = [earlier.key_id] if earlier and earlier.key_id else []
        self.handle: str | None = None
        self.outcome = Outcome("failed", reason="NotStarted", message="the run did not start")

    def mint_key(self, timeout: int) -> str:
        """An API key of the job's owner for the project's experiments (revoked at the end)."""
        key_id, key = _mint_key(self.ctx.platform, self.ctx, timeout)
        self.key_ids.append(key_id)
        return key

    def mlflow_client(self, key: str) -> httpx.Client:
        """A client of the platform's MLflow REST API (``…/api/2.0/mlflow/``) with ``key``."""
        return httpx.Client(
            base_url=f"{tracking_uri(self.ctx.platform)}/api/2.0/mlflow/",
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )

    def run(self, launch: Launch, client: httpx.Client, run_id: str) -> Outcome:
        """Start ``launch`` on the backend, follow it to its end (its log lines become
        the job's), and end the MLflow run ``run_id`` the way it ended."""
        ctx, backend = self.ctx, self.backend
        try:
            backend.check(launch)
        except SpecError as exc:
            raise TrainFailed(f"{exc.field}: {exc.message}") from None
        ctx.progress(None, f"starting on {backend.name}")
        self.handle = backend.submit(launch)
        _save(ctx.platform, ctx.job_id, handle=self.handle, state="running")
        ctx.log(f"[zhongtai] started on the {backend.name} backend; MLflow run {run_id}")
        ctx.progress(None, f"running on {backend.name}")
        self.outcome = _watch(ctx, backend, self.handle, launch.timeout)
        _end_run(client, run_id, self.outcome)
        return self.outcome

    def resume(self, timeout: int) -> dict[str, str] | None:
        """Follow the earlier attempt's run to its end, as :meth:`run` follows its own
        (the run's output so far is read again), and end its MLflow run to match.
        ``timeout`` counts from when the earlier attempt began."""
        ctx, backend, earlier = self.ctx, self.backend, self.earlier
        assert earlier is not None
        ctx.log(
            f"[zhongtai] the run that attempt {earlier.attempt} started on {backend.name} "
            "outlived its worker: following it again"
        )
        ctx.progress(None, f"running on {backend.name}")
        self.handle = earlier.handle
        remaining = max(1, int(timeout - (utcnow() - earlier.started).total_seconds()))
        self.outcome = _watch(ctx, backend, earlier.handle, remaining)
        if earlier.run_id is None or earlier.experiment_id is None:
            return None
        with self.mlflow_client(self.mint_key(60)) as client:
            _end_run(client, earlier.run_id, self.outcome)
        return {"run_id": earlier.run_id, "experiment_id": earlier.experiment_id}


@contextlib.contextmanager
def backend_attempt(
    ctx: JobContext, backend: Backend, *, gpus: int = 0, resume: bool = False
) -> Iterator[Attempt]:
    """Take over from an earlier attempt, make the attempt's folder, and whatever
    happens inside the block: revoke the keys, clean up on the backend, remove the
    folders and record the outcome. A :class:`BackendError` fails the job with
    :class:`TrainFailed`. ``gpus`` is what the attempt holds, all nodes together.

    An earlier attempt's run is stopped, unless ``resume`` and that attempt was
    interrupted while its run went on: then :attr:`Attempt.earlier` names the run,
    for the block to follow (:meth:`Attempt.resume`) instead of starting another."""
    platform = ctx.platform
    earlier = _take_over(platform, ctx, backend, gpus, resume=resume)
    folder = jobs_dir(platform) / ctx.job_id / f"a{ctx.attempt}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, mode=0o700)
    attempt = Attempt(ctx, backend, folder, earlier)
    try:
        yield attempt
    except JobCancelled:
        attempt.outcome = Outcome("cancelled", reason="Cancelled")
        raise
    except BackendError as exc:
        attempt.outcome = Outcome("failed", reason="BackendError", message=str(exc))
        raise TrainFailed(f"the {backend.name} backend failed: {exc}") from None
    finally:
        folders = [folder]
        if earlier is not None:
            # The run's log lives in the folder of the attempt that started it, which
            # may be older than the one this attempt took over from.
            folders += [old for old in folder.parent.glob("a*") if old != folder]
        _finish(platform, ctx, backend, attempt.handle, attempt.key_ids, folders, attempt.outcome)


def raise_unless_succeeded(outcome: Outcome, what: str) -> None:
    """JobCancelled for a cancelled run, TrainFailed naming ``what`` for a failed one."""
    if outcome.state == "cancelled":
        raise JobCancelled()
    if outcome.state != "succeeded":
        detail = (
            f": {outcome.message}" if outcome.message and outcome.message != outcome.reason else ""
        )
        tail = "".join(f"\n  {line}" for line in outcome.last_lines)
        if tail:
            tail = "\nlast lines of its output:" + tail
        raise TrainFailed(f"{what} failed ({outcome.reason}){detail}{tail}")


#: States of a run whose attempt never recorded its end (see :func:`_finish`).
_UNFINISHED = frozenset({"pending", "running"})


def _take_over(
    platform: Platform, ctx: JobContext, backend: Backend, gpus: int, *, resume: bool
) -> EarlierRun | None:
    """Record this attempt. The run of an earlier one that its worker's death left
    going is returned (``resume``) or stopped, as is what a failed one left behind."""
    with platform.db.transaction() as session:
        row = session.get(TrainJob, ctx.job_id)
        earlier = row.handle if row is not None else None
        earlier_backend = row.backend if row is not None else None
        if (
            resume
            and row is not None
            and row.handle is not None
            and row.state in _UNFINISHED
            and row.backend == backend.name
        ):
            adopted = EarlierRun(
                attempt=row.attempt,
                handle=row.handle,
                run_id=row.run_id,
                experiment_id=row.experiment_id,
                key_id=row.api_key_id,
                started=row.created_at,
            )
            row.attempt, row.gpus = ctx.attempt, gpus
            return adopted
        if row is None:
            row = TrainJob(job_id=ctx.job_id, project_id=ctx.project_id, backend=backend.name)
            session.add(row)
        row.backend, row.attempt, row.handle, row.state, row.reason = (
            backend.name,
            ctx.attempt,
            None,
            "preparing",
            "",
        )
        row.gpus = gpus
    if earlier and earlier_backend:
        ctx.log(f"[zhongtai] stopping what attempt {ctx.attempt - 1} left on {earlier_backend}")
        try:
            previous = (
                backend
                if earlier_backend == backend.name
                else backend_class(earlier_backend)(platform)
            )
            previous.cancel(earlier)
            previous.cleanup(earlier)
        except Exception as exc:
            ctx.log(f"[zhongtai] could not stop the earlier attempt: {exc}")
    return None


def _save(platform: Platform, job_id: str, **values: Any) -> None:
    with platform.db.transaction() as session:
        row = session.get(TrainJob, job_id)
        if row is not None:
            for name, value in values.items():
                setattr(row, name, value)


def _git(ctx: JobContext, args: list[str], cwd: Path, allow_file: bool) -> None:
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(cwd),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ALLOW_PROTOCOL": "https:ssh:file" if allow_file else "https:ssh",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
    }
    try:
        done = subprocess.run(  # noqa: S603 - an argument list
            ["git", *args],  # noqa: S607 - git from PATH, as an operator installed it
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise TrainFailed("git is not installed on the worker") from None
    except subprocess.TimeoutExpired:
        raise TrainFailed(f"git {args[0]} took longer than {GIT_TIMEOUT} s") from None
    for line in (done.stdout + done.stderr).splitlines():
        ctx.log(f"[git] {line}")
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()
        raise TrainFailed(f"git {args[0]} failed: {last[-1] if last else done.returncode}")


def _checkout(ctx: JobContext, spec: TrainSpec, folder: Path, allow_file: bool) -> Path | None:
    code = spec.code
    if isinstance(code, ArchiveCode):
        return _unpack(ctx, code, folder)
    if not isinstance(code, GitCode):
        return None
    if code.url.startswith("file://") and not allow_file:
        raise TrainFailed("file:// repositories are off (the setting allow_file_git)")
    repo = folder / "code"
    repo.mkdir()
    ctx.log(f"[zhongtai] fetching {code.url} at {code.commit}")
    _git(ctx, ["init", "--quiet"], repo, allow_file)
    _git(ctx, ["fetch", "--quiet", "--depth", "1", "--", code.url, code.commit], repo, allow_file)
    _git(
        ctx,
        ["-c", "advice.detachedHead=false", "checkout", "--quiet", "FETCH_HEAD"],
        repo,
        allow_file,
    )
    workdir = repo / code.subdir if code.subdir else repo
    if not workdir.resolve().is_relative_to(repo.resolve()) or not workdir.is_dir():
        raise TrainFailed(f"subdir {code.subdir!r} is not a folder of the repository")
    return workdir


def _unpack(ctx: JobContext, code: ArchiveCode, folder: Path) -> Path:
    """Expand the code archive into ``folder/code``; refuse it whole if any entry is
    unsafe (the data plugin's checks: paths, links, sizes, compression ratios)."""
    from zhongtai_data.archives import ArchiveRejected, detect, extract
    from zhongtai_data.local import local_copy
    from zhongtai_data.models import File

    platform = ctx.platform
    with platform.db.session() as session:
        sha256 = session.scalar(
            select(File.sha256).where(
                File.version_id == code.dataset_version, File.path == code.path
            )
        )
    if sha256 is None:
        raise TrainFailed(f"{code.path} is no longer in version {code.dataset_version}")
    repo = folder / "code"
    repo.mkdir()

    def write(member: Any, stream: Any) -> None:
        target = repo / member.path
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("xb") as out:
            shutil.copyfileobj(stream, out, 1024 * 1024)

    ctx.log(f"[zhongtai] unpacking {code.path} of version {code.dataset_version}")
    with local_copy(platform, sha256) as archive:
        with archive.open("rb") as fh:
            kind = detect(code.path, fh.read(64 * 1024))
        if kind is None:
            raise TrainFailed(f"{code.path} is not a zip, tar or tar.gz archive")
        try:
            members = extract(archive, kind, write)
        except ArchiveRejected as exc:
            raise TrainFailed(f"the code archive was refused: {exc}") from None
    ctx.log(f"[zhongtai] {len(members)} files")
    workdir = repo / code.subdir if code.subdir else repo
    if not workdir.resolve().is_relative_to(repo.resolve()) or not workdir.is_dir():
        raise TrainFailed(f"subdir {code.subdir!r} is not a folder of the archive")
    return workdir


def _materialize_inputs(ctx: JobContext, spec: TrainSpec, root: Path) -> tuple[InputMount, ...]:
    if not spec.inputs:
        return ()
    from zhongtai_data.local import place_blob
    from zhongtai_data.models import File

    platform = ctx.platform
    mounts = []
    for item in spec.inputs:
        target = root / item.name
        if target.exists():
            raise TrainFailed(f"input {item.name}: the code already holds {target}")
        target.mkdir(parents=True)
        with platform.db.session() as session:
            files = list(
                session.execute(
                    select(File.path, File.sha256).where(File.version_id == item.dataset_version)
                ).all()
            )
        ctx.log(
            f"[zhongtai] input {item.name}: {len(files)} files of version {item.dataset_version}"
        )
        for path, sha256 in files:
            relative_path(path, "a dataset file's path")
            place_blob(platform, sha256, target / path)
        mounts.append(InputMount(item.name, item.dataset_version, target, None))
    return tuple(mounts)


def _mint_key(platform: Platform, ctx: JobContext, timeout: int) -> tuple[str, str]:
    """An API key of the job's owner for this project's experiments, until the deadline."""
    from zhongtai.identity.apikeys import create_api_key

    if ctx.owner_id is None:
        raise TrainFailed("the job has no owner to act for")
    with platform.db.transaction() as session:
        row, key = create_api_key(
            session,
            user_id=ctx.owner_id,
            name=f"{ctx.job_type} {ctx.job_id}",
            project_id=ctx.project_id,
            permissions=[EXPERIMENT_READ.name, EXPERIMENT_WRITE.name],
            expires_at=utcnow() + timedelta(seconds=timeout) + KEY_MARGIN,
            secret=platform.settings.resolved_secret_key(),
        )
        key_id = row.id
        train_job = session.get(TrainJob, ctx.job_id)
        if train_job is not None:
            train_job.api_key_id = key_id
    return key_id, key


def _mlflow(client: httpx.Client, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    try:
        answer = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise TrainFailed(f"MLflow at {client.base_url} could not be reached: {exc}") from None
    if answer.status_code >= 400:
        raise TrainFailed(f"MLflow {path} answered {answer.status_code}: {answer.text[:300]}")
    body: dict[str, Any] = answer.json()
    return body


def _start_run(
    ctx: JobContext, client: httpx.Client, spec: TrainSpec, backend: str
) -> dict[str, str]:
    experiment_id = _experiment_id(client, spec.experiment)
    tags = [
        {"key": "zhongtai.job_id", "value": ctx.job_id},
        {"key": "zhongtai.backend", "value": backend},
        {"key": "mlflow.user", "value": ctx.owner_id or ""},
    ]
    if spec.run_name:
        tags.append({"key": "mlflow.runName", "value": spec.run_name})
    if isinstance(spec.code, GitCode):
        tags += [
            {"key": "mlflow.source.git.repoURL", "value": spec.code.url},
            {"key": "mlflow.source.git.commit", "value": spec.code.commit},
        ]
    elif isinstance(spec.code, ArchiveCode):
        tags.append(
            {
                "key": "zhongtai.code_archive",
                "value": f"{spec.code.dataset_version}:{spec.code.path}",
            }
        )
    else:
        tags.append({"key": "zhongtai.image", "value": spec.code.image})
    if spec.inputs:
        versions = ",".join(item.dataset_version for item in spec.inputs)
        tags.append({"key": "zhongtai.dataset_version", "value": versions})
    body: dict[str, Any] = {
        "experiment_id": experiment_id,
        "start_time": int(time.time() * 1000),
        "tags": tags,
    }
    if spec.run_name:
        body["run_name"] = spec.run_name
    made = _mlflow(client, "POST", "runs/create", json=body)
    run_id = str(made["run"]["info"]["run_id"])
    if spec.hyperparameters:
        params = [{"key": k, "value": _param_text(v)} for k, v in spec.hyperparameters.items()]
        for start in range(0, len(params), 100):
            _mlflow(
                client,
                "POST",
                "runs/log-batch",
                json={"run_id": run_id, "params": params[start : start + 100]},
            )
    ctx.log(f"[zhongtai] MLflow experiment {experiment_id}, run {run_id}")
    return {"run_id": run_id, "experiment_id": experiment_id}


def _experiment_id(client: httpx.Client, name: str) -> str:
    """The experiment called ``name``, created if missing. Two jobs may create it at
    once (a sweep's parallel trials): the loser finds the winner's."""
    for _attempt in range(3):
        found = client.get("experiments/get-by-name", params={"experiment_name": name})
        if found.status_code == 200:
            return str(found.json()["experiment"]["experiment_id"])
        made = client.post("experiments/create", json={"name": name})
        if made.status_code == 200:
            return str(made.json()["experiment_id"])
        time.sleep(0.1)
    raise TrainFailed(f"could not find or create experiment {name!r}: {made.text[:300]}")


def _param_text(value: bool | int | float | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _argv(spec: TrainSpec) -> tuple[str, ...]:
    import sys

    argv = list(spec.entry_point)
    if isinstance(spec.code, GitCode | ArchiveCode) and argv[0] == "python":
        argv[0] = sys.executable  # the worker's interpreter, with mlflow installed
    argv += spec.args
    argv += [f"--{name}={_param_text(value)}" for name, value in spec.hyperparameters.items()]
    return tuple(argv)


def _environment(
    platform: Platform,
    ctx: JobContext,
    spec: TrainSpec,
    run: dict[str, str],
    key: str,
) -> dict[str, str]:
    """The job's variables for the code; backends add ``ZT_INPUT_<NAME>`` for each input
    (what their nodes see) and the distributed ones."""

    env = dict(spec.env)
    env.update(
        {
            "MLFLOW_TRACKING_URI": tracking_uri(platform),
            "MLFLOW_TRACKING_TOKEN": key,
            "MLFLOW_RUN_ID": run["run_id"],
            "MLFLOW_EXPERIMENT_ID": run["experiment_id"],
            "ZHONGTAI_JOB_ID": ctx.job_id,
            "ZT_PROJECT_ID": ctx.project_id,
            "ZT_HYPERPARAMETERS": json.dumps(spec.hyperparameters, sort_keys=True),
        }
    )
    if spec.distributed.deepspeed_config is not None:
        # A path relative to the working directory where the code has a folder; the
        # JSON itself for an image.
        env["ZT_DEEPSPEED_CONFIG"] = (
            DEEPSPEED_FILE
            if not isinstance(spec.code, ImageCode)
            else json.dumps(spec.distributed.deepspeed_config)
        )
    return env


def _watch(ctx: JobContext, backend: Backend, handle: str, timeout: int) -> Outcome:
    """Follow the run to its end; the outcome carries the last lines of its output."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    outcome = _follow(ctx, backend, handle, timeout, tail)
    return dataclasses.replace(outcome, last_lines=tuple(tail))


def _follow(
    ctx: JobContext, backend: Backend, handle: str, timeout: int, tail: deque[str]
) -> Outcome:
    deadline = time.monotonic() + timeout
    cursor: str | None = None

    def drain() -> bool:
        """Log what the backend has; whether it had anything and moved on."""
        nonlocal cursor
        chunk = backend.read_logs(handle, cursor)
        for line in chunk.lines:
            ctx.log(line)
        if chunk.lines:
            ctx.flush()  # to followers now, not at the next periodic flush
        tail.extend(chunk.lines)
        moved, cursor = chunk.cursor != cursor, chunk.cursor
        return bool(chunk.lines) and moved

    state = "pending"
    polls = 0
    while True:
        drain()
        outcome = backend.poll(handle)
        if outcome.state != state:
            state = outcome.state
            _save(ctx.platform, ctx.job_id, state=state)
            if not outcome.final:
                ctx.progress(None, f"{state} on {backend.name}")
        if outcome.final:
            while drain():  # a backend hands over a bounded amount per call
                pass
            rest = getattr(backend, "read_rest", None)
            if callable(rest):
                for line in rest(handle, cursor).lines:
                    ctx.log(line)
                    tail.append(line)
            return outcome
        if ctx.cancelled:
            ctx.log("[zhongtai] cancelled: stopping the run")
            backend.cancel(handle)
            drain()
            return Outcome("cancelled", reason="Cancelled")
        if time.monotonic() > deadline:
            ctx.log(f"[zhongtai] the run passed its timeout of {timeout} s: stopping it")
            backend.cancel(handle)
            drain()
            return Outcome(
                "failed", reason="DeadlineExceeded", message=f"ran longer than {timeout} s"
            )
        # Quick looks while a run starts (its first lines, a script that ends at once),
        # then every POLL_SECONDS.
        backend.wait(handle, min(POLL_SECONDS, FIRST_POLL * 1.5**polls))
        polls += 1


_RUN_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}


def _end_run(client: httpx.Client, run_id: str, outcome: Outcome) -> None:
    """End the MLflow run the way the job ended. A run the code already ended keeps its
    status when the job succeeded; a failed or cancelled job marks it FAILED or KILLED
    whatever the code said (as ``mlflow run`` does when its entry point exits non-zero)."""
    status = _RUN_STATUS.get(outcome.state, "FAILED")
    if status == "FINISHED":
        found = client.get("runs/get", params={"run_id": run_id})
        if found.status_code != 200:
            return
        if found.json()["run"]["info"].get("status") not in ("RUNNING", "SCHEDULED"):
            return
    client.post(
        "runs/update",
        json={"run_id": run_id, "status": status, "end_time": int(time.time() * 1000)},
    )


def _finish(
    platform: Platform,
    ctx: JobContext,
    backend: Backend,
    handle: str | None,
    key_ids: list[str],
    folders: list[Path],
    outcome: Outcome,
) -> None:
    from zhongtai.identity.apikeys import revoke_api_key

    with platform.db.transaction() as session:
        row = session.get(TrainJob, ctx.job_id)
        superseded = row is not None and row.attempt != ctx.attempt
    if superseded:
        # Its worker was taken for dead and a later attempt follows the run now: leave
        # the run, its folder and the record to that one.
        ctx.log("[zhongtai] a later attempt has taken this run over")
        handle, folders = None, folders[:0]
    if handle is not None:
        try:
            if not outcome.final:
                backend.cancel(handle)
            backend.cleanup(handle)
        except Exception:
            log.warning("job %s: cleaning up on %s failed", ctx.job_id, backend.name, exc_info=True)
    for key_id in key_ids:
        with platform.db.transaction() as session, contextlib.suppress(LookupError):
            revoke_api_key(session, key_id)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.parent.rmdir()  # the job's folder, once its last attempt's is gone
    if superseded:
        return
    _save(
        platform,
        ctx.job_id,
        state=outcome.state if outcome.final else "failed",
        reason=outcome.reason,
    )


TRAIN_RUN = JobType(
    "train.run",
    run_training,
    TrainSpec,
    description="Train: run code on a backend, logging to an MLflow run of the project",
    queue="train",
    timeout=7 * 86_400,
    retries=0,
    resources=Resources(cpu=1.0, memory_mb=2048, gpus=0),
    permission=JOB_RUN.name,
    check=check_spec,
    resume_interrupted=True,
)
