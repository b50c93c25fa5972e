"""``/mlflow/…``: MLflow's REST API and artifact proxy behind the platform's auth.

The standard ``mlflow`` client talks to the platform as it would to ``mlflow server``::

    export MLFLOW_TRACKING_URI=http://127.0.0.1:8000/mlflow
    export MLFLOW_TRACKING_TOKEN=zt_...     # a platform API key

Every request is authenticated by the platform (the core's guard: API key, access
token or browser session), then:

1. its path must be one of MLflow's tracking, registry, trace or artifact endpoints
   (:data:`ALLOWED`); MLflow's administration endpoints (workspaces, webhooks, the AI
   gateway and its secrets, server-side jobs) answer 404;
2. paths and ``path`` parameters with ``..``, backslashes, NUL or a leading ``/`` (in
   any of their percent-encodings) are refused before MLflow sees them;
3. the project is resolved (:func:`resolve_project`) and the caller's permission on
   it checked: reads need ``train.experiment.read``, writes ``…write``, deletions
   ``…delete``. A project the caller cannot read answers MLflow's
   ``RESOURCE_DOES_NOT_EXIST``, as if it did not exist;
4. locations the client would choose are checked: an experiment's
   ``artifact_location`` is always assigned by the server, and a model version's
   ``source`` must be the project's own run, logged model or artifact;
5. the request goes to the platform's MLflow server with the project's workspace in
   ``X-MLflow-Workspace`` (whatever the client sent is replaced), so MLflow's own
   stores keep the projects apart: searches, registry listings and artifact paths
   only ever see the one workspace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import aiohttp
import anyio.to_thread
from litestar import Request, Response, route
from litestar.background_tasks import BackgroundTask
from litestar.enums import HttpMethod
from litestar.response import Stream
from sqlalchemy import select
from yarl import URL

from zhongtai.identity.access import Forbidden, NotFound
from zhongtai.identity.guard import NO_AUDIT_SCOPE_KEY, Access, AccessDep, authenticated
from zhongtai.identity.models import Organization, Project
from zhongtai.platform import Platform
from zhongtai.web.params import PlatformDep
from zhongtai_train.events import record_quietly, relevant
from zhongtai_train.permissions import EXPERIMENT_DELETE, EXPERIMENT_READ, EXPERIMENT_WRITE
from zhongtai_train.tracking import (
    PREFIX,
    WORKSPACE_HEADER,
    TrackingServer,
    TrackingUnavailable,
    project_of,
    settings_of,
    tracking,
    workspace_of,
)

log = logging.getLogger("zhongtai.train")

_FAMILIES_V2 = (
    "experiments|runs|metrics|artifacts|registered-models|model-versions|logged-models"
    "|traces|unified-traces|get-online-trace-details|get-trace-artifact|upload-artifact"
)
_FAMILIES_V3 = "traces|datasets|get-trace-artifact|server-info"
ALLOWED = re.compile(
    r"^/(?:"
    rf"(?:api|ajax-api)/2\.0/mlflow/(?:{_FAMILIES_V2})(?:/[^?]*)?"
    rf"|(?:api|ajax-api)/3\.0/mlflow/(?:{_FAMILIES_V3})(?:/[^?]*)?"
    r"|(?:api|ajax-api)/2\.0/mlflow-artifacts/(?:artifacts|mpu|presigned)(?:/[^?]*)?"
    r"|get-artifact|model-versions/get-artifact|health|version"
    r")$"
)
# Proxied artifact paths: ``…/mlflow-artifacts/artifacts/workspaces/<ws>/<exp>/<run>/…``.
_ARTIFACT_PATH = re.compile(
    r"^/(?:api|ajax-api)/2\.0/mlflow-artifacts/(?:artifacts|mpu|presigned)/(.*)$"
)
_READ_POSTS = frozenset(
    {
        "search",
        "get",
        "get-history-bulk-interval",
        "search-datasets",
        "get-online-trace-details",
        "batch-get",
        "search-assessments",
    }
)
# Written to the audit log; the rest (every logged metric, param and artifact) is not.
_AUDITED = re.compile(
    r"/mlflow/(?:experiments/(?:create|delete|restore|update)"
    r"|runs/(?:delete|restore)"
    r"|registered-models/(?:create|delete|rename)"
    r"|model-versions/(?:create|delete|transition-stage))$"
)
_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
        "content-length",
        "server",
        "date",
    }
)
_FORWARDED_REQUEST_HEADERS = frozenset(
    {
        "content-type",
        "content-encoding",
        "accept",
        "accept-encoding",
        "range",
        "if-none-match",
        "if-modified-since",
        "user-agent",
    }
)
# Answers up to this size are read whole and sent in one piece (every JSON answer);
# larger ones, and artifact downloads, are streamed.
_WHOLE = 64 << 20


class MlflowError(Exception):
    """An answer in MLflow's error format (which its client shows to the user)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field

    def response(self) -> Response[bytes]:
        body: dict[str, Any] = {
            "error_code": self.code,
            "message": self.message,
            # Problem details (RFC 9457), for clients other than MLflow's.
            "type": "about:blank",
            "title": self.code.replace("_", " ").lower(),
            "status": self.status,
            "detail": self.message,
        }
        if self.field:
            body["invalid_params"] = [{"name": self.field, "reason": self.message}]
        return Response(
            json.dumps(body).encode(), status_code=self.status, media_type="application/json"
        )


def _not_found(what: str = "resource") -> MlflowError:
    return MlflowError(404, "RESOURCE_DOES_NOT_EXIST", f"{what} does not exist")


# -- input checks ----------------------------------------------------------------------


def _decoded_forms(value: str) -> list[str]:
    forms = [value]
    for _ in range(3):  # %252e%252e -> %2e%2e -> ..
        value = unquote(value)
        if value == forms[-1]:
            break
        forms.append(value)
    return forms


def unsafe_path(value: str, *, absolute_ok: bool = False) -> str | None:
    """Why ``value`` (a path, possibly percent-encoded) is refused, or None."""
    for form in _decoded_forms(value):
        if "\x00" in form:
            return "contains NUL"
        if "\\" in form:
            return "contains a backslash"
        if ".." in form.split("/"):
            return "contains '..'"
        if "//" in form:
            return "has an empty segment"
        if not absolute_ok and form.startswith("/"):
            return "is absolute"
        if re.match(r"^[A-Za-z]:", form):
            return "names a drive"
    return None


def check_paths(path: str, raw_path: str, query: dict[str, list[str]]) -> None:
    for form in (path, raw_path):
        why = unsafe_path(form, absolute_ok=True)
        if why:
            raise MlflowError(400, "INVALID_PARAMETER_VALUE", f"the path {why}", "path")
    for name, values in query.items():
        if name in {"path", "artifact_path", "root_path", "file_path"}:
            for value in values:
                why = unsafe_path(value)
                if why:
                    raise MlflowError(400, "INVALID_PARAMETER_VALUE", f"{name} {why}", name)


# -- which project ---------------------------------------------------------------------


def _project_by_reference(platform: Platform, reference: str) -> str | None:
    """A project id from a workspace name, a project id or ``<org-slug>/<project-slug>``."""
    reference = reference.strip()
    candidate = project_of(reference)
    with platform.db.session() as session:
        if candidate is not None:
            found = session.scalar(select(Project.id).where(Project.id == candidate))
            if found:
                return found
        if "/" in reference:
            org, _, slug = reference.partition("/")
            return session.scalar(
                select(Project.id)
                .join(Organization, Organization.id == Project.org_id)
                .where(Organization.slug == org, Project.slug == slug)
            )
        return session.scalar(select(Project.id).where(Project.id == reference.lower()))


def resolve_project(platform: Platform, access: Access, header: str | None, path: str) -> str:
    """The project a request acts in.

    In order: the ``X-MLflow-Workspace`` header (``MLFLOW_WORKSPACE`` in the client:
    ``<org>/<project>``, a project id or its workspace name); the project of an API
    key scoped to one; the workspace an artifact path names; the caller's only
    project. A caller with several projects and none of these is asked to name one.
    """
    if header and header.strip() and header.strip() != "default":
        project = _project_by_reference(platform, header)
        if project is None:
            raise _not_found(f"workspace {header.strip()!r}")
        return project
    principal = access.principal
    if principal.key_project_id:
        return principal.key_project_id
    artifact = _ARTIFACT_PATH.match(path)
    if artifact:
        parts = artifact.group(1).split("/")
        if len(parts) >= 2 and parts[0] == "workspaces":
            project = project_of(parts[1])
            if project is None:
                raise _not_found("artifact")
            return project
    with platform.db.session() as session:
        visible = list(session.scalars(access.visible_projects(EXPERIMENT_READ).limit(2)))
    if len(visible) == 1:
        return str(visible[0])
    if not visible:
        raise _not_found("project")
    raise MlflowError(
        400,
        "INVALID_PARAMETER_VALUE",
        "you can use several projects: name one with MLFLOW_WORKSPACE=<org>/<project> "
        "(or use an API key scoped to the project)",
        "X-MLflow-Workspace",
    )


def permission_for(method: str, path: str) -> Any:
    last = path.rstrip("/").rsplit("/", 1)[-1]
    if method in {"GET", "HEAD"}:
        return EXPERIMENT_READ
    if method == "POST" and (last in _READ_POSTS or last.startswith(("search", "get-"))):
        return EXPERIMENT_READ
    if last == "delete" or (method == "DELETE" and "mlflow-artifacts" in path):
        return EXPERIMENT_DELETE
    return EXPERIMENT_WRITE


def _authorize(
    platform: Platform, access: Access, header: str | None, path: str, method: str
) -> str:
    project = resolve_project(platform, access, header, path)
    try:
        with platform.db.session() as session:
            access.require(session, project_id=project, permission=permission_for(method, path))
    except NotFound:
        raise _not_found("project") from None
    except Forbidden as exc:
        raise MlflowError(403, "PERMISSION_DENIED", str(exc) or "permission denied") from None
    return project


# -- request bodies that name locations ------------------------------------------------

_SOURCE_RUN = re.compile(r"^runs:/([0-9a-f]{32})(?:/.*)?$")
_SOURCE_MODEL = re.compile(r"^models:/(m-[0-9a-f]{32})/?$")
_SOURCE_ARTIFACT = re.compile(r"^mlflow-artifacts:/workspaces/([a-z0-9-]+)/(.+)$")


def _body_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise MlflowError(400, "MALFORMED_REQUEST", "the body is not JSON") from None
    if not isinstance(data, dict):
        raise MlflowError(400, "MALFORMED_REQUEST", "the body is not a JSON object")
    return data


def check_body(server: TrackingServer, project: str, path: str, body: bytes) -> None:
    """Refuse locations the client chose outside its project's space."""
    if path.endswith("/mlflow/experiments/create"):
        if _body_json(body).get("artifact_location"):
            raise MlflowError(
                400,
                "INVALID_PARAMETER_VALUE",
                "artifact_location is assigned by the server; leave it out",
                "artifact_location",
            )
    elif path.endswith("/mlflow/model-versions/create"):
        data = _body_json(body)
        source = str(data.get("source") or "")
        run_id = data.get("run_id")
        if run_id and not _visible(server, project, "runs/get", {"run_id": run_id}):
            raise MlflowError(404, "RESOURCE_DOES_NOT_EXIST", f"run {run_id} does not exist")
        if not _source_ok(server, project, source):
            raise MlflowError(
                400,
                "INVALID_PARAMETER_VALUE",
                "source must be a run, a logged model or an artifact of this project "
                "(runs:/…, models:/…, mlflow-artifacts:/…)",
                "source",
            )


def _source_ok(server: TrackingServer, project: str, source: str) -> bool:
    if unsafe_path(source.split(":", 1)[-1], absolute_ok=True):
        return False
    if match := _SOURCE_RUN.match(source):
        return _visible(server, project, "runs/get", {"run_id": match.group(1)})
    if match := _SOURCE_MODEL.match(source):
        return _visible(server, project, "logged-models/" + match.group(1), None)
    if match := _SOURCE_ARTIFACT.match(source):
        return match.group(1) == workspace_of(project)
    return False


def _visible(server: TrackingServer, project: str, path: str, params: Any) -> bool:
    answer = server.call("GET", path, project, params=params)
    return answer.status_code == 200


# -- the route -------------------------------------------------------------------------


def _preflight(
    platform: Platform,
    access: Access,
    header: str | None,
    path: str,
    method: str,
    body: bytes | None,
) -> str:
    server = tracking(platform)
    server.ensure()
    project = _authorize(platform, access, header, path, method)
    server.ensure_workspace(project)
    if body is not None and method == "POST":
        check_body(server, project, path, body)
    return project


def _authorization_key(header: str | None, path: str, method: str) -> tuple[Any, ...]:
    artifact = _ARTIFACT_PATH.match(path)
    parts = artifact.group(1).split("/", 2) if artifact else []
    where = parts[1] if len(parts) >= 2 and parts[0] == "workspaces" else None
    return ("mlflow", (header or "").strip(), where, permission_for(method, path).name)


def _remembered_project(
    platform: Platform,
    access: Access,
    header: str | None,
    path: str,
    method: str,
    body: bytes | None,
) -> str | None:
    """The project of an earlier request that asked the same of the same caller.

    Kept in the identity cache (:meth:`Access.remember`), so it is forgotten at the
    next change to users, memberships or keys, in any process. Requests whose body
    names locations are checked every time.
    """
    if method == "POST" and path.endswith(("/experiments/create", "/model-versions/create")):
        return None
    server = tracking(platform)
    project = access.remembered(_authorization_key(header, path, method))
    if project is None or not server.running or workspace_of(project) not in server.workspaces:
        return None
    return str(project)


def _remember_project(
    access: Access, header: str | None, path: str, method: str, project: str
) -> None:
    access.remember(_authorization_key(header, path, method), project)


_SESSIONS: dict[int, tuple[asyncio.AbstractEventLoop, str, aiohttp.ClientSession]] = {}


def _session(server: TrackingServer) -> aiohttp.ClientSession:
    """One client session per event loop and server socket (a session is bound to its loop).

    aiohttp rather than httpx here: on this hot path (every logged metric) it costs
    about half a millisecond less per request. Bodies pass through as they are
    (no decompression, no added ``Accept-Encoding``).
    """
    loop = asyncio.get_running_loop()
    socket = str(server.socket)
    held = _SESSIONS.get(id(server))
    if held is not None and held[0] is loop and held[1] == socket and not held[2].closed:
        return held[2]
    session = aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=socket, limit=64),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300),
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
    )
    _SESSIONS[id(server)] = (loop, socket, session)
    return session


async def close_session(server: TrackingServer) -> None:
    """Close the client session of ``server`` if it belongs to this event loop."""
    held = _SESSIONS.get(id(server))
    if held is not None and held[0] is asyncio.get_running_loop():
        del _SESSIONS[id(server)]
        await held[2].close()


@route(
    ["/", "/{path:path}"],
    http_method=[
        HttpMethod.GET,
        HttpMethod.HEAD,
        HttpMethod.POST,
        HttpMethod.PUT,
        HttpMethod.PATCH,
        HttpMethod.DELETE,
    ],
    opt=authenticated(),
    request_max_body_size=None,
    include_in_schema=False,
)
async def mlflow_proxy(
    request: Request[Any, Any, Any], platform: PlatformDep, access: AccessDep
) -> Response[Any]:
    method = request.method.upper()
    full = request.url.path
    path = full[len(PREFIX) :] or "/"
    if path in {"/", ""} and method in {"GET", "HEAD"}:
        # MLflow's own web UI is not served (docs/train.md says why): its pages are
        # the platform's experiments pages.
        return Response(b"", status_code=302, headers={"Location": "/ui/train/experiments"})
    try:
        if not ALLOWED.match(path):
            raise MlflowError(
                404, "ENDPOINT_NOT_FOUND", f"{method} {full} is not served by zhongtai"
            )
        raw = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
        check_paths(path, raw, {k: request.query_params.getall(k) for k in request.query_params})
        limit = _max_size(platform)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise MlflowError(413, "INVALID_PARAMETER_VALUE", "the request body is too large")
        streamed = method == "PUT" and _ARTIFACT_PATH.match(path) is not None
        if streamed and not (declared and declared.isdigit()):
            raise MlflowError(
                411, "INVALID_PARAMETER_VALUE", "an upload needs Content-Length", "Content-Length"
            )
        body = None if streamed else await request.body()
        header = request.headers.get(WORKSPACE_HEADER)
        project = _remembered_project(platform, access, header, path, method, body)
        if project is None:
            project = await anyio.to_thread.run_sync(
                _preflight, platform, access, header, path, method, body
            )
            _remember_project(access, header, path, method, project)
    except MlflowError as exc:
        return exc.response()
    except TrackingUnavailable as exc:
        log.error("MLflow tracking server unavailable: %s", exc)
        return MlflowError(503, "TEMPORARILY_UNAVAILABLE", "tracking is unavailable").response()

    if _AUDITED.search(path):
        access.audit(action="train.mlflow." + path.rsplit("/mlflow/", 1)[-1].replace("/", "."))
        access.audit(project_id=project, target_kind="project", target_id=project)
    else:
        request.scope[NO_AUDIT_SCOPE_KEY] = True  # type: ignore[literal-required]

    server = tracking(platform)
    headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED_REQUEST_HEADERS}
    headers[WORKSPACE_HEADER] = workspace_of(project)
    if body is None and declared and declared.isdigit():
        # MLflow (Flask under WSGI) reads no chunked body: the length must be known.
        headers["content-length"] = declared
    content: Any = body if body is not None else _limited(request.stream(), limit)
    raw_query = request.scope.get("query_string", b"").decode("latin-1")
    target = URL(f"http://localhost{raw}{'?' + raw_query if raw_query else ''}", encoded=True)
    try:
        answer = await _session(server).request(
            method, target, data=content, headers=headers, allow_redirects=False
        )
    except _TooLarge:
        return MlflowError(
            413, "INVALID_PARAMETER_VALUE", "the request body is too large"
        ).response()
    except (aiohttp.ClientError, OSError) as exc:
        log.error("MLflow tracking server did not answer: %s", exc)
        return MlflowError(503, "TEMPORARILY_UNAVAILABLE", "tracking is unavailable").response()
    out_headers = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_HEADERS}
    if _is_download(path, method):
        # Artifacts are the users' files: never rendered by the browser as our page.
        out_headers["content-disposition"] = _attachment(path, out_headers)
        out_headers["x-content-type-options"] = "nosniff"
        out_headers["content-security-policy"] = "sandbox"
    size = answer.headers.get("content-length")
    whole = size is not None and size.isdigit() and int(size) <= _WHOLE
    media_type = answer.headers.get("content-type")
    if method == "HEAD" or (whole and not _is_download(path, method)):
        # Raw bytes: the body keeps the content-encoding MLflow gave it.
        try:
            data = await answer.read()
        finally:
            answer.release()
        after = None
        if answer.status == 200 and relevant(path, body) and body is not None:
            encoded = answer.headers.get("content-encoding") not in (None, "identity")
            after = BackgroundTask(
                anyio.to_thread.run_sync,
                record_quietly,
                platform,
                project,
                path,
                body,
                None if encoded else data,
            )
        return Response(
            data if method != "HEAD" else b"",
            status_code=answer.status,
            headers=out_headers,
            media_type=media_type,
            background=after,
        )
    return Stream(
        answer.content.iter_chunked(1 << 16),
        status_code=answer.status,
        headers=out_headers,
        media_type=media_type,
        background=BackgroundTask(_release, answer),
    )


async def _release(answer: aiohttp.ClientResponse) -> None:
    answer.release()


class _TooLarge(Exception):
    pass


async def _limited(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > limit:
            raise _TooLarge
        yield chunk


def _max_size(platform: Platform) -> int:
    return settings_of(platform).max_artifact_size


def _is_download(path: str, method: str) -> bool:
    if method not in {"GET", "HEAD"}:
        return False
    if path in {"/get-artifact", "/model-versions/get-artifact"}:
        return True
    match = _ARTIFACT_PATH.match(path)
    return match is not None and path.split("/")[4] == "artifacts"


def attachment(path: str) -> str:
    """``Content-Disposition`` that downloads the file at ``path`` under its own name."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", path.rstrip("/").rsplit("/", 1)[-1])[:200]
    return f'attachment; filename="{name or "artifact"}"'


def _attachment(path: str, headers: dict[str, str]) -> str:
    existing = headers.get("content-disposition", "")
    return existing if existing.startswith("attachment") else attachment(path)


PROXY_ROUTES = [mlflow_proxy]
