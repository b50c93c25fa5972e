"""Job types: what a plugin registers so the platform can run its long work.

A plugin returns job types from its ``register_job_types`` hook::

    class EchoParams(BaseModel):
        text: str = Field(max_length=1000)
        repeat: int = Field(default=1, ge=1, le=100)

    def echo(ctx: JobContext, params: EchoParams) -> dict[str, Any]:
        for i in range(params.repeat):
            ctx.log(params.text)
            ctx.progress((i + 1) / params.repeat)
        return {"lines": params.repeat}

    @zhongtai.hookimpl
    def register_job_types() -> list[JobType]:
        return [JobType("hello.echo", echo, EchoParams, description="Log a line")]

The name starts with the plugin's name and a dot. ``params`` is a pydantic model:
submissions are validated against it (422 naming the field) and the handler gets the
validated instance. The handler may be a plain function or a coroutine function.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from zhongtai.hooks.manager import PluginManager
    from zhongtai.identity.roles import PermissionRegistry

__all__ = ["InvalidParams", "JobType", "JobTypeRegistry", "Resources", "collect_job_types"]

NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
QUEUE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
#: Interrupted attempts a job with ``resume_interrupted`` is resumed after, at most; one
#: more fails or retries it as any other type's (a handler that kills its own worker
#: must not loop forever).
MAX_RESUMES = 3


class InvalidParams(ValueError):
    """Raised by a job type's ``check``: the parameters are well-formed but not
    acceptable here (an unknown backend, a dataset of another project, more GPUs than
    the project may use). The API answers 422 naming ``params.<field>``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one run of the job needs; admission policies read it (GPU quotas…)."""

    cpu: float = 1.0
    memory_mb: int = 512
    gpus: int = 0

    def __post_init__(self) -> None:
        if self.cpu <= 0 or self.memory_mb <= 0 or self.gpus < 0:
            raise ValueError(f"resources must be positive: {self}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class JobType:
    """A kind of job a plugin can run.

    Args:
        name: ``<plugin>.<action>``, e.g. ``data.import``.
        handler: ``handler(ctx, params)``, sync or async; its return value (JSON-ready)
            becomes the job's ``result``. Raise to fail the attempt.
        params: the pydantic model submissions are validated against.
        description: one line, shown in the API and UI.
        queue: the default queue (RQ queue name prefix; the embedded driver has one).
        priority: the default priority; higher runs first (-100…100).
        timeout: seconds one attempt may run before it is stopped and failed.
        retries: further attempts after a failure (0: none).
        backoff: seconds before the first retry; doubles each time (capped at one hour).
        resources: what one attempt needs.
        permission: a permission the submitter needs besides ``jobs.submit`` (by name).
        check: ``check(platform, session, project_id, params)``, called at submission
            (in its transaction, after the access checks) for what the schema cannot
            know: raise :class:`InvalidParams` to refuse with 422. Optional.
        resume_interrupted: the handler can pick up the work of an attempt whose worker
            died (work that outlives the worker, such as a process on a cluster it can
            follow again): such an attempt is run again at once without spending a
            retry, up to :data:`MAX_RESUMES` times per job. Without it, an interrupted
            attempt counts as a failed one.
    """

    name: str
    handler: Callable[..., Any]
    params: type[BaseModel]
    description: str = ""
    queue: str = "default"
    priority: int = 0
    timeout: int = 3600
    retries: int = 0
    backoff: float = 10.0
    resources: Resources = dataclasses.field(default_factory=Resources)
    permission: str | None = None
    check: Callable[..., None] | None = None
    resume_interrupted: bool = False

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise ValueError(f"job type name {self.name!r} must look like 'plugin.action'")
        if not callable(self.handler):
            raise TypeError(f"job type {self.name}: handler is not callable")
        if self.check is not None and not callable(self.check):
            raise TypeError(f"job type {self.name}: check is not callable")
        if not (isinstance(self.params, type) and issubclass(self.params, BaseModel)):
            raise TypeError(f"job type {self.name}: params must be a pydantic model class")
        if not QUEUE.match(self.queue):
            raise ValueError(f"job type {self.name}: bad queue name {self.queue!r}")
        if not -100 <= self.priority <= 100:
            raise ValueError(f"job type {self.name}: priority must be within -100..100")
        if not 1 <= self.timeout <= 7 * 86_400:
            raise ValueError(f"job type {self.name}: timeout must be 1 s to 7 days")
        if not 0 <= self.retries <= 100 or self.backoff < 0:
            raise ValueError(f"job type {self.name}: retries 0..100 and backoff >= 0")

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (exponential, capped at 1 h)."""
        return float(min(self.backoff * (2 ** max(attempt - 1, 0)), 3600.0))

    def describe(self) -> dict[str, Any]:
        """The type as the API lists it (its parameter schema included)."""
        return {
            "name": self.name,
            "description": self.description,
            "queue": self.queue,
            "priority": self.priority,
            "timeout": self.timeout,
            "retries": self.retries,
            "resume_interrupted": self.resume_interrupted,
            "resources": self.resources.to_dict(),
            "permission": self.permission,
            "params_schema": self.params.model_json_schema(),
        }


class JobTypeRegistry:
    """Every loaded job type by name, and the plugin that registered it."""

    def __init__(self, entries: Iterable[tuple[str, JobType]] = ()) -> None:
        self._types: dict[str, JobType] = {}
        self._owners: dict[str, str] = {}
        for owner, job_type in entries:
            self._types[job_type.name] = job_type
            self._owners[job_type.name] = owner

    def get(self, name: str) -> JobType | None:
        return self._types.get(name)

    def __getitem__(self, name: str) -> JobType:
        return self._types[name]

    def owner(self, name: str) -> str | None:
        return self._owners.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Any:
        return iter(sorted(self._types.values(), key=lambda t: t.name))

    def __len__(self) -> int:
        return len(self._types)


def collect_job_types(
    manager: PluginManager, permissions: PermissionRegistry | None = None
) -> JobTypeRegistry:
    """Gather ``register_job_types`` from every plugin.

    A plugin whose types are refused (a name outside its prefix, a duplicate, a
    permission it did not declare) is unloaded and reported; the rest load.
    """
    entries: list[tuple[str, JobType]] = []
    seen: set[str] = set()
    for record, types in manager.call_each("register_job_types"):
        batch = list(types)
        try:
            for job_type in batch:
                if not isinstance(job_type, JobType):
                    raise TypeError(f"not a JobType: {job_type!r}")
                if not job_type.name.startswith(f"{record.name}."):
                    raise ValueError(
                        f"job type {job_type.name!r} must start with the plugin's name "
                        f"{record.name!r} and a dot"
                    )
                if job_type.name in seen:
                    raise ValueError(f"job type {job_type.name!r} is registered twice")
                if (
                    job_type.permission is not None
                    and permissions is not None
                    and job_type.permission not in permissions
                ):
                    raise ValueError(
                        f"job type {job_type.name!r} names undeclared permission "
                        f"{job_type.permission!r}"
                    )
        except (TypeError, ValueError) as exc:
            manager.unload(record.name, f"register_job_types: {exc}", exc)
            continue
        for job_type in batch:
            seen.add(job_type.name)
            entries.append((record.name, job_type))
    return JobTypeRegistry(entries)
