"""Where training runs: one abstract base, one driver per kind of compute.

A backend is a class under the stevedore namespace ``zhongtai_train.backends``, chosen
per job (the spec's ``backend``) or by the setting ``ZHONGTAI_TRAIN__DEFAULT_BACKEND``:

=============  ==============================================================
``local``      a subprocess of the worker, in its own process group (default)
``ray``        the Ray Jobs API of a Ray cluster (``zhongtai-train[ray]``)
``kubernetes`` a ``batch/v1`` Job (``zhongtai-train[kubernetes]``)
=============  ==============================================================

The ``train.run`` job builds one :class:`Launch` from the validated spec (the code in a
local folder, the command as an argument list, the environment with the MLflow token)
and drives the backend through five calls: :meth:`Backend.submit`, then
:meth:`Backend.poll` and :meth:`Backend.read_logs` until the work ends,
:meth:`Backend.cancel` if the job is cancelled or times out, and always
:meth:`Backend.cleanup`. The job stores the handle ``submit`` returned, so a worker
that picks a job up again after a crash can cancel or clean up what the first one
started.

A third party adds a backend (Slurm, SageMaker, …) with one entry point::

    [project.entry-points."zhongtai_train.backends"]
    slurm = "zhongtai_slurm:SlurmBackend"   # a subclass of zhongtai_train.backends.Backend

docs/training.md shows a whole one.
"""

from __future__ import annotations

import abc
import dataclasses
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from zhongtai.platform import Platform

__all__ = [
    "NAMESPACE",
    "Backend",
    "BackendError",
    "Distributed",
    "InputMount",
    "Launch",
    "LogChunk",
    "NoOptions",
    "Outcome",
    "Requirements",
    "SpecError",
    "distributed_env",
    "input_variable",
]

NAMESPACE = "zhongtai_train.backends"

State = Literal["pending", "running", "succeeded", "failed", "cancelled"]
#: States after which :meth:`Backend.poll` will not change its answer.
FINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class SpecError(ValueError):
    """The spec asks for something this backend cannot do; the API answers 422 naming
    ``field`` (a dotted path inside the job's params, e.g. ``distributed.nodes``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class BackendError(RuntimeError):
    """The backend's service failed or refused (unreachable cluster, API error); the
    attempt fails with this message (and is retried if the job type retries)."""


class NoOptions(BaseModel):
    """A backend without options of its own: any key is refused."""

    model_config = ConfigDict(extra="forbid")


@dataclasses.dataclass(frozen=True)
class Requirements:
    """What one node of the run needs."""

    cpu: float = 1.0
    memory_mb: int = 2048
    gpus: int = 0


@dataclasses.dataclass(frozen=True)
class Distributed:
    """How many processes, on how many nodes. More than one process in all means a
    ``torchrun``-style environment: ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
    ``LOCAL_WORLD_SIZE``, ``NODE_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, set by the
    backend for each process it starts. ``deepspeed_config`` (a JSON object) is written
    next to the code as ``deepspeed_config.json`` and named by ``ZT_DEEPSPEED_CONFIG``."""

    nodes: int = 1
    procs_per_node: int = 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node


@dataclasses.dataclass(frozen=True)
class InputMount:
    """A dataset version the run reads: ``ZT_INPUT_<NAME>`` names where it is.

    ``path`` is a local folder holding the version's files (local backend, and anything
    that ships ``workdir``); ``uri`` is where a remote node can fetch them (an
    ``s3://`` prefix on the S3 storage driver, else None)."""

    name: str
    dataset_version_id: str
    path: Path | None
    uri: str | None


@dataclasses.dataclass(frozen=True)
class Launch:
    """Everything a backend needs to start one attempt of a training job.

    ``argv`` is an argument list, never a shell string: a backend that must hand its
    service a command line (Ray's ``entrypoint``) quotes each part with
    :func:`shlex.join`. ``env`` holds every variable the code gets, the MLflow ones
    included; the names in ``secret_env`` carry credentials (the run's MLflow token), so
    a backend keeps them out of anything it logs or stores in plain sight (a
    Kubernetes Secret, not the pod spec). ``workdir`` is a private local folder with
    the code checked out (None for an image that carries its code); ``image`` is the
    container image for backends that run one.
    """

    job_id: str
    project_id: str
    attempt: int
    name: str  # a DNS-1123 label made from the job: backends name their objects with it
    argv: tuple[str, ...]
    env: dict[str, str]
    secret_env: frozenset[str]
    workdir: Path | None
    image: str | None
    requirements: Requirements
    distributed: Distributed
    inputs: tuple[InputMount, ...]
    timeout: int  # seconds the run may take, from start to end
    options: BaseModel  # the backend's own options, validated by ``options_model``

    def labels(self) -> dict[str, str]:
        """Labels that tie what a backend creates to the platform job."""
        return {
            "app.kubernetes.io/managed-by": "zhongtai",
            "zhongtai.io/job-id": self.job_id,
            "zhongtai.io/project-id": self.project_id,
            "zhongtai.io/attempt": str(self.attempt),
        }


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What :meth:`Backend.poll` saw: the state, and for a final one why.

    ``reason`` is short and stable (``BackoffLimitExceeded``, ``DeadlineExceeded``,
    ``exit code 3``, ``killed by signal 9``); ``message`` is for people."""

    state: State
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    #: The last lines of the run's output (filled in by the job, not by backends).
    last_lines: tuple[str, ...] = ()

    @property
    def final(self) -> bool:
        return self.state in FINAL


@dataclasses.dataclass(frozen=True)
class LogChunk:
    """Lines the backend had since ``cursor``, and the cursor to ask from next time."""

    lines: list[str]
    cursor: str | None


class Backend(abc.ABC):
    """One kind of compute that runs training code.

    Instances are made per job attempt with the platform (for settings). Every method
    is called from the job's worker thread and may block briefly; none may block for
    the length of the run. ``handle`` is the string :meth:`submit` returned: everything
    a later call (maybe in another worker process, after a crash) needs to find the
    work again, stored with the job.
    """

    #: The entry point's name.
    name: ClassVar[str]
    #: The pydantic model of this backend's ``backend_options`` (validated at submit).
    options_model: ClassVar[type[BaseModel]] = NoOptions
    #: Whether the code must be in a local folder (``Launch.workdir``) for this backend
    #: to run it (local, Ray's working_dir) or may come as a container image alone.
    needs_workdir: ClassVar[bool] = True
    #: Whether ``Launch.image`` means anything here.
    runs_images: ClassVar[bool] = False
    #: Whether the backend copies ``Launch.workdir`` to the nodes that run the code
    #: (Ray's working_dir): the job then places dataset inputs inside it, so that they
    #: travel with the code.
    ships_workdir: ClassVar[bool] = False
    #: Options only the operator may set (the setting ``backend_options``), never a job:
    #: where the cluster is and with which credentials. A job that could name them
    #: could send its code and its MLflow token to a host of its choosing, or make the
    #: worker read a file of its choosing.
    operator_options: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, platform: Platform | None = None) -> None:
        self.platform = platform

    def check(self, launch: Launch) -> None:
        """Refuse, with :class:`SpecError`, what this backend cannot run (called at submit
        with what is known then, and again before :meth:`submit`)."""
        return None

    @abc.abstractmethod
    def submit(self, launch: Launch) -> str:
        """Start the work; return its handle. Raise :class:`BackendError` on failure."""

    @abc.abstractmethod
    def poll(self, handle: str) -> Outcome:
        """Where the work is now."""

    @abc.abstractmethod
    def read_logs(self, handle: str, cursor: str | None) -> LogChunk:
        """Log lines written since ``cursor`` (None: from the start), oldest first."""

    @abc.abstractmethod
    def cancel(self, handle: str) -> None:
        """Stop the work and everything it started; no error if it already ended."""

    def wait(self, handle: str, seconds: float) -> None:
        """Wait between two polls, at most ``seconds`` (half a second or less: the job
        looks for a cancel in between). A backend that can tell when the work ends
        returns then (the local one waits on its processes), so a short run is not
        charged a poll interval."""
        time.sleep(seconds)

    def cleanup(self, handle: str) -> None:  # noqa: B027 - optional
        """Remove what :meth:`submit` created (called once the job ends, whatever the
        outcome); no error if it is already gone."""

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """The backend as the API lists it."""
        return {
            "name": cls.name,
            "runs_images": cls.runs_images,
            "needs_workdir": cls.needs_workdir,
            "options_schema": cls.options_model.model_json_schema(),
        }


def input_variable(name: str) -> str:
    """``ZT_INPUT_<NAME>``: the variable that tells the code where input ``name`` is
    (each backend sets it to what its nodes see: a folder, a mount, a URI)."""
    return "ZT_INPUT_" + re.sub(r"[^A-Z0-9_]", "_", name.upper())


def distributed_env(
    distributed: Distributed,
    *,
    node_rank: int,
    local_rank: int,
    master_addr: str,
    master_port: int,
) -> dict[str, str]:
    """The variables ``torchrun`` sets for one process of a distributed run (and that
    ``torch.distributed.init_process_group("env://")`` reads). Empty for a run of one
    process, which needs none."""
    if distributed.world_size == 1:
        return {}
    per_node = distributed.procs_per_node
    return {
        "WORLD_SIZE": str(distributed.world_size),
        "RANK": str(node_rank * per_node + local_rank),
        "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(per_node),
        "NODE_RANK": str(node_rank),
        "GROUP_RANK": str(node_rank),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
    }
