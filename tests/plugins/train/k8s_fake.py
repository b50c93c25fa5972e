"""A small in-memory fake of the Kubernetes API, for the kubernetes backend's tests.

It serves, over plain HTTP on 127.0.0.1, just the endpoints the official client calls for
the backend: Jobs (create, read, delete), Secrets and Services (create, read,
merge-patch, delete), pods (list by a label selector of comma-separated ``key=value``
terms) and pod logs (``container``, ``timestamps``, ``sinceTime``).
Objects are stored as the JSON the client sent; the test drives what a cluster would do
(Job status and conditions, pods, log lines, failures) through the methods below.

What it does *not* do: no scheduling, kubelet or Job controller (nothing runs; status only
changes when a test sets it; an Indexed Job's pods exist only when a test adds them, with
the index it names), no DNS and no endpoints behind a Service, no admission or schema
validation (the tests validate the manifests against the official schemas separately),
no resourceVersion conflicts, no watches, no set-based selectors (``in``, ``!=``), and
garbage collection only in the simple form "deleting a Job deletes its pods and the
objects it owns".
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "fake-cluster-token"

_JOBS = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?$")
_SECRETS = re.compile(r"^/api/v1/namespaces/([^/]+)/secrets(?:/([^/]+))?$")
_SERVICES = re.compile(r"^/api/v1/namespaces/([^/]+)/services(?:/([^/]+))?$")
_INDEX = "batch.kubernetes.io/job-completion-index"
_PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
_LOG = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z$")


def rfc3339(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _second(stamp: str) -> str:
    """The whole second of an RFC 3339 UTC timestamp (what ``sinceTime`` keeps)."""
    match = _STAMP.match(stamp)
    if match is None:
        raise ValueError(stamp)
    return match.group(1)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int
    message: str
    times: int


@dataclass
class FakeKubernetes:
    """The cluster's state, and the server that answers for it."""

    jobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    secrets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    services: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    logs: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)
    port: int = 0

    # ---- what a test drives

    def fail(self, method: str, path: str, status: int, message: str, times: int = 1) -> None:
        """Answer the next ``times`` requests matching ``method`` and the ``path`` regex
        with ``status``."""
        self.faults.append(Fault(method, re.compile(path), status, message, times))

    def set_job_status(self, namespace: str, name: str, **status: Any) -> None:
        with self.lock:
            self.jobs[(namespace, name)].setdefault("status", {}).update(status)

    def add_condition(
        self, namespace: str, name: str, kind: str, reason: str = "", message: str = ""
    ) -> None:
        condition = {
            "type": kind,
            "status": "True",
            "reason": reason,
            "message": message,
            "lastProbeTime": rfc3339(),
            "lastTransitionTime": rfc3339(),
        }
        with self.lock:
            status = self.jobs[(namespace, name)].setdefault("status", {})
            status.setdefault("conditions", []).append(condition)

    def add_pod(
        self,
        namespace: str,
        job: str,
        name: str,
        *,
        created: str,
        phase: str = "Pending",
        index: int | None = None,
    ) -> None:
        """A pod of Job ``job``, labelled as the Job controller labels them; ``index``:
        its completion index in an Indexed Job (label and annotation, as from 1.28)."""
        with self.lock:
            owner = self.jobs[(namespace, job)]
            uid = owner["metadata"]["uid"]
            container = owner["spec"]["template"]["spec"]["containers"][0]
            indexed: dict[str, str] = {} if index is None else {_INDEX: str(index)}
            self.pods[(namespace, name)] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "uid": str(uuid.uuid4()),
                    "creationTimestamp": created,
                    "labels": {
                        **owner["spec"]["template"]["metadata"]["labels"],
                        "job-name": job,
                        "batch.kubernetes.io/job-name": job,
                        "controller-uid": uid,
                        "batch.kubernetes.io/controller-uid": uid,
                        **indexed,
                    },
                    "annotations": indexed,
                    "ownerReferences": [
                        {"apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": uid}
                    ],
                },
                "spec": {"containers": [container], "restartPolicy": "Never"},
                "status": {"phase": phase},
            }
            self.logs.setdefault((namespace, name), [])
        self.set_pod(namespace, name, phase=phase)

    def set_pod(
        self,
        namespace: str,
        name: str,
        *,
        phase: str,
        exit_code: int | None = None,
        waiting: tuple[str, str] | None = None,
    ) -> None:
        """Move a pod to ``phase``; its ``train`` container waits (``waiting``: reason,
        message), runs, or has ended with ``exit_code``."""
        with self.lock:
            pod = self.pods[(namespace, name)]
            if exit_code is not None:
                state: dict[str, Any] = {"terminated": {"exitCode": exit_code, "reason": "Error"}}
            elif phase == "Running":
                state = {"running": {"startedAt": rfc3339()}}
            else:
                reason, message = waiting or ("ContainerCreating", "")
                state = {"waiting": {"reason": reason, "message": message}}
            pod["status"] = {
                "phase": phase,
                "containerStatuses": [
                    {
                        "name": "train",
                        "image": pod["spec"]["containers"][0]["image"],
                        "imageID": "",
                        "ready": phase == "Running",
                        "restartCount": 0,
                        "state": state,
                    }
                ],
            }

    def log(self, namespace: str, pod: str, stamp: str, line: str) -> None:
        """The container writes ``line`` at ``stamp`` (RFC 3339, UTC, up to nanoseconds)."""
        with self.lock:
            self.logs[(namespace, pod)].append((stamp, line))

    def calls(self, method: str, pattern: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    def kubeconfig(self, folder: Path, *, token: str = TOKEN, extra_context: bool = False) -> Path:
        """A kubeconfig file for this server. With ``extra_context``, the current context
        is ``dead`` (a closed port) and this server is the context ``fake``."""
        clusters = [{"name": "fake", "cluster": {"server": self.url}}]
        contexts = [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}]
        if extra_context:
            clusters.append({"name": "dead", "cluster": {"server": "http://127.0.0.1:9"}})
            contexts.append({"name": "dead", "context": {"cluster": "dead", "user": "tester"}})
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": clusters,
            "users": [{"name": "tester", "user": {"token": token}}],
            "contexts": contexts,
            "current-context": "dead" if extra_context else "fake",
        }
        path = folder / "kubeconfig"
        path.write_text(json.dumps(config))  # JSON is YAML
        return path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- the API

    def handle(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        body: Any,
    ) -> tuple[int, Any, str]:
        """(status, body, content type) of one request."""
        with self.lock:
            self.requests.append(Request(method, path, query, headers, body))
            if headers.get("authorization") != f"Bearer {TOKEN}":
                return _status(401, "Unauthorized", "Unauthorized")
            for fault in self.faults:
                if fault.times > 0 and fault.method == method and fault.path.search(path):
                    fault.times -= 1
                    return _status(fault.status, "InternalError", fault.message)
            if match := _JOBS.match(path):
                return self._objects(self.jobs, "jobs", method, match, query, headers, body)
            if match := _SECRETS.match(path):
                return self._objects(self.secrets, "secrets", method, match, query, headers, body)
            if match := _SERVICES.match(path):
                return self._objects(self.services, "services", method, match, query, headers, body)
            if (match := _PODS.match(path)) and method == "GET":
                return self._list_pods(match.group(1), query)
            if (match := _LOG.match(path)) and method == "GET":
                return self._log(match.group(1), match.group(2), query)
            return _status(404, "NotFound", f"the fake has no {method} {path}")

    def _objects(
        self,
        store: dict[tuple[str, str], dict[str, Any]],
        resource: str,
        method: str,
        match: re.Match[str],
        query: dict[str, list[str]],
        headers: dict[str, str],
        body: Any,
    ) -> tuple[int, Any, str]:
        namespace, name = match.group(1), match.group(2)
        if name is None:
            if method != "POST":
                return _status(405, "MethodNotAllowed", f"{method} on the {resource} list")
            name = body["metadata"]["name"]
            if body["metadata"].get("namespace", namespace) != namespace:
                return _status(400, "BadRequest", "the namespace of the object does not match")
            if (namespace, name) in store:
                return _status(409, "AlreadyExists", f'{resource} "{name}" already exists')
            stored = copy.deepcopy(body)
            stored["metadata"].update(
                namespace=namespace,
                uid=str(uuid.uuid4()),
                creationTimestamp=rfc3339(),
                resourceVersion="1",
            )
            store[(namespace, name)] = stored
            return 201, stored, "application/json"
        current = store.get((namespace, name))
        if current is None:
            return _status(404, "NotFound", f'{resource} "{name}" not found')
        if method == "GET":
            return 200, current, "application/json"
        if method == "PATCH":
            if headers.get("content-type") != "application/merge-patch+json":
                return _status(415, "UnsupportedMediaType", "the fake takes merge patches only")
            store[(namespace, name)] = _merge(current, body)
            return 200, store[(namespace, name)], "application/json"
        if method == "DELETE":
            del store[(namespace, name)]
            self._collect(current["metadata"]["uid"])
            if resource == "services":
                # The API server answers with the deleted Service (its storage returns the
                # deleted object), and the client reads the answer as a V1Service.
                return 200, current, "application/json"
            return (
                200,
                {"kind": "Status", "apiVersion": "v1", "status": "Success"},
                ("application/json"),
            )
        return _status(405, "MethodNotAllowed", method)

    def _collect(self, uid: str) -> None:
        """Garbage collection: what the deleted object owned goes with it."""
        for store in (self.jobs, self.secrets, self.services, self.pods):
            for key, item in list(store.items()):
                owners = item["metadata"].get("ownerReferences") or []
                if any(owner.get("uid") == uid for owner in owners):
                    del store[key]
                    self._collect(item["metadata"]["uid"])

    def _list_pods(self, namespace: str, query: dict[str, list[str]]) -> tuple[int, Any, str]:
        wanted: dict[str, str] = {}
        for term in (query.get("labelSelector") or [""])[0].split(","):
            if term:
                key, _, value = term.partition("=")
                wanted[key] = value
        items = [
            pod
            for (ns, _), pod in self.pods.items()
            if ns == namespace
            and all(pod["metadata"]["labels"].get(k) == v for k, v in wanted.items())
        ]
        return (
            200,
            {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items},
            ("application/json"),
        )

    def _log(self, namespace: str, name: str, query: dict[str, list[str]]) -> tuple[int, Any, str]:
        pod = self.pods.get((namespace, name))
        if pod is None:
            return _status(404, "NotFound", f'pods "{name}" not found')
        container = (query.get("container") or ["train"])[0]
        if container != "train":
            return _status(400, "BadRequest", f"container {container} is not valid")
        if pod["status"]["phase"] == "Pending":
            message = f'container "train" in pod "{name}" is waiting to start: ContainerCreating'
            return _status(400, "BadRequest", message)
        since = (query.get("sinceTime") or [None])[0]
        if since is not None:
            since = _second(since)  # like the API server: whole seconds, inclusive
        stamps = (query.get("timestamps") or ["false"])[0] == "true"
        out = []
        for stamp, line in self.logs[(namespace, name)]:
            if since is not None and _second(stamp) < since:
                continue
            out.append(f"{stamp} {line}" if stamps else line)
        return 200, "".join(f"{line}\n" for line in out), "text/plain"


def _status(code: int, reason: str, message: str) -> tuple[int, Any, str]:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return code, body, "application/json"


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


@contextmanager
def serve() -> Iterator[FakeKubernetes]:
    """Run a fake on a free port of 127.0.0.1 for the length of the ``with``."""
    fake = FakeKubernetes()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            headers = {key.lower(): value for key, value in self.headers.items()}
            status, payload, kind = fake.handle(
                self.command, parts.path, parse_qs(parts.query), headers, body
            )
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
