"""The training job spec: what ``train.run`` is submitted with, validated before it queues.

Everything a user types reaches a process only as one item of an argument list or as
an environment value, never through a shell: the URL and commit go to ``git`` after a
``--``, the entry point and arguments become ``argv``, hyperparameters become
``--name=value`` arguments. The checks here keep each part to what it claims to be
(a commit is a commit, a path stays inside the code, a variable name is a name), so
that a mistake is a 422 naming the field rather than a failed job an hour later.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

__all__ = [
    "RESERVED_ENV",
    "ArchiveCode",
    "Code",
    "DistributedSpec",
    "GitCode",
    "ImageCode",
    "InputSpec",
    "ResourcesSpec",
    "TrainSpec",
]

# A commit hash (abbreviated or whole), a tag or a branch: no leading '-' (an option
# to git), no '..', no '@{', nothing git's check-ref-format would refuse.
_REF = re.compile(r"^(?!-)(?!.*\.\.)(?!.*@\{)(?!.*//)[A-Za-z0-9][A-Za-z0-9._/-]{0,199}(?<![./])$")
# https://host/path, ssh://[user@]host/path, or scp-like user@host:path (ssh). git's
# other transports (ext::, fd::, file:// unless allowed) can run commands or read the
# server's disk, so they are refused here and by GIT_ALLOW_PROTOCOL when git runs.
_GIT_URL = re.compile(
    r"^(?:(?:https|ssh)://[A-Za-z0-9._~%!$&'()*+,;=:@\[\]-]+(?:/[A-Za-z0-9._~%!$&'()*+,;=:@/-]*)?"
    r"|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:(?!-)[A-Za-z0-9._~/-]+"
    r"|file:///[A-Za-z0-9._~/-]+)$"
)
# An image reference: [registry[:port]/]name[:tag][@sha256:digest].
_IMAGE = re.compile(
    r"^(?:[a-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_INPUT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_ID = re.compile(r"^[0-9a-z]{1,32}$")

#: Variables the platform sets itself; a spec may not set them.
RESERVED_ENV: frozenset[str] = frozenset(
    {
        "WORLD_SIZE",
        "RANK",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "NODE_RANK",
        "GROUP_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "CUDA_VISIBLE_DEVICES",
        # torchrun's options as variables, which the kubernetes backend sets on
        # multi-node runs.
        "PET_NNODES",
        "PET_NODE_RANK",
        "PET_MASTER_ADDR",
        "PET_MASTER_PORT",
    }
)
RESERVED_PREFIXES = ("MLFLOW_", "ZT_", "ZHONGTAI_")

MAX_ARGS = 256
MAX_ARG = 4096


def _argument(value: str, field: str) -> str:
    if "\x00" in value:
        raise ValueError(f"{field} must not contain NUL")
    if len(value) > MAX_ARG:
        raise ValueError(f"{field} items are at most {MAX_ARG} characters")
    return value


def relative_path(value: str, what: str) -> str:
    """``value`` as a clean relative path inside the code (no ``..``, no absolute path,
    no backslash, NUL or empty segment); raises ValueError naming ``what``."""
    if not value or len(value) > 1024:
        raise ValueError(f"{what} must be 1 to 1024 characters")
    if "\x00" in value or "\\" in value:
        raise ValueError(f"{what} must not contain a backslash or NUL")
    if value.startswith("/"):
        raise ValueError(f"{what} must be relative to the code's folder")
    parts = value.split("/")
    if any(part in ("", ".", "..") for part in parts) or value.startswith("-"):
        raise ValueError(f"{what} must stay inside the code's folder (no '..', '.' or '//')")
    return value


def _version_id(value: str) -> str:
    if not _ID.match(value):
        raise ValueError("must be a dataset version id")
    return value


def _folder(value: str) -> str:
    return relative_path(value, "subdir")


#: A dataset version's id.
VersionId = Annotated[str, Field(max_length=32), AfterValidator(_version_id)]
#: A folder inside the code to run from.
Subdir = Annotated[str, Field(max_length=1024), AfterValidator(_folder)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GitCode(_Strict):
    """Code from a git repository at one commit (or tag or branch, resolved at start)."""

    kind: Literal["git"]
    url: str = Field(max_length=2000, description="https://…, ssh://… or user@host:path")
    commit: str = Field(max_length=200, description="a commit hash, tag or branch")
    subdir: Subdir | None = Field(default=None, description="run from this folder of it")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not _GIT_URL.match(value):
            raise ValueError(
                "must be an https://, ssh:// or user@host:path git URL (other transports "
                "are refused)"
            )
        return value

    @field_validator("commit")
    @classmethod
    def _commit(cls, value: str) -> str:
        if not _REF.match(value):
            raise ValueError("must be a commit hash, tag or branch name")
        return value


class ArchiveCode(_Strict):
    """Code uploaded as an archive (zip, tar, tar.gz): a file of a committed dataset
    version of the project, expanded safely (no path out of the folder, no links, no
    bombs) into the run's folder."""

    kind: Literal["archive"]
    dataset_version: VersionId = Field(description="the version holding it")
    path: str = Field(max_length=1024, description="the archive's path in the version")
    subdir: Subdir | None = Field(default=None, description="run from this folder of it")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return relative_path(value, "path")


class ImageCode(_Strict):
    """A container image that carries its code (backends that run images)."""

    kind: Literal["image"]
    image: str = Field(max_length=500)

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not _IMAGE.match(value):
            raise ValueError("must be an image reference like registry/name:tag")
        return value


Code = Annotated[GitCode | ArchiveCode | ImageCode, Field(discriminator="kind")]


class ResourcesSpec(_Strict):
    """What each node of the run needs."""

    cpu: float = Field(default=1.0, gt=0, le=512)
    memory_mb: int = Field(default=2048, ge=64, le=4 * 1024 * 1024)
    gpus: int = Field(default=0, ge=0, le=64)


class DistributedSpec(_Strict):
    """Processes and nodes; more than one process in all gets the ``torchrun``
    environment (see :func:`zhongtai_train.backends.distributed_env`)."""

    nodes: int = Field(default=1, ge=1, le=256)
    procs_per_node: int = Field(default=1, ge=1, le=64)
    deepspeed_config: dict[str, Any] | None = Field(
        default=None, description="written as deepspeed_config.json; ZT_DEEPSPEED_CONFIG"
    )


class InputSpec(_Strict):
    """A dataset version the code reads, found at ``ZT_INPUT_<NAME>``."""

    name: str = Field(max_length=32)
    dataset_version: VersionId = Field(description="the version's id")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _INPUT_NAME.match(value):
            raise ValueError("must be lower-case letters, digits and '_', starting with a letter")
        return value


Hyperparameter = bool | int | float | str


class TrainSpec(_Strict):
    """The parameters of a ``train.run`` job."""

    code: Code
    entry_point: list[str] = Field(
        default_factory=lambda: ["python", "train.py"],
        min_length=1,
        max_length=MAX_ARGS,
        description="the command, as an argument list; for git or archive code the first "
        "item is `python` (the worker's interpreter) or a path inside the code",
    )
    args: list[str] = Field(default_factory=list, max_length=MAX_ARGS)
    hyperparameters: dict[str, Hyperparameter] = Field(
        default_factory=dict,
        max_length=200,
        description="passed as --name=value arguments and logged as MLflow parameters",
    )
    inputs: list[InputSpec] = Field(default_factory=list, max_length=32)
    env: dict[str, str] = Field(default_factory=dict, max_length=200)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    backend: str | None = Field(
        default=None, max_length=64, description="default: the setting default_backend"
    )
    backend_options: dict[str, Any] = Field(default_factory=dict)
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)
    experiment: str = Field(default="Default", min_length=1, max_length=250)
    run_name: str | None = Field(default=None, min_length=1, max_length=250)
    timeout: int | None = Field(
        default=None, ge=10, le=7 * 86_400 - 600, description="seconds the run may take"
    )

    @field_validator("entry_point")
    @classmethod
    def _entry_point(cls, value: list[str], info: ValidationInfo) -> list[str]:
        value = [_argument(item, "entry_point") for item in value]
        code = info.data.get("code")
        if isinstance(code, GitCode | ArchiveCode) and value[0] != "python":
            relative_path(value[0], "entry_point[0] (python, or a program in the repository)")
        return value

    @field_validator("args")
    @classmethod
    def _arguments(cls, value: list[str]) -> list[str]:
        return [_argument(item, "args") for item in value]

    @field_validator("hyperparameters")
    @classmethod
    def _hyperparameters(cls, value: dict[str, Hyperparameter]) -> dict[str, Hyperparameter]:
        for name, item in value.items():
            if not _PARAM_NAME.match(name):
                raise ValueError(f"{name!r} is not a parameter name (letters, digits, _ . -)")
            if isinstance(item, str):
                _argument(item, f"hyperparameters.{name}")
            if isinstance(item, float) and item != item:  # NaN
                raise ValueError(f"hyperparameters.{name} must be a number, not NaN")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, item in value.items():
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not a variable name (A-Z, 0-9, _)")
            if name in RESERVED_ENV or name.startswith(RESERVED_PREFIXES):
                raise ValueError(f"{name} is set by the platform")
            if "\x00" in item or len(item) > 32_768:
                raise ValueError(f"{name}: at most 32768 characters, no NUL")
        return value

    @field_validator("experiment", "run_name")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("must be printable text")
        return value

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: list[InputSpec]) -> list[InputSpec]:
        names = [item.name for item in value]
        if len(set(names)) != len(names):
            raise ValueError("each input name may appear once")
        return value
