"""``/api/v1/train/…``: the platform's view of MLflow's experiments and runs.

Lists read MLflow's store directly (one statement, every project the caller can see,
with the platform's cursor pagination) rather than asking MLflow once per project;
the rows are MLflow's own (its SQLAlchemy models), so nothing is copied or synced.
Artifact listings and downloads go through MLflow's server, like the client's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from litestar import Response, get
from litestar.params import Parameter, PathParameter, QueryParameter
from litestar.response import Stream
from mlflow.store.tracking.dbmodels.models import (
    SqlExperiment,
    SqlExperimentTag,
    SqlLatestMetric,
    SqlParam,
    SqlRun,
    SqlTag,
)
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from zhongtai.identity.access import NotFound
from zhongtai.identity.guard import AccessDep, requires
from zhongtai.web.errors import field_error
from zhongtai.web.pagination import encode_cursor, page_for
from zhongtai.web.params import PlatformDep
from zhongtai_train.permissions import EXPERIMENT_READ
from zhongtai_train.tracking import PREFIX, project_of, tracking, workspace_of

TAGS = ["train"]
STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
MAX_COMPARE = 20
_METRIC_FILTER = re.compile(r"^\s*([\w./ -]{1,250}?)\s*(<=|>=|<|>|=)\s*(-?[0-9.eE+-]+)\s*$")
_OPS = {
    "<": lambda c, v: c < v,
    "<=": lambda c, v: c <= v,
    ">": lambda c, v: c > v,
    ">=": lambda c, v: c >= v,
    "=": lambda c, v: c == v,
}

Ref = Annotated[str, Parameter(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z-]+$")]


def _ms(value: int | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value / 1000, tz=UTC).isoformat()


def _visible_workspaces(platform: Any, access: Any, project: str | None) -> list[str]:
    """The workspaces of the projects the caller may read (one project if named)."""
    with platform.db.session() as session:
        if project is not None:
            try:
                access.require(session, project_id=project, permission=EXPERIMENT_READ)
            except NotFound:
                raise field_error("project", "no such project", 404) from None
            return [workspace_of(project)]
        ids = session.scalars(access.visible_projects(EXPERIMENT_READ)).all()
    return [workspace_of(i) for i in ids]


def _mlflow_session(platform: Any) -> Session:
    return Session(tracking(platform).engine)


def _experiment_dict(row: Any) -> dict[str, Any]:
    return {
        "id": str(row.experiment_id),
        "name": row.name,
        "project": project_of(row.workspace or ""),
        "lifecycle_stage": row.lifecycle_stage,
        "created_at": _ms(row.creation_time),
        "updated_at": _ms(row.last_update_time),
    }


@get("/experiments", tags=TAGS, sync_to_thread=True, opt=requires(EXPERIMENT_READ))
def list_experiments(
    platform: PlatformDep,
    access: AccessDep,
    project: Annotated[str | None, Parameter(max_length=64)] = None,
    q: Annotated[str | None, Parameter(max_length=200)] = None,
    deleted: Annotated[bool, QueryParameter()] = False,
    limit: Annotated[int | None, Parameter(ge=1)] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
) -> dict[str, Any]:
    """Experiments of the caller's projects, newest first; ``q`` searches names."""
    page = page_for(platform.settings, limit, cursor)
    workspaces = _visible_workspaces(platform, access, project)
    query = select(SqlExperiment).where(SqlExperiment.workspace.in_(workspaces))
    query = query.where(SqlExperiment.lifecycle_stage == ("deleted" if deleted else "active"))
    if q:
        query = query.where(func.lower(SqlExperiment.name).contains(q.lower(), autoescape=True))
    if page.after is not None:
        if not page.after.isdigit():
            raise field_error("cursor", "not a cursor returned by this API")
        query = query.where(SqlExperiment.experiment_id < int(page.after))
    query = query.order_by(SqlExperiment.experiment_id.desc()).limit(page.limit + 1)
    with _mlflow_session(platform) as session:
        rows = list(session.scalars(query)) if workspaces else []
        counts = _run_counts(session, [r.experiment_id for r in rows[: page.limit]])
        items = []
        for row in rows[: page.limit]:
            item = _experiment_dict(row)
            item["run_count"] = counts.get(row.experiment_id, 0)
            items.append(item)
    more = len(rows) > page.limit
    return {
        "items": items,
        "next_cursor": encode_cursor(str(rows[page.limit - 1].experiment_id)) if more else None,
    }


def _run_counts(session: Session, ids: Sequence[int]) -> dict[int, int]:
    if not ids:
        return {}
    query: Any = (
        select(SqlRun.experiment_id, func.count())
        .where(SqlRun.experiment_id.in_(ids), SqlRun.lifecycle_stage == "active")
        .group_by(SqlRun.experiment_id)
    )
    return {int(e): int(n) for e, n in session.execute(query)}


def _experiment_of(platform: Any, access: Any, experiment_id: str) -> Any:
    if not experiment_id.isdigit():
        raise NotFound(None)
    with _mlflow_session(platform) as session:
        row = session.get(SqlExperiment, int(experiment_id))
        if row is not None:
            session.expunge(row)
    project = project_of(str(row.workspace or "")) if row is not None else None
    with platform.db.session() as session:
        access.require(session, project_id=project, permission=EXPERIMENT_READ)
    return row


@get(
    "/experiments/{experiment_id:str}",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(EXPERIMENT_READ),
)
def get_experiment(platform: PlatformDep, access: AccessDep, experiment_id: Ref) -> dict[str, Any]:
    row = _experiment_of(platform, access, experiment_id)
    with _mlflow_session(platform) as session:
        tags: Any = session.execute(
            select(SqlExperimentTag.key, SqlExperimentTag.value).where(
                SqlExperimentTag.experiment_id == row.experiment_id
            )
        ).all()
        counts = _run_counts(session, [row.experiment_id])
    item = _experiment_dict(row)
    item["tags"] = {k: v for k, v in tags if not k.startswith("mlflow.")}
    item["run_count"] = counts.get(row.experiment_id, 0)
    return item


# -- runs -------------------------------------------------------------------------------


def _run_dict(row: Any, workspace: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row.run_uuid,
        "name": row.name,
        "experiment": str(row.experiment_id),
        "project": project_of(workspace),
        "status": row.status,
        "user": row.user_id,
        "started_at": _ms(row.start_time),
        "ended_at": _ms(row.end_time),
        "lifecycle_stage": row.lifecycle_stage,
        "metrics": metrics,
    }


def _latest(session: Session, run_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {r: {} for r in run_ids}
    if not run_ids:
        return out
    rows: Any = session.execute(
        select(
            SqlLatestMetric.run_uuid,
            SqlLatestMetric.key,
            SqlLatestMetric.value,
            SqlLatestMetric.is_nan,
            SqlLatestMetric.step,
        ).where(SqlLatestMetric.run_uuid.in_(run_ids))
    )
    for run, key, value, is_nan, step in rows:
        out[run][key] = {"value": None if is_nan else value, "step": step}
    return out


def _parse_tag(tag: str) -> tuple[str, str]:
    key, sep, value = tag.partition("=")
    if not sep or not key.strip():
        raise field_error("tag", "expected key=value")
    return key.strip(), value


def _parse_metric(metric: str) -> tuple[str, str, float]:
    match = _METRIC_FILTER.match(metric)
    if not match:
        raise field_error("metric", "expected <key><op><number>, op one of < <= > >= =")
    try:
        number = float(match.group(3))
    except ValueError:
        raise field_error("metric", "the threshold is not a number") from None
    return match.group(1), match.group(2), number


@get("/runs", tags=TAGS, sync_to_thread=True, opt=requires(EXPERIMENT_READ))
def list_runs(
    platform: PlatformDep,
    access: AccessDep,
    project: Annotated[str | None, Parameter(max_length=64)] = None,
    experiment: Annotated[str | None, Parameter(max_length=32)] = None,
    status: Annotated[str | None, Parameter(max_length=20)] = None,
    tag: Annotated[list[str] | None, Parameter(max_length=20)] = None,
    metric: Annotated[list[str] | None, Parameter(max_length=20)] = None,
    q: Annotated[str | None, Parameter(max_length=200)] = None,
    limit: Annotated[int | None, Parameter(ge=1)] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
) -> dict[str, Any]:
    """Runs of the caller's projects, newest first.

    Filters: ``project``, ``experiment`` (id), ``status`` (RUNNING, FINISHED, …),
    ``tag=key=value`` and ``metric=loss<0.5`` (on the latest value; both repeatable),
    ``q`` in the run name.
    """
    page = page_for(platform.settings, limit, cursor)
    if experiment is not None:
        row = _experiment_of(platform, access, experiment)
        if project is not None and project_of(row.workspace or "") != project:
            raise field_error("experiment", "not an experiment of this project")
        workspaces = [row.workspace]
    else:
        workspaces = _visible_workspaces(platform, access, project)
    query: Any = (
        select(SqlRun, SqlExperiment.workspace)
        .join(SqlExperiment, SqlExperiment.experiment_id == SqlRun.experiment_id)
        .where(SqlExperiment.workspace.in_(workspaces), SqlRun.lifecycle_stage == "active")
    )
    if experiment is not None:
        query = query.where(SqlRun.experiment_id == int(experiment))
    if status is not None:
        if status.upper() not in STATUSES:
            raise field_error("status", f"one of {', '.join(STATUSES)}")
        query = query.where(SqlRun.status == status.upper())
    if q:
        query = query.where(func.lower(SqlRun.name).contains(q.lower(), autoescape=True))
    for item in tag or []:
        key, value = _parse_tag(item)
        query = query.where(
            select(SqlTag.key)
            .where(SqlTag.run_uuid == SqlRun.run_uuid, SqlTag.key == key, SqlTag.value == value)
            .exists()
        )
    for item in metric or []:
        key, op, number = _parse_metric(item)
        query = query.where(
            select(SqlLatestMetric.key)
            .where(
                SqlLatestMetric.run_uuid == SqlRun.run_uuid,
                SqlLatestMetric.key == key,
                SqlLatestMetric.is_nan.is_(False),
                _OPS[op](SqlLatestMetric.value, number),
            )
            .exists()
        )
    if page.after is not None:
        start, _, run_id = page.after.partition(":")
        if not start.lstrip("-").isdigit() or not run_id:
            raise field_error("cursor", "not a cursor returned by this API")
        query = query.where(
            or_(
                SqlRun.start_time < int(start),
                and_(SqlRun.start_time == int(start), SqlRun.run_uuid < run_id),
            )
        )
    query = query.order_by(SqlRun.start_time.desc(), SqlRun.run_uuid.desc()).limit(page.limit + 1)
    with _mlflow_session(platform) as session:
        rows = session.execute(query).all() if workspaces else []
        shown = rows[: page.limit]
        latest = _latest(session, [r[0].run_uuid for r in shown])
        items = [_run_dict(run, ws, latest[run.run_uuid]) for run, ws in shown]
    next_cursor = None
    if len(rows) > page.limit:
        last = shown[-1][0]
        next_cursor = encode_cursor(f"{last.start_time}:{last.run_uuid}")
    return {"items": items, "next_cursor": next_cursor}


def run_of(platform: Any, access: Any, run_id: str) -> tuple[Any, str]:
    """The run row and its workspace, if the caller can read its project (else 404)."""
    if not re.fullmatch(r"[0-9a-f]{32}", run_id):
        raise NotFound(None)
    with _mlflow_session(platform) as session:
        found: Any = session.execute(
            select(SqlRun, SqlExperiment.workspace)
            .join(SqlExperiment, SqlExperiment.experiment_id == SqlRun.experiment_id)
            .where(SqlRun.run_uuid == run_id)
        ).first()
        if found is not None:
            session.expunge(found[0])
    project = project_of(found[1] or "") if found is not None else None
    with platform.db.session() as session:
        access.require(session, project_id=project, permission=EXPERIMENT_READ)
    assert found is not None
    return found[0], found[1]


def _run_detail(session: Session, run: Any, workspace: str) -> dict[str, Any]:
    item = _run_dict(run, workspace, _latest(session, [run.run_uuid])[run.run_uuid])
    item["params"] = dict(
        session.execute(
            select(SqlParam.key, SqlParam.value).where(SqlParam.run_uuid == run.run_uuid)
        ).all()
    )
    tags: dict[str, str] = dict(
        session.execute(
            select(SqlTag.key, SqlTag.value).where(SqlTag.run_uuid == run.run_uuid)
        ).all()
    )
    item["tags"] = {k: v for k, v in tags.items() if not k.startswith("mlflow.")}
    item["system_tags"] = {k: v for k, v in tags.items() if k.startswith("mlflow.")}
    item["artifact_uri"] = run.artifact_uri
    return item


@get("/runs/{run_id:str}", tags=TAGS, sync_to_thread=True, opt=requires(EXPERIMENT_READ))
def get_run(platform: PlatformDep, access: AccessDep, run_id: Ref) -> dict[str, Any]:
    run, workspace = run_of(platform, access, run_id)
    with _mlflow_session(platform) as session:
        return _run_detail(session, run, workspace)


@get("/compare", tags=TAGS, sync_to_thread=True, opt=requires(EXPERIMENT_READ))
def compare_runs(
    platform: PlatformDep,
    access: AccessDep,
    runs: Annotated[list[str], Parameter(min_items=1)],
) -> dict[str, Any]:
    """Up to 20 runs side by side: their parameters (which differ) and latest metrics."""
    ids = [r for item in runs for r in item.split(",") if r]
    if not ids or len(ids) > MAX_COMPARE:
        raise field_error("runs", f"name 1 to {MAX_COMPARE} runs")
    if len(set(ids)) != len(ids):
        raise field_error("runs", "a run is named twice")
    found = [run_of(platform, access, run_id) for run_id in ids]
    with _mlflow_session(platform) as session:
        details = [_run_detail(session, run, ws) for run, ws in found]
    keys = sorted({k for d in details for k in d["params"]})
    params = [
        {
            "key": key,
            "values": [d["params"].get(key) for d in details],
            "differs": len({d["params"].get(key) for d in details}) > 1,
        }
        for key in keys
    ]
    metric_keys = sorted({k for d in details for k in d["metrics"]})
    metrics = [
        {"key": key, "values": [(d["metrics"].get(key) or {}).get("value") for d in details]}
        for key in metric_keys
    ]
    return {"runs": details, "params": params, "metrics": metrics}


@get(
    "/runs/{run_id:str}/metrics/{key:path}",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(EXPERIMENT_READ),
)
def metric_series(
    platform: PlatformDep,
    access: AccessDep,
    run_id: Ref,
    key: Annotated[str, PathParameter(max_length=260)],
    max_points: Annotated[int, Parameter(ge=3, le=100_000)] = 2000,
    method: Annotated[str, Parameter(pattern=r"^(lttb|minmax)$")] = "lttb",
    x: Annotated[str, Parameter(pattern=r"^(step|timestamp)$")] = "step",
) -> dict[str, Any]:
    """One metric of one run, downsampled to ``max_points`` on the server."""
    from zhongtai_train.series import series_for

    key = key.lstrip("/")
    if not key or len(key) > 250:
        raise field_error("key", "a metric key of 1 to 250 characters")
    run, _ = run_of(platform, access, run_id)
    return series_for(
        tracking(platform).engine, run.run_uuid, key, max_points=max_points, method=method, x=x
    )


@get("/runs/{run_id:str}/artifacts", tags=TAGS, sync_to_thread=True, opt=requires(EXPERIMENT_READ))
def list_artifacts(
    platform: PlatformDep,
    access: AccessDep,
    run_id: Ref,
    path: Annotated[str, Parameter(max_length=1000)] = "",
) -> dict[str, Any]:
    """The files and folders of a run's artifacts at ``path``."""
    from zhongtai_train.proxy import unsafe_path

    why = unsafe_path(path) if path else None
    if why:
        raise field_error("path", f"the path {why}")
    run, workspace = run_of(platform, access, run_id)
    project = project_of(workspace)
    assert project is not None
    answer = tracking(platform).call(
        "GET", "artifacts/list", project, params={"run_id": run.run_uuid, "path": path}
    )
    if answer.status_code != 200:
        raise field_error("path", "no such artifact folder", 404)
    files = answer.json().get("files", [])
    return {
        "path": path,
        "files": [
            {"path": f["path"], "is_dir": f.get("is_dir", False), "size": f.get("file_size")}
            for f in files
        ],
    }


@get(
    "/runs/{run_id:str}/artifacts/download",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(EXPERIMENT_READ),
)
def download_artifact(
    platform: PlatformDep,
    access: AccessDep,
    run_id: Ref,
    path: Annotated[str, Parameter(min_length=1, max_length=1000)],
) -> Response[Any]:
    """One artifact file, always as an attachment (never rendered as a page)."""
    from zhongtai_train.proxy import attachment, unsafe_path

    why = unsafe_path(path)
    if why:
        raise field_error("path", f"the path {why}")
    run, workspace = run_of(platform, access, run_id)
    server = tracking(platform)
    client = server.client
    request = client.build_request(
        "GET",
        f"{PREFIX}/get-artifact",
        params={"run_uuid": run.run_uuid, "path": path},
        headers={"X-MLflow-Workspace": workspace},
    )
    answer = client.send(request, stream=True)
    if answer.status_code != 200:
        answer.close()
        raise field_error("path", "no such artifact", 404)

    def chunks() -> Iterator[bytes]:
        try:
            yield from answer.iter_raw()
        finally:
            answer.close()

    headers = {
        "Content-Disposition": attachment(path),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
    }
    if answer.headers.get("content-length"):
        headers["Content-Length"] = answer.headers["content-length"]
    return Stream(chunks(), media_type="application/octet-stream", headers=headers)


ROUTES: list[Any] = [
    list_experiments,
    get_experiment,
    list_runs,
    get_run,
    compare_runs,
    metric_series,
    list_artifacts,
    download_artifact,
]
