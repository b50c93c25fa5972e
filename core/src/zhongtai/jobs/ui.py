"""The jobs pages of the web UI (registered through ``register_panels``, as any plugin's).

- ``/ui/jobs``: the current project's jobs, filtered by status and type, newest
  first, paginated; the table refreshes itself while jobs are unfinished, and a form
  submits a new job.
- ``/ui/jobs/{id}``: parameters, progress, result or error, cancel and retry, and the
  live log (``GET /api/v1/jobs/{id}/logs/stream`` through the session cookie).
- A dashboard card: the project's jobs by status.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from zhongtai.identity.access import NotFound
from zhongtai.ui.core_pages import call_api
from zhongtai.ui.panels import Panel, Redirect, View

__all__ = ["PANELS"]

STATUSES = ("queued", "scheduled", "held", "running", "succeeded", "failed", "cancelled")
UNFINISHED = {"queued", "scheduled", "held", "running"}


def _jobs(view: View) -> Mapping[str, Any]:
    from zhongtai.jobs import api
    from zhongtai.jobs.engine import jobs_engine

    status = view.query.get("status") or None
    errors: dict[str, str] = {}
    if status is not None and status not in STATUSES:
        errors["status"] = f"not a status: {status}"
        status = None
    page, problems = call_api(
        api.list_jobs,
        view,
        project=view.project.id if view.project is not None else None,
        type=view.query.get("type") or None,
        status=status,
        owner=None,
        limit=None,
        cursor=view.query.get("cursor") or None,
    )
    errors.update(problems)
    items = (page or {}).get("items", [])
    return {
        "page": page or {"items": [], "next_cursor": None},
        "errors": errors,
        "status": status or "",
        "type": view.query.get("type") or "",
        "statuses": STATUSES,
        "types": sorted(t.name for t in jobs_engine(view.platform).types),
        "live": any(j["status"] in UNFINISHED for j in items),
    }


def _submit(view: View) -> Redirect | Mapping[str, Any]:
    from zhongtai.jobs import api

    text = str(view.form.get("params") or "").strip() or "{}"
    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        return {"errors": {"params": f"not JSON: {exc.msg}"}, "values": dict(view.form)}
    if not isinstance(params, dict):
        return {"errors": {"params": "give a JSON object"}, "values": dict(view.form)}
    project = view.project.id if view.project is not None else ""
    response, errors = call_api(
        api.submit_job,
        view,
        api.JobIn,
        request=view.request,
        data={"type": view.form.get("type", ""), "project": project, "params": params},
    )
    if errors:
        return {**_jobs(view), "errors": errors, "values": dict(view.form)}
    return Redirect(view.url(f"/ui/jobs/{response.content['id']}"))


def _job(view: View) -> Mapping[str, Any]:
    from zhongtai.jobs import api

    job, errors = call_api(api.get_job, view, job_id=str(view.params.get("job_id", "")))
    if job is None or (view.project is not None and job["project"] != view.project.id):
        raise NotFound("job")
    return {
        "job": job,
        "params": json.dumps(job["params"], indent=2, ensure_ascii=False),
        "result": json.dumps(job["result"], indent=2, ensure_ascii=False)
        if job["result"] is not None
        else "",
        "finished": job["status"] not in UNFINISHED,
        "errors": errors,
    }


def _job_post(view: View) -> Redirect | Mapping[str, Any]:
    from zhongtai.jobs import api

    job_id = str(view.params.get("job_id", ""))
    action = view.form.get("action")
    handler = {"cancel": api.cancel_job, "retry": api.retry_job}.get(str(action))
    if handler is None:
        return {**_job(view), "errors": {"action": "unknown action"}}
    _, errors = call_api(handler, view, job_id=job_id)
    if errors:
        return {**_job(view), "errors": errors}
    return Redirect(view.url(f"/ui/jobs/{job_id}"))


def _by_status(view: View) -> Mapping[str, Any]:
    from sqlalchemy import func, select

    from zhongtai.jobs.models import Job

    if view.project is None:
        return {"counts": {}}
    with view.platform.db.transaction() as session:
        rows = session.execute(
            select(Job.status, func.count())
            .where(Job.project_id == view.project.id)
            .group_by(Job.status)
        ).all()
    counts = dict(rows)
    return {"counts": {s: counts.get(s, 0) for s in STATUSES}}


def _hourly(view: View) -> Mapping[str, Any]:
    """Jobs that finished in each of the last 24 hours, succeeded and failed: a chart."""
    from datetime import timedelta

    from sqlalchemy import func, select

    from zhongtai.hooks.events import utcnow
    from zhongtai.jobs.models import Job

    now = utcnow().replace(minute=0, second=0, microsecond=0)
    start = now - timedelta(hours=23)
    hours = [start + timedelta(hours=i) for i in range(24)]
    series: dict[str, list[int]] = {"succeeded": [0] * 24, "failed": [0] * 24}
    if view.project is not None:
        if view.platform.db.is_embedded:
            bucket = func.strftime("%Y-%m-%d %H", Job.finished_at)
        else:
            bucket = func.to_char(func.date_trunc("hour", Job.finished_at), "YYYY-MM-DD HH24")
        with view.platform.db.transaction() as session:
            rows = session.execute(
                select(bucket, Job.status, func.count())
                .where(
                    Job.project_id == view.project.id,
                    Job.finished_at >= start,
                    Job.status.in_(list(series)),
                )
                .group_by(bucket, Job.status)
            ).all()
        index = {h.strftime("%Y-%m-%d %H"): i for i, h in enumerate(hours)}
        for hour, status, count in rows:
            if hour in index:
                series[status][index[hour]] = count
    return {
        "chart": json.dumps(
            {
                "x": [int(h.timestamp()) for h in hours],
                "series": [
                    {"label": view.gettext("succeeded"), "values": series["succeeded"]},
                    {"label": view.gettext("failed"), "values": series["failed"]},
                ],
            }
        ),
        "total": sum(series["succeeded"]) + sum(series["failed"]),
    }


PANELS = [
    Panel(
        name="jobs",
        title={"en": "Jobs", "zh": "任务"},
        path="/jobs",
        template="jobs.html",
        icon="play",
        order=20,
        permission="jobs.read",
        context=_jobs,
        on_post=_submit,
    ),
    Panel(
        name="job",
        title={"en": "Job", "zh": "任务详情"},
        path="/jobs/{job_id:str}",
        template="job.html",
        icon="play",
        permission="jobs.read",
        context=_job,
        on_post=_job_post,
    ),
    Panel(
        name="jobs-per-hour",
        title={"en": "Finished jobs, last 24 hours", "zh": "最近 24 小时完成的任务"},
        kind="card",
        template="jobs_chart_card.html",
        icon="play",
        order=11,
        permission="jobs.read",
        context=_hourly,
    ),
    Panel(
        name="jobs-by-status",
        title={"en": "Jobs by status", "zh": "任务状态"},
        kind="card",
        template="jobs_card.html",
        icon="play",
        order=10,
        permission="jobs.read",
        context=_by_status,
    ),
]
