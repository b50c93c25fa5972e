"""Training runs as Kubernetes ``batch/v1`` Jobs, driven with the official client.

One attempt of a ``train.run`` job becomes one Job (and, when the run has credentials,
one Secret), built by :meth:`KubernetesBackend.build` as plain manifests. Everything the
run gets reaches the pod as data, never through a shell: the command is the container's
``command`` argument list, variables are ``env`` entries, and the ones named in
``Launch.secret_env`` (the run's MLflow token) live in the Secret, so the Job's spec,
which anyone who may read Jobs in the namespace sees, holds only a ``secretKeyRef``.
Kubernetes replaces ``$(NAME)`` in ``command`` and in ``env`` values with the
container's variables; every ``$`` of the run's own strings is written as ``$$`` (which
Kubernetes turns back into ``$``), so they reach the code unchanged.

A run of ``distributed.nodes`` N > 1 is an Indexed Job of N pods (``completionMode:
Indexed``, ``completions`` = ``parallelism`` = N), one process per pod, plus a headless
Service named like the Job that gives each pod the DNS name ``<job>-<index>.<service>``.
The pods get the ``torchrun`` variables of :func:`~zhongtai_train.backends.distributed_env`:
``MASTER_ADDR`` is index 0's name, ``MASTER_PORT`` is :data:`MASTER_PORT`, and ``RANK``,
``NODE_RANK`` and ``GROUP_RANK`` come from the pod's completion index through the
downward API. They also get ``PET_NNODES``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and
``PET_MASTER_PORT``, which ``torchrun`` reads for its options, so an entry point that
starts ``torchrun --nproc-per-node=G`` itself spreads over the nodes with no ``$(…)`` in
its arguments. The backend does not start ``torchrun`` for ``procs_per_node`` > 1: that
would mean wrapping the run's command in a launcher the image may not have, so
:meth:`KubernetesBackend.check` refuses it and says how to start ``torchrun`` instead.

Kubernetes does the retrying and the time keeping: ``backoffLimit`` (0 by default)
bounds the pods the Job may start, ``activeDeadlineSeconds`` is the run's timeout, and
``ttlSecondsAfterFinished`` removes a finished Job that no worker cleaned up. When the
Job controller gives up it says why in a ``Failed`` condition (``BackoffLimitExceeded``,
``DeadlineExceeded``), which :meth:`KubernetesBackend.poll` hands on as the outcome's
reason; the backend adds no retries of its own.

The handle is ``<namespace>/<job name>`` (plus ``?nodes=N&context=…&kubeconfig=…``
when the run has several nodes or those options were given), so a worker that picks the
job up after a crash finds the same cluster, Job and Service without the spec. The
client is loaded into an ``ApiClient`` of its own (``kubeconfig`` option, else the
in-cluster service account, else ``$KUBECONFIG`` or ``~/.kube/config``), never into
the client's global configuration. Reading logs passes ``sinceTime``, which the
generated ``read_namespaced_pod_log`` does not offer, through the client's own request
builder: this needs the ``kubernetes`` client 37 or later.

The ``kubernetes`` package is imported only when a method talks to a cluster, so the
backend can be listed (and its options validated) where the client is not installed.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, NoReturn
from urllib.parse import parse_qs, quote, urlencode

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from zhongtai_train.backends import (
    Backend,
    BackendError,
    Launch,
    LogChunk,
    Outcome,
    SpecError,
    distributed_env,
    input_variable,
)

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, BatchV1Api, CoreV1Api, V1Job, V1Pod

    from zhongtai.platform import Platform

__all__ = ["KubernetesBackend", "KubernetesOptions"]

log = logging.getLogger("zhongtai.train")

CONTAINER = "train"
DATA_MOUNT = "/data"  # inputs mounted from ``data_volume_claim`` appear under it
#: The rendezvous port of a multi-node run: ``MASTER_PORT``, and the Service's port.
MASTER_PORT = 29500
#: The annotation (and, from Kubernetes 1.28, the label) with a pod's completion index.
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
#: (connect, read) seconds for every API call: a call may block the worker only briefly.
TIMEOUT = (5.0, 30.0)

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # DNS-1123 label
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# The timestamp the kubelet puts before each line with ``timestamps=true`` (RFC 3339,
# fraction of up to nine digits, usually UTC).
_STAMP = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$", re.IGNORECASE
)


# --------------------------------------------------------------------------- options


def _dns_label(value: str, what: str) -> str:
    if len(value) > 63 or not _LABEL.match(value):
        raise ValueError(
            f"{what} must be a DNS-1123 label: at most 63 lower-case letters, digits "
            "and '-', starting and ending with a letter or digit"
        )
    return value


def _dns_subdomain(value: str, what: str) -> str:
    if len(value) > 253 or not _SUBDOMAIN.match(value):
        raise ValueError(
            f"{what} must be a DNS-1123 subdomain: lower-case letters, digits, '-' and "
            "'.', at most 253 characters, starting and ending with a letter or digit"
        )
    return value


def _absolute(value: str, what: str) -> str:
    if "\x00" in value or not os.path.isabs(value):
        raise ValueError(f"{what} must be an absolute path")
    return value


class KubernetesOptions(BaseModel):
    """``backend_options`` of the ``kubernetes`` backend."""

    model_config = ConfigDict(extra="forbid")

    namespace: str = Field(default="default", description="where the Job and Secret go")
    kubeconfig: str | None = Field(
        default=None,
        description="absolute path of a kubeconfig file on the worker; default: the "
        "in-cluster service account, else $KUBECONFIG or ~/.kube/config",
    )
    context: str | None = Field(
        default=None, max_length=253, description="kubeconfig context; default: current"
    )
    service_account: str | None = Field(
        default=None,
        description="the pod's service account (its token is mounted only when this is set)",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    node_selector: dict[str, str] = Field(
        default_factory=dict, max_length=32, description="node labels the pod must land on"
    )
    backoff_limit: int = Field(
        default=0, ge=0, le=10, description="pods Kubernetes may retry before it fails the Job"
    )
    ttl_seconds_after_finished: int = Field(
        default=3600,
        ge=0,
        le=2**31 - 1,
        description="Kubernetes deletes the finished Job after this many seconds",
    )
    data_volume_claim: str | None = Field(
        default=None,
        description="PersistentVolumeClaim holding the platform's data: each input with a "
        f"local folder is mounted read-only from it under {DATA_MOUNT}/<name>",
    )
    data_root: str | None = Field(
        default=None,
        description="the folder on the worker that data_volume_claim holds (input folders "
        "are mounted by their path relative to it); default: the platform's data directory",
    )

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return _dns_label(value, "namespace")

    @field_validator("kubeconfig", "data_root")
    @classmethod
    def _paths(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _absolute(value, str(info.field_name))

    @field_validator("context")
    @classmethod
    def _context(cls, value: str | None) -> str | None:
        if value is not None and (not value or not value.isprintable()):
            raise ValueError("context must be a non-empty printable name")
        return value

    @field_validator("service_account", "data_volume_claim")
    @classmethod
    def _names(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _dns_subdomain(value, str(info.field_name))

    @field_validator("node_selector")
    @classmethod
    def _node_selector(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not _label_key_ok(key):
                raise ValueError(
                    f"node_selector: {key!r} is not a label key ([prefix/]name, name at "
                    "most 63 letters, digits, '-', '_', '.')"
                )
            if not _label_value_ok(item):
                raise ValueError(
                    f"node_selector: the value of {key} is not a label value (at most 63 "
                    "letters, digits, '-', '_', '.', starting and ending with one of the first two)"
                )
        return value


def _label_key_ok(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and (len(prefix) > 253 or not _SUBDOMAIN.match(prefix)):
        return False
    return len(name) <= 63 and bool(_LABEL_NAME.match(name))


def _label_value_ok(value: str) -> bool:
    return len(value) <= 63 and bool(_LABEL_VALUE.match(value))


# --------------------------------------------------------------------------- handles


@dataclass(frozen=True)
class _Where:
    """What a handle names: the cluster (kubeconfig, context), the Job in it, and how
    many nodes the run has (more than one: an Indexed Job with a Service)."""

    namespace: str
    job: str
    kubeconfig: str | None = None
    context: str | None = None
    nodes: int = 1

    @property
    def secret(self) -> str:
        return secret_name(self.job)

    @property
    def service(self) -> str:
        return service_name(self.job)

    def handle(self) -> str:
        extra = {
            key: value
            for key, value in (
                ("nodes", str(self.nodes) if self.nodes > 1 else None),
                ("context", self.context),
                ("kubeconfig", self.kubeconfig),
            )
            if value is not None
        }
        base = f"{self.namespace}/{self.job}"
        return f"{base}?{urlencode(extra, quote_via=quote)}" if extra else base

    @classmethod
    def parse(cls, handle: str) -> _Where:
        """Also reads the handles of earlier versions (no ``nodes``: one node)."""
        path, _, query = handle.partition("?")
        namespace, slash, job = path.partition("/")
        if not slash or not _LABEL.match(namespace) or not _LABEL.match(job):
            raise BackendError(f"not a kubernetes backend handle: {handle!r}")
        params = parse_qs(query, strict_parsing=False)
        nodes = params.get("nodes", ["1"])[0]
        if not (nodes.isdigit() and len(nodes) <= 5 and int(nodes) >= 1):
            raise BackendError(f"not a kubernetes backend handle: {handle!r}")
        return cls(
            namespace=namespace,
            job=job,
            kubeconfig=params.get("kubeconfig", [None])[0],
            context=params.get("context", [None])[0],
            nodes=int(nodes),
        )


def job_name(launch: Launch) -> str:
    """The Job's name: the launch's name and ``-a<attempt>``, so each attempt has a Job
    of its own. It is shortened to keep within 63 characters, and for a run of several
    nodes so that its pods' host names, ``<job>-<index>``, do too."""
    suffix = f"-a{launch.attempt}"
    nodes = launch.distributed.nodes
    room = 63 - len(suffix) - (len(f"-{nodes - 1}") if nodes > 1 else 0)
    return launch.name[:room].rstrip("-") + suffix


def secret_name(job: str) -> str:
    return f"{job}-env"


def service_name(job: str) -> str:
    """The headless Service of a multi-node run: the Job's name (a Service's must start
    with a letter, so one that does not gets ``s-`` before it)."""
    return job if job[:1].isalpha() else f"s-{job}"[:63].rstrip("-")


# --------------------------------------------------------------------------- backend


class KubernetesBackend(Backend):
    """Runs each attempt as one ``batch/v1`` Job in the configured namespace."""

    name = "kubernetes"
    options_model = KubernetesOptions
    needs_workdir = False
    runs_images = True
    # Which cluster, with which credentials, and what a pod may mount: the operator's.
    operator_options = frozenset(
        {"kubeconfig", "context", "namespace", "service_account", "data_volume_claim", "data_root"}
    )

    def __init__(self, platform: Platform | None = None) -> None:
        super().__init__(platform)
        self._clients: dict[tuple[str | None, str | None], ApiClient] = {}
        self._lock = threading.Lock()

    # ---- what can run

    def check(self, launch: Launch) -> None:
        options = self._options(launch)
        if launch.image is None:
            raise SpecError(
                "code",
                "the kubernetes backend runs a container image that carries the code: give "
                "code as {kind: image, image: …}",
            )
        if launch.distributed.procs_per_node > 1:
            raise SpecError(
                "distributed.procs_per_node",
                "the kubernetes backend starts one process per pod; to use several GPUs, "
                "keep procs_per_node at 1 and start torchrun yourself (entry_point: "
                "[torchrun, --nproc-per-node=N, train.py]); with several nodes torchrun "
                "finds the others through the PET_* variables every pod gets",
            )
        if launch.timeout < 1:
            raise SpecError("timeout", "must be at least one second")
        for item in launch.inputs:
            if item.path is None and item.uri is None:
                # At submission, before the inputs are fetched: they will be folders
                # under the platform's data, which pods reach only through the claim.
                if options.data_volume_claim is None:
                    raise SpecError(
                        "inputs",
                        "pods reach dataset inputs through the claim that holds the "
                        "platform's data: the operator sets backend_options.kubernetes."
                        "data_volume_claim",
                    )
                continue
            self._input_source(item.name, item.path, item.uri, options)
        self._check_kubeconfig(options)

    def _check_kubeconfig(self, options: KubernetesOptions) -> None:
        # A kubeconfig can run commands (``exec`` credential plugins) on the worker: refuse
        # one from inside the platform's data, where a user's upload could be.
        if options.kubeconfig is None or self.platform is None:
            return
        settings = self.platform.settings
        path = Path(options.kubeconfig).resolve()
        for root in (settings.home, settings.storage.root):
            if root is not None and path.is_relative_to(Path(root).resolve()):
                raise SpecError(
                    "backend_options.kubeconfig",
                    "must not be a file inside the platform's data directory or object store",
                )

    def _options(self, launch: Launch) -> KubernetesOptions:
        if isinstance(launch.options, KubernetesOptions):
            return launch.options
        return KubernetesOptions.model_validate(launch.options.model_dump())

    def _data_root(self, options: KubernetesOptions) -> Path | None:
        if options.data_root is not None:
            return Path(options.data_root)
        if self.platform is not None:
            return Path(self.platform.settings.home)
        return None

    def _input_source(
        self, name: str, path: Path | None, uri: str | None, options: KubernetesOptions
    ) -> tuple[str, str]:
        """``("mount", subPath)`` or ``("uri", uri)``: how a pod reaches input ``name``."""
        if path is not None and options.data_volume_claim is not None:
            root = self._data_root(options)
            if root is not None and Path(path).is_relative_to(root):
                relative = PurePosixPath(Path(path).relative_to(root).as_posix())
                if str(relative) != "." and ".." not in relative.parts:
                    return "mount", str(relative)
            if uri is None:
                raise SpecError(
                    "inputs",
                    f"input {name}: its folder {path} is not under data_root "
                    f"({root}), so it cannot be mounted from {options.data_volume_claim}",
                )
        if uri is not None:
            return "uri", uri
        raise SpecError(
            "inputs",
            f"input {name}: a pod cannot reach its files; set backend_options."
            "data_volume_claim to the claim that holds the platform's data, or use the s3 "
            "storage driver",
        )

    # ---- manifests

    def build(self, launch: Launch) -> list[dict[str, Any]]:
        """The manifests :meth:`submit` creates, in order: the Secret (only when the run
        has secret variables), the headless Service (only for several nodes) and the
        Job. A pure function of ``launch``."""
        options = self._options(launch)
        if launch.image is None:
            raise BackendError("the kubernetes backend needs launch.image")
        if launch.distributed.procs_per_node > 1:
            raise BackendError("the kubernetes backend starts one process per pod")
        nodes = launch.distributed.nodes
        name = job_name(launch)
        service = service_name(name)
        labels = launch.labels()
        for key, value in labels.items():
            if not _label_key_ok(key) or not _label_value_ok(value):
                raise BackendError(f"label {key}={value!r} is not a valid Kubernetes label")
        metadata = {"name": name, "namespace": options.namespace, "labels": dict(labels)}

        manifests: list[dict[str, Any]] = []
        ranks = _distributed_env(launch, name, service)
        ours = {item["name"] for item in ranks}
        env: list[dict[str, Any]] = []
        secret_data: dict[str, str] = {}
        for var, value in launch.env.items():
            if var in ours:
                continue  # the run's topology is the platform's to say
            if var in launch.secret_env:
                secret_data[var] = value  # secretKeyRef values are not expanded
                ref = {"name": secret_name(name), "key": var}
                env.append({"name": var, "valueFrom": {"secretKeyRef": ref}})
            else:
                env.append({"name": var, "value": _literal(value)})
        env.extend(ranks)
        if secret_data:
            manifests.append(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {**metadata, "name": secret_name(name)},
                    "type": "Opaque",
                    "stringData": secret_data,
                }
            )

        mounts: list[dict[str, Any]] = []
        for item in launch.inputs:
            how, where = self._input_source(item.name, item.path, item.uri, options)
            if how == "mount":
                mount_path = f"{DATA_MOUNT}/{item.name}"
                mounts.append(
                    {"name": "data", "mountPath": mount_path, "subPath": where, "readOnly": True}
                )
                env.append({"name": input_variable(item.name), "value": mount_path})
            else:
                env.append({"name": input_variable(item.name), "value": _literal(where)})

        req = launch.requirements
        resources: dict[str, dict[str, str]] = {
            "requests": {
                "cpu": f"{max(1, round(req.cpu * 1000))}m",
                "memory": f"{req.memory_mb}Mi",
            },
            "limits": {"cpu": f"{max(1, round(req.cpu * 1000))}m", "memory": f"{req.memory_mb}Mi"},
        }
        if req.gpus > 0:
            resources["limits"]["nvidia.com/gpu"] = str(req.gpus)

        container: dict[str, Any] = {
            "name": CONTAINER,
            "image": launch.image,
            "imagePullPolicy": options.image_pull_policy,
            "command": [_literal(arg) for arg in launch.argv],
            "env": env,
            "resources": resources,
            # The last lines of output become the failure message when the code dies.
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
        if mounts:
            container["volumeMounts"] = mounts
        pod_spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "containers": [container],
            # No API token or service variables unless asked: training code needs neither.
            "automountServiceAccountToken": options.service_account is not None,
            "enableServiceLinks": False,
        }
        if options.service_account is not None:
            pod_spec["serviceAccountName"] = options.service_account
        if options.node_selector:
            pod_spec["nodeSelector"] = dict(options.node_selector)
        if mounts:
            claim = {"claimName": options.data_volume_claim, "readOnly": True}
            pod_spec["volumes"] = [{"name": "data", "persistentVolumeClaim": claim}]

        job_spec: dict[str, Any] = {
            "backoffLimit": options.backoff_limit,
            "activeDeadlineSeconds": launch.timeout,
            "ttlSecondsAfterFinished": options.ttl_seconds_after_finished,
        }
        if nodes > 1:
            # Pod <job>-<index> for each index; with the subdomain, each is found in DNS
            # as <job>-<index>.<service>.
            job_spec.update(completionMode="Indexed", completions=nodes, parallelism=nodes)
            pod_spec["subdomain"] = service
            manifests.append(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {**metadata, "name": service},
                    "spec": {
                        "clusterIP": "None",
                        # DNS names as soon as pods have addresses: rank 0 need not be
                        # ready before the others look it up.
                        "publishNotReadyAddresses": True,
                        "selector": dict(labels),
                        "ports": [
                            {
                                "name": "rendezvous",
                                "port": MASTER_PORT,
                                "targetPort": MASTER_PORT,
                                "protocol": "TCP",
                            }
                        ],
                    },
                }
            )
        job_spec["template"] = {"metadata": {"labels": dict(labels)}, "spec": pod_spec}
        manifests.append(
            {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}
        )
        return manifests

    # ---- the client

    def _client(self, where: _Where) -> ApiClient:
        key = (where.kubeconfig, where.context)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = _load_client(where.kubeconfig, where.context)
            return client

    def _batch(self, where: _Where) -> BatchV1Api:
        from kubernetes.client import BatchV1Api

        return BatchV1Api(self._client(where))

    def _core(self, where: _Where) -> CoreV1Api:
        from kubernetes.client import CoreV1Api

        return CoreV1Api(self._client(where))

    # ---- the five calls

    def submit(self, launch: Launch) -> str:
        from kubernetes.client import V1Job, V1Secret, V1Service
        from kubernetes.client.exceptions import ApiException

        options = self._options(launch)
        manifests = {manifest["kind"]: manifest for manifest in self.build(launch)}
        job_manifest = manifests["Job"]
        secret_manifest = manifests.get("Secret")
        service_manifest = manifests.get("Service")
        where = _Where(
            namespace=options.namespace,
            job=job_manifest["metadata"]["name"],
            kubeconfig=options.kubeconfig,
            context=options.context,
            nodes=launch.distributed.nodes,
        )
        core, batch = self._core(where), self._batch(where)
        if secret_manifest is not None:
            with _api_errors(f"create Secret {where.namespace}/{where.secret}"):
                try:
                    core.create_namespaced_secret(
                        where.namespace,
                        V1Secret.model_validate(secret_manifest),
                        _request_timeout=TIMEOUT,
                    )
                except ApiException as exc:
                    if exc.status != 409:
                        raise
                    existing = core.read_namespaced_secret(
                        where.secret, where.namespace, _request_timeout=TIMEOUT
                    )
                    _same_attempt("Secret", where.secret, existing.metadata, launch)
                    # Left by an earlier try of this attempt: its values may be stale (a
                    # token made again), and the Job may not exist yet to have read them.
                    core.patch_namespaced_secret(
                        where.secret,
                        where.namespace,
                        {"stringData": secret_manifest["stringData"]},
                        _content_type="application/merge-patch+json",
                        _request_timeout=TIMEOUT,
                    )
        service_ours = False  # created here, or by an earlier try of this attempt
        try:
            if service_manifest is not None:
                # Before the Job, so that the pods' names resolve from their start.
                with _api_errors(f"create Service {where.namespace}/{where.service}"):
                    try:
                        core.create_namespaced_service(
                            where.namespace,
                            V1Service.model_validate(service_manifest),
                            _request_timeout=TIMEOUT,
                        )
                    except ApiException as exc:
                        if exc.status != 409:
                            raise
                        existing_service = core.read_namespaced_service(
                            where.service, where.namespace, _request_timeout=TIMEOUT
                        )
                        _same_attempt("Service", where.service, existing_service.metadata, launch)
                service_ours = True
            with _api_errors(f"create Job {where.namespace}/{where.job}"):
                try:
                    created = batch.create_namespaced_job(
                        where.namespace,
                        V1Job.model_validate(job_manifest),
                        _request_timeout=TIMEOUT,
                    )
                except ApiException as exc:
                    if exc.status != 409:
                        raise
                    # A retry of this very attempt (the worker died after creating it).
                    created = batch.read_namespaced_job(
                        where.job, where.namespace, _request_timeout=TIMEOUT
                    )
                    _same_attempt("Job", where.job, created.metadata, launch)
        except BackendError:
            if service_ours:
                self._delete_service(where, quiet=True)
            if secret_manifest is not None:
                self._delete_secret(where, quiet=True)
            raise
        if secret_manifest is not None:
            self._own(where, created, "Secret", where.secret)
        if service_manifest is not None:
            self._own(where, created, "Service", where.service)
        return where.handle()

    def _own(
        self, where: _Where, job: V1Job, kind: Literal["Secret", "Service"], name: str
    ) -> None:
        """Make the Job the owner of its Secret or Service, so Kubernetes deletes them with
        the Job (its TTL included). Failing that, :meth:`cleanup` still deletes them."""
        uid = job.metadata.uid if job.metadata is not None else None
        if not uid:
            return
        owner = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": where.job,
            "uid": uid,
            "blockOwnerDeletion": False,
        }
        core = self._core(where)
        patch = core.patch_namespaced_secret if kind == "Secret" else core.patch_namespaced_service
        try:
            with _api_errors(f"set the owner of {kind} {where.namespace}/{name}"):
                patch(
                    name,
                    where.namespace,
                    {"metadata": {"ownerReferences": [owner]}},
                    _content_type="application/merge-patch+json",
                    _request_timeout=TIMEOUT,
                )
        except BackendError as exc:
            log.warning("%s; cleanup will delete the %s instead", exc, kind)

    def poll(self, handle: str) -> Outcome:
        from kubernetes.client.exceptions import ApiException

        where = _Where.parse(handle)
        batch = self._batch(where)
        with _api_errors(f"read Job {where.namespace}/{where.job}"):
            try:
                job = batch.read_namespaced_job(
                    where.job, where.namespace, _request_timeout=TIMEOUT
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
                return Outcome(
                    "failed",
                    reason="JobDeleted",
                    message=f"Job {where.namespace}/{where.job} no longer exists",
                )
        status = job.status
        for condition in (status.conditions if status is not None else None) or []:
            if condition.status != "True":
                continue
            if condition.type == "Failed":
                return Outcome(
                    "failed",
                    reason=condition.reason or "Failed",
                    message=condition.message or "",
                    exit_code=self._exit_code(where),
                )
            if condition.type == "Complete":
                return Outcome("succeeded", reason="Complete", exit_code=0)
        if status is not None and (status.ready or 0) > 0:
            return Outcome("running")
        if status is not None and (status.active or 0) > 0:
            pods = self._pods(where)
            if any(pod.status is not None and pod.status.phase == "Running" for pod in pods):
                return Outcome("running")
            return Outcome("pending", message=_waiting(pods))
        return Outcome("pending")

    def read_logs(self, handle: str, cursor: str | None) -> LogChunk:
        """The log of the Job's pod, and of the pods that replaced it, one after another.
        For several nodes, index 0's only (the pods run side by side): the other ranks'
        logs are for ``kubectl logs``."""
        where = _Where.parse(handle)
        mark = _Cursor.parse(cursor)
        pods = self._pods(where, index=0 if where.nodes > 1 else None)
        if mark is not None:
            pods = [pod for pod in pods if _pod_key(pod) >= (mark.created, mark.pod)]
        lines: list[str] = []
        for pod in pods:
            name = pod.metadata.name if pod.metadata is not None else None
            phase = pod.status.phase if pod.status is not None else None
            if name is None or phase in (None, "Pending"):
                break  # not started: its logs (and any later pod's) come next time
            same = mark is not None and mark.pod == name
            text = self._pod_log(where, name, mark.since if same and mark else None)
            if text is None:
                break
            new, mark = _take(text, name, _pod_key(pod)[0], mark if same else None)
            lines.extend(new)
        return LogChunk(lines=lines, cursor=mark.dump() if mark is not None else cursor)

    def cancel(self, handle: str) -> None:
        from kubernetes.client.exceptions import ApiException

        where = _Where.parse(handle)
        with _api_errors(f"delete Job {where.namespace}/{where.job}"):
            try:
                # Foreground: the Job goes only once its pods are gone, so nothing keeps running.
                self._batch(where).delete_namespaced_job(
                    where.job,
                    where.namespace,
                    propagation_policy="Foreground",
                    _request_timeout=TIMEOUT,
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def cleanup(self, handle: str) -> None:
        from kubernetes.client.exceptions import ApiException

        where = _Where.parse(handle)
        try:
            with _api_errors(f"delete Job {where.namespace}/{where.job}"):
                try:
                    self._batch(where).delete_namespaced_job(
                        where.job,
                        where.namespace,
                        propagation_policy="Background",
                        _request_timeout=TIMEOUT,
                    )
                except ApiException as exc:
                    if exc.status != 404:
                        raise
            self._delete_secret(where, quiet=False)
            if where.nodes > 1:  # one node has no Service (and may not be allowed any)
                self._delete_service(where, quiet=False)
        finally:
            self._close()

    # ---- helpers

    def _delete_secret(self, where: _Where, *, quiet: bool) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            with _api_errors(f"delete Secret {where.namespace}/{where.secret}"):
                try:
                    self._core(where).delete_namespaced_secret(
                        where.secret, where.namespace, _request_timeout=TIMEOUT
                    )
                except ApiException as exc:
                    if exc.status != 404:
                        raise
        except BackendError as exc:
            if not quiet:
                raise
            log.warning("%s", exc)

    def _delete_service(self, where: _Where, *, quiet: bool) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            with _api_errors(f"delete Service {where.namespace}/{where.service}"):
                try:
                    self._core(where).delete_namespaced_service(
                        where.service, where.namespace, _request_timeout=TIMEOUT
                    )
                except ApiException as exc:
                    if exc.status != 404:
                        raise
        except BackendError as exc:
            if not quiet:
                raise
            log.warning("%s", exc)

    def _pods(self, where: _Where, index: int | None = None) -> list[V1Pod]:
        """The Job's pods (those of completion ``index`` only, when given), oldest first."""
        selector = f"job-name={where.job}"
        if index is not None:
            selector += f",{INDEX_KEY}={index}"  # the label: Kubernetes 1.28 or later
        with _api_errors(f"list the pods of Job {where.namespace}/{where.job}"):
            pods = self._core(where).list_namespaced_pod(
                where.namespace, label_selector=selector, _request_timeout=TIMEOUT
            )
        return sorted(pods.items or [], key=_pod_key)

    def _pod_log(self, where: _Where, pod: str, since: str | None) -> str | None:
        """The pod's log with timestamps, from the second ``since`` is in (the API's
        ``sinceTime`` has whole seconds); None while the container has not started."""
        from kubernetes.client.exceptions import ApiException

        client = self._client(where)
        query: list[tuple[str, str]] = [("container", CONTAINER), ("timestamps", "true")]
        if since is not None:
            query.append(("sinceTime", since))
        with _api_errors(f"read the log of pod {where.namespace}/{pod}"):
            try:
                request = client.param_serialize(
                    method="GET",
                    resource_path="/api/v1/namespaces/{namespace}/pods/{name}/log",
                    path_params={"namespace": where.namespace, "name": pod},
                    query_params=query,
                    header_params={"Accept": "text/plain"},
                    auth_settings=["BearerToken"],
                )
                response = client.call_api(*request, _request_timeout=TIMEOUT)
                response.read()  # type: ignore[no-untyped-call]
                data = client.response_deserialize(response, {"200": "str"}).data
            except ApiException as exc:
                if exc.status in (400, 404):  # waiting to start, or gone
                    return None
                raise
        return data if isinstance(data, str) else ""

    def _exit_code(self, where: _Where) -> int | None:
        """The exit code of the newest pod whose container failed, else of the newest
        whose container ended (with several nodes, the rank that failed, not one that
        ended after it)."""
        try:
            pods = self._pods(where)
        except BackendError:
            return None
        codes = [
            int(status.state.terminated.exit_code)
            for pod in reversed(pods)
            for status in (pod.status.container_statuses if pod.status else None) or []
            if status.name == CONTAINER and status.state is not None and status.state.terminated
        ]
        return next((code for code in codes if code != 0), codes[0] if codes else None)

    def _close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()  # type: ignore[no-untyped-call]


# --------------------------------------------------------------------------- plumbing


def _load_client(kubeconfig: str | None, context: str | None) -> ApiClient:
    """An ``ApiClient`` with its own configuration: the given kubeconfig, else the
    in-cluster service account, else ``$KUBECONFIG`` or ``~/.kube/config``."""
    from kubernetes import config
    from kubernetes.client import ApiClient, Configuration

    configuration = Configuration()
    try:
        if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            path = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=os.path.expanduser(path),
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
    except (config.ConfigException, OSError, ValueError) as exc:
        raise BackendError(f"cannot load the Kubernetes configuration: {exc}") from exc
    return ApiClient(configuration)


@contextlib.contextmanager
def _api_errors(doing: str) -> Iterator[None]:
    """Turns what the client raises into :class:`BackendError` with the API's message."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    try:
        yield
    except ApiException as exc:
        _raise_api(doing, exc)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise BackendError(f"cannot {doing}: the Kubernetes API is unreachable: {exc}") from exc


def _raise_api(doing: str, exc: Any) -> NoReturn:
    message = ""
    try:
        body = json.loads(exc.body or "")
        if isinstance(body, dict):
            message = str(body.get("message") or "")
    except ValueError:
        message = (exc.body or "").strip()[:500]
    status = f"{exc.status} {exc.reason}".strip()
    raise BackendError(
        f"cannot {doing}: Kubernetes API {status}: {message or 'no message'}"
    ) from exc


def _literal(text: str) -> str:
    """``text`` as Kubernetes passes it on: it replaces ``$(NAME)`` in ``command`` and
    ``env`` values with the variable and ``$$`` with ``$``, so each ``$`` is doubled."""
    return text.replace("$", "$$")


def _distributed_env(launch: Launch, job: str, service: str) -> list[dict[str, Any]]:
    """The ``env`` entries of a multi-node run (none for one node): the names of
    :func:`distributed_env`, with the ranks read from the pod's completion index, and
    the ``PET_*`` options of a ``torchrun`` the entry point starts."""
    distributed = launch.distributed
    if distributed.nodes == 1:
        return []
    index = {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_KEY}']"}}
    master = f"{job}-0.{service}"
    # One process per pod (check() refuses more), so its rank is the node's.
    fixed = distributed_env(
        distributed, node_rank=0, local_rank=0, master_addr=master, master_port=MASTER_PORT
    )
    per_pod = {"RANK", "NODE_RANK", "GROUP_RANK"}
    env = [
        {"name": var, "valueFrom": index} if var in per_pod else {"name": var, "value": value}
        for var, value in fixed.items()
    ]
    env += [
        {"name": "PET_NNODES", "value": str(distributed.nodes)},
        {"name": "PET_NODE_RANK", "valueFrom": index},
        {"name": "PET_MASTER_ADDR", "value": master},
        {"name": "PET_MASTER_PORT", "value": str(MASTER_PORT)},
    ]
    return env


def _same_attempt(kind: str, name: str, metadata: Any, launch: Launch) -> None:
    """Refuse an object of ``name`` that some other job or attempt created."""
    labels = (metadata.labels if metadata is not None else None) or {}
    want = launch.labels()
    mine = ("zhongtai.io/job-id", "zhongtai.io/attempt")
    if any(labels.get(key) != want[key] for key in mine):
        raise BackendError(
            f"{kind} {name} already exists and was not created for job {launch.job_id} "
            f"attempt {launch.attempt}"
        )


def _waiting(pods: list[V1Pod]) -> str:
    """Why the newest pod has not started, in a line (ImagePullBackOff, Unschedulable…)."""
    for pod in reversed(pods):
        status = pod.status
        if status is None:
            continue
        for container in status.container_statuses or []:
            waiting = container.state.waiting if container.state is not None else None
            if waiting is not None and waiting.reason:
                return f"{waiting.reason}: {waiting.message or ''}".rstrip(": ")
        for condition in status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False":
                return f"{condition.reason or 'Unschedulable'}: {condition.message or ''}".rstrip(
                    ": "
                )
        return ""
    return ""


def _pod_key(pod: V1Pod) -> tuple[float, str]:
    metadata = pod.metadata
    created = metadata.creation_timestamp if metadata is not None else None
    return (created.timestamp() if created is not None else 0.0, (metadata and metadata.name) or "")


def _stamp(text: str) -> tuple[int, int] | None:
    """(seconds since the epoch, nanoseconds) of an RFC 3339 timestamp, or None."""
    match = _STAMP.match(text)
    if match is None:
        return None
    whole, fraction, zone = match.groups()
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    if zone.upper() != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds, int((fraction or "0").ljust(9, "0"))


@dataclass(frozen=True)
class _Cursor:
    """Where the log reading stopped: the pod (and when it was created, to order pods),
    the last timestamp returned, and how many lines carried that timestamp (two lines may
    share one, and ``sinceTime`` returns the whole second again)."""

    pod: str
    created: float
    at: tuple[int, int]
    count: int

    @property
    def since(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at[0]))

    def dump(self) -> str:
        return json.dumps(
            {"pod": self.pod, "created": self.created, "at": list(self.at), "n": self.count},
            separators=(",", ":"),
        )

    @classmethod
    def parse(cls, text: str | None) -> _Cursor | None:
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(
                pod=str(data["pod"]),
                created=float(data["created"]),
                at=(int(data["at"][0]), int(data["at"][1])),
                count=int(data["n"]),
            )
        except (ValueError, KeyError, TypeError, IndexError):
            return None  # not ours (or damaged): read from the start


def _take(
    text: str, pod: str, created: float, mark: _Cursor | None
) -> tuple[list[str], _Cursor | None]:
    """The lines of ``text`` after ``mark`` (timestamps stripped), and the new cursor."""
    lines: list[str] = []
    at: tuple[int, int] | None = None
    count = 0
    for raw in text.splitlines():
        stamp, _, line = raw.partition(" ")
        key = _stamp(stamp)
        if key is None:  # no timestamp: a continuation, it goes with the line before it
            key, line = at or (0, 0), raw
        count = count + 1 if key == at else 1
        at = key
        if mark is not None and (key < mark.at or (key == mark.at and count <= mark.count)):
            continue  # returned last time
        lines.append(line)
    if at is None:
        return lines, mark
    if mark is not None and at < mark.at:
        return lines, mark
    return lines, _Cursor(pod=pod, created=created, at=at, count=count)
