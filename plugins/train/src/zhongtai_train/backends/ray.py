"""Training on a Ray cluster through the Ray Jobs API.

The worker hands Ray the checked-out code as the job's ``working_dir`` (Ray zips and
uploads it to the cluster), the environment as ``env_vars``, and the command as the
job's ``entrypoint``. Ray runs the entrypoint with ``/bin/sh -c`` on some node, so it
is built here from the launch's argument list with :func:`shlex.join`: every part is
quoted, and a user's ``0.1; rm -rf ~`` or ``$(id)`` reaches the program as one literal
argument, never as shell syntax. The Ray job is the training process itself; code that
wants many processes on many nodes uses Ray Train from inside it, as Ray intends.

The job's submission id is made from the launch (``<name>-a<attempt>``), not chosen by
Ray: a worker that crashed after submitting and tries again finds the job it started
instead of starting a second one. The handle is a small JSON object with the Jobs API
address and that id, so any worker can follow the job.

Two things of Ray's that shape this module:

* Ray expands ``$NAME`` and ``${NAME}`` in ``env_vars`` values from the node's own
  environment, with no way to escape ``$``; values that would be expanded are refused,
  since the code would otherwise see something other than it was given (or the node's
  own secrets).
* The Jobs client takes its address from ``RAY_API_SERVER_ADDRESS`` or ``RAY_ADDRESS``
  when either is set, over the address it is given; a worker whose environment
  disagrees with the backend's ``address`` is refused rather than sent elsewhere.

Ray is imported only when a job uses this backend (``pip install zhongtai-train[ray]``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from zhongtai_train.backends import (
    Backend,
    BackendError,
    Launch,
    LogChunk,
    Outcome,
    SpecError,
    input_variable,
)

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

    from zhongtai.platform import Platform

__all__ = ["RayBackend", "RayOptions"]

log = logging.getLogger("zhongtai.train")

#: Where the Jobs API is when neither the options nor the environment say.
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
#: The variables the Ray Jobs client reads its address from, in the order it reads them.
ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
#: Seconds to connect to the Jobs API and to wait for each answer. The stock client
#: sets none, and a silent head would hold the worker's thread for good.
REQUEST_TIMEOUT = (10.0, 60.0)
#: Seconds :meth:`RayBackend.cleanup` waits for a job it had to stop before deleting it.
STOP_WAIT = 10.0
#: Seconds :meth:`RayBackend.cleanup` watches a job that ended this recently (or that it
#: stopped) after deleting it. The head's job monitor checks the job's supervisor once a
#: second; if it sees the supervisor gone only after the delete, it finds no record,
#: takes the job for one that died, and writes the record back as ``FAILED``
#: (``JOB_SUPERVISOR_ACTOR_DIED``). The record it writes is terminal, so a second
#: delete ends it.
RESURRECT_WATCH = 4.0

# A requirement as pip reads it from a requirements file: a name, extras, version
# specifiers. No options (``--index-url``), paths, URLs, markers or line breaks.
_VERSION = r"(?:===|==|!=|~=|>=|<=|>|<)\s*[A-Za-z0-9.*+!_-]+"
_PIP = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
    r"(?:\[[A-Za-z0-9._-]+(?:\s*,\s*[A-Za-z0-9._-]+)*\])?"
    rf"(?:\s*{_VERSION}(?:\s*,\s*{_VERSION})*)?"
)
# What os.path.expandvars (which Ray applies to env_vars) would replace.
_EXPANDED = re.compile(r"\$(?:\w|\{)", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _valid_address(value: str | None) -> str | None:
    """An ``http(s)://host[:port][/path]`` URL, without credentials, query or fragment."""
    if value is None:
        return None
    value = value.strip().rstrip("/")
    try:
        url = urlsplit(value)
        url.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError("must be an http:// or https:// URL with a host (the Jobs API)")
    if url.username is not None or url.password is not None:
        raise ValueError("must not carry credentials (Ray token auth reads RAY_AUTH_TOKEN)")
    if url.query or url.fragment or _CONTROL.search(value) or " " in value:
        raise ValueError("must be a plain URL, without query, fragment or spaces")
    return value


def _valid_pip(value: list[str]) -> list[str]:
    for requirement in value:
        if not _PIP.fullmatch(requirement):
            raise ValueError(
                f"{requirement[:100]!r} is not a plain requirement (a name, extras and "
                "version specifiers, such as 'torch>=2.4' or 'transformers[torch]==4.46')"
            )
    return value


def _valid_excludes(value: list[str]) -> list[str]:
    for pattern in value:
        if not pattern.strip() or _CONTROL.search(pattern):
            raise ValueError("an exclude pattern must be non-empty and on one line")
    return value


class RayOptions(BaseModel):
    """The ray backend's ``backend_options``."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(
        default=None,
        max_length=2000,
        description="URL of the cluster's Ray Jobs API (the dashboard), e.g. "
        "http://ray-head:8265. Default: the worker's RAY_API_SERVER_ADDRESS or RAY_ADDRESS "
        f"when it is an http(s) URL, else {DEFAULT_ADDRESS}.",
    )
    pip: list[str] = Field(
        default_factory=list,
        max_length=200,
        description="Python packages Ray installs for the job (its runtime_env pip), as "
        "plain requirements: 'torch>=2.4', 'transformers[torch]==4.46'.",
    )
    excludes: list[str] = Field(
        default_factory=list,
        max_length=200,
        description="gitignore-style patterns of files in the code not to upload "
        "(runtime_env excludes), e.g. 'data/', '*.ckpt'.",
    )

    _address = field_validator("address")(_valid_address)
    _pip = field_validator("pip")(_valid_pip)
    _excludes = field_validator("excludes")(_valid_excludes)


class RayBackend(Backend):
    """Runs each attempt as one Ray job; see the module's docstring."""

    name: ClassVar[str] = "ray"
    options_model: ClassVar[type[BaseModel]] = RayOptions
    needs_workdir: ClassVar[bool] = True
    runs_images: ClassVar[bool] = False
    ships_workdir: ClassVar[bool] = True
    operator_options: ClassVar[frozenset[str]] = frozenset({"address"})

    def __init__(self, platform: Platform | None = None) -> None:
        super().__init__(platform)
        self._clients: dict[str, JobSubmissionClient] = {}

    def check(self, launch: Launch) -> None:
        if launch.image is not None:
            raise SpecError(
                "image", "the ray backend runs code from a working directory, not an image"
            )
        if launch.workdir is None:
            raise SpecError(
                "code", "the ray backend runs code from a working directory; give the job code"
            )
        distributed = launch.distributed
        if distributed.world_size > 1:
            field = "distributed.nodes" if distributed.nodes > 1 else "distributed.procs_per_node"
            raise SpecError(
                field,
                "the ray backend starts one process; use Ray Train inside the script "
                "(ScalingConfig(num_workers=...)) to spread training over the cluster",
            )
        for name, value in launch.env.items():
            if _EXPANDED.search(value):
                # The value is left out of the message: it may be a credential.
                raise SpecError(
                    f"env.{name}",
                    "Ray would replace '$NAME' and '${NAME}' in this value with the node's "
                    "own variables; the ray backend cannot pass it unchanged",
                )

    # -- the five calls -------------------------------------------------------------

    def submit(self, launch: Launch) -> str:
        self.check(launch)
        options = _options(launch.options)
        address = _resolve_address(options.address)
        workdir = launch.workdir
        assert workdir is not None  # check() refused None
        if not workdir.is_dir():
            raise BackendError(f"the job's code folder {workdir} does not exist")
        job = f"{launch.name}-a{launch.attempt}"
        # Ray keeps the runtime_env (and so these variables, the MLflow token among them)
        # in its GCS, and its dashboard and Jobs API show it to whoever can reach them.
        # The token is short-lived and scoped to the job's project for this reason;
        # cleanup() deletes the job, and the runtime_env with it.
        runtime_env: dict[str, Any] = {
            "working_dir": str(workdir),
            "env_vars": _env(launch, workdir),
        }
        if options.pip:
            runtime_env["pip"] = list(options.pip)
        if options.excludes:
            runtime_env["excludes"] = list(options.excludes)
        requirements = launch.requirements
        client = self._client(address)
        try:
            client.submit_job(
                entrypoint=shlex.join(launch.argv),
                submission_id=job,
                runtime_env=runtime_env,
                metadata=launch.labels(),
                entrypoint_num_cpus=requirements.cpu,
                entrypoint_num_gpus=requirements.gpus,
                entrypoint_memory=requirements.memory_mb * 1024 * 1024,
            )
        except Exception as exc:
            if "already exists" not in str(exc):
                raise BackendError(
                    f"the Ray cluster at {address} did not take the job: {_short(exc)}"
                ) from exc
            self._adopt(client, address, job, launch)
        else:
            log.info("submitted Ray job %s to %s", job, address)
        return json.dumps({"address": address, "id": job}, sort_keys=True)

    def poll(self, handle: str) -> Outcome:
        address, job = _parse(handle)
        client = self._client(address)
        try:
            info = client.get_job_info(job)
        except Exception as exc:
            if _not_found(exc):
                return Outcome(
                    "failed",
                    reason="JobNotFound",
                    message=f"the Ray cluster at {address} has no job {job} (was it restarted?)",
                )
            raise BackendError(f"could not ask Ray about job {job}: {_short(exc)}") from exc
        status = _value(info.status)
        code: int | None = info.driver_exit_code
        if status == "PENDING":
            return Outcome("pending")
        if status == "RUNNING":
            return Outcome("running")
        if status == "SUCCEEDED":
            return Outcome("succeeded", exit_code=0 if code is None else code)
        if status == "STOPPED":
            return Outcome("cancelled", reason="Stopped", message="the Ray job was stopped")
        message = _message(info.message)
        if code is not None and code < 0:
            return Outcome("failed", f"killed by signal {-code}", message, code)
        if code is not None:
            return Outcome("failed", f"exit code {code}", message, code)
        reason = _value(info.error_type) if info.error_type is not None else "Failed"
        return Outcome("failed", reason, message)

    def read_logs(self, handle: str, cursor: str | None) -> LogChunk:
        address, job = _parse(handle)
        client = self._client(address)
        start = _offset(cursor)
        try:
            # The Jobs API has no offsets: it answers with the whole log every time.
            text = client.get_job_logs(job)
            end = _complete(text, start)
            # A last line without its newline waits for the rest, unless no rest comes.
            if end < len(text) and _value(client.get_job_status(job)) in _TERMINAL:
                text = client.get_job_logs(job)
                end = len(text)
        except Exception as exc:
            if _not_found(exc):
                return LogChunk([], cursor)
            raise BackendError(f"could not read the logs of Ray job {job}: {_short(exc)}") from exc
        if start >= end:
            return LogChunk([], str(max(start, 0)))
        lines = [line.removesuffix("\r") for line in text[start:end].split("\n")]
        if text[end - 1] == "\n":
            lines.pop()
        return LogChunk(lines, str(end))

    def cancel(self, handle: str) -> None:
        address, job = _parse(handle)
        client = self._client(address)
        try:
            # Ray sends SIGTERM to the entrypoint and all its children, SIGKILL after 3 s.
            client.stop_job(job)
        except Exception as exc:
            if not _not_found(exc):
                raise BackendError(f"could not stop Ray job {job}: {_short(exc)}") from exc

    def cleanup(self, handle: str) -> None:
        try:
            address, job = _parse(handle)
            client = self._client(address)
        except BackendError as exc:
            log.warning("cannot clean up Ray job %s: %s", handle[:200], exc)
            return
        try:
            info = client.get_job_info(job)
            if _value(info.status) not in _TERMINAL:
                client.stop_job(job)
                deadline = time.monotonic() + STOP_WAIT
                while _value(client.get_job_status(job)) not in _TERMINAL:
                    if time.monotonic() > deadline:
                        log.warning("Ray job %s at %s still runs after stop_job", job, address)
                        return
                    time.sleep(0.5)
                recent = True
            else:
                ended = (info.end_time or 0) / 1000
                recent = time.time() - ended < RESURRECT_WATCH
            client.delete_job(job)
            if recent:
                self._delete_again_if_rewritten(client, job)
        except Exception as exc:
            level = logging.DEBUG if _not_found(exc) else logging.WARNING
            log.log(level, "could not delete Ray job %s at %s: %s", job, address, _short(exc))

    # -- helpers ------------------------------------------------------------------------

    @staticmethod
    def _delete_again_if_rewritten(client: JobSubmissionClient, job: str) -> None:
        """Delete ``job`` again if Ray's job monitor writes it back after the delete
        (see :data:`RESURRECT_WATCH`)."""
        deadline = time.monotonic() + RESURRECT_WATCH
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                client.get_job_info(job)
            except Exception as exc:
                if _not_found(exc):
                    continue
                raise
            log.debug("Ray wrote back stopped job %s after its delete; deleting it again", job)
            client.delete_job(job)
            return

    def _client(self, address: str) -> JobSubmissionClient:
        """A Jobs API client for ``address``, made once per backend instance (making one
        asks the head for its version twice)."""
        client = self._clients.get(address)
        if client is None:
            client = _connect(address)
            self._clients[address] = client
        return client

    def _adopt(self, client: JobSubmissionClient, address: str, job: str, launch: Launch) -> None:
        """Follow a job this attempt submitted before (the worker crashed after
        submitting), after making sure it is this platform job's."""
        try:
            metadata = client.get_job_info(job).metadata or {}
        except Exception as exc:
            raise BackendError(f"could not ask Ray about job {job}: {_short(exc)}") from exc
        if metadata.get("zhongtai.io/job-id") != launch.job_id:
            raise BackendError(
                f"the Ray cluster at {address} already has a job {job} of another origin"
            )
        log.info("Ray job %s was submitted before this worker started; following it", job)


_TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


def _connect(address: str) -> JobSubmissionClient:
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:
        raise BackendError("the ray backend needs `pip install zhongtai-train[ray]`") from exc
    for variable in ADDRESS_VARIABLES:
        override = os.environ.get(variable)
        if override:
            # The client would use this instead of ``address``, without a word.
            if override.rstrip("/") != address:
                raise BackendError(
                    f"the worker's environment sets {variable}={override[:200]!r}, which the "
                    f"Ray client uses instead of {address}; unset it or make them agree"
                )
            break

    class _Client(JobSubmissionClient):
        def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", REQUEST_TIMEOUT)
            return super()._do_request(method, endpoint, **kwargs)

    try:
        return _Client(address)
    except Exception as exc:
        raise BackendError(f"cannot reach the Ray Jobs API at {address}: {_short(exc)}") from exc


def _options(options: BaseModel) -> RayOptions:
    if isinstance(options, RayOptions):
        return options
    try:
        return RayOptions.model_validate(options.model_dump())
    except ValueError as exc:
        raise BackendError(f"bad options for the ray backend: {exc}") from exc


def _resolve_address(address: str | None) -> str:
    if address is not None:
        return address
    for variable in ADDRESS_VARIABLES:
        value = os.environ.get(variable, "")
        if value.startswith(("http://", "https://")):
            try:
                resolved = _valid_address(value)
            except ValueError as exc:
                raise BackendError(f"{variable}: {exc}") from exc
            assert resolved is not None
            return resolved
    return DEFAULT_ADDRESS


def _env(launch: Launch, workdir: Path) -> dict[str, str]:
    """The job's variables, with ``ZT_INPUT_<NAME>`` for each input the launch did not
    name already: a URI a remote node can fetch when there is one, else the folder
    (relative to the code when it is inside it, since Ray ships that folder)."""
    env = dict(launch.env)
    for mount in launch.inputs:
        variable = input_variable(mount.name)
        if variable in env:
            continue
        if mount.uri is not None:
            env[variable] = mount.uri
        elif mount.path is not None:
            path = mount.path.resolve()
            root = workdir.resolve()
            env[variable] = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    return env


def _parse(handle: str) -> tuple[str, str]:
    try:
        data = json.loads(handle)
        address, job = data["address"], data["id"]
    except (ValueError, TypeError, KeyError) as exc:
        raise BackendError(f"not a ray backend handle: {handle[:200]!r}") from exc
    if not isinstance(address, str) or not isinstance(job, str) or not job:
        raise BackendError(f"not a ray backend handle: {handle[:200]!r}")
    return address, job


def _offset(cursor: str | None) -> int:
    if cursor is None:
        return 0
    try:
        return max(int(cursor), 0)
    except ValueError:
        log.debug("ignoring a log cursor that is not an offset: %r", cursor[:50])
        return 0


def _complete(text: str, start: int) -> int:
    """Where the last complete line of ``text`` ends (after ``start``)."""
    newline = text.rfind("\n", start)
    return newline + 1 if newline >= 0 else start


def _message(message: str | None) -> str:
    """The first line of Ray's message: the rest repeats the end of the log."""
    first = (message or "").strip().split("\n", 1)[0]
    return first.split(", last available logs", 1)[0][:1000]


def _value(status: Any) -> str:
    return str(getattr(status, "value", status))


def _not_found(exc: BaseException) -> bool:
    return "status code 404" in str(exc)


def _short(exc: BaseException) -> str:
    """The useful line of an error: the Jobs API answers with the head's traceback."""
    text = str(exc).strip()
    if "Traceback (most recent call last)" in text:
        lines = [line.strip() for line in text.splitlines() if line.strip(" .")]
        text = lines[-1] if lines else text
    return text[:500] or type(exc).__name__
