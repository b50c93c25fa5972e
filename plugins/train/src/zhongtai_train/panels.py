"""The train plugin's web UI pages: experiments, an experiment's runs, a run, a comparison.

- ``/ui/train/experiments``: the current project's experiments (or those of every
  project the user can read), searchable, paginated, each with its run count.
- ``/ui/train/experiments/{id}``: its runs (name, status, start, duration, latest
  metrics), filtered by status, name and a metric threshold, with checkboxes to
  compare up to 20 of them.
- ``/ui/train/runs/{id}``: parameters, tags, latest metrics, one chart per metric key
  (``system/…`` keys in their own group), and the run's artifacts.
- ``/ui/train/compare?runs=…``: up to 20 runs side by side, parameters that differ
  highlighted, and one chart per metric key with a curve per run.

Everything is read through the API's own route functions (``call_api``), so the access
rules and the error messages are the API's. The charts' points are not in the page:
``static/train.js`` asks the downsampled metric endpoint for them with the session
cookie, and asks again every few seconds while the run is running.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from zhongtai.identity.access import NotFound
from zhongtai.ui import Panel, View
from zhongtai.ui.core_pages import call_api
from zhongtai_train.permissions import JOB_RUN

__all__ = ["LIVE_STATUSES", "MAX_COMPARE", "PANELS", "SYSTEM_PREFIX"]

#: MLflow logs system metrics (CPU, memory, GPU…) as metrics with this prefix.
SYSTEM_PREFIX = "system/"
#: Statuses of a run that may still log: its page keeps its charts up to date.
LIVE_STATUSES = ("RUNNING", "SCHEDULED")
#: The most runs one comparison shows (the API's own limit).
MAX_COMPARE = 20
#: The most metric columns in an experiment's runs table.
MAX_METRIC_COLUMNS = 8
#: Seconds between two refreshes of a running run's charts.
REFRESH_SECONDS = 3

API = "/api/v1/train"
READ = "train.experiment.read"


def _project_id(view: View) -> str | None:
    return view.project.id if view.project is not None else None


def _in_project(view: View, item: Mapping[str, Any] | None, what: str) -> Mapping[str, Any]:
    """``item`` if it belongs to the current project; anything else is not found, as a
    missing one is (the pages show the project chosen in the switcher)."""
    if item is None or item.get("project") != _project_id(view):
        raise NotFound(what)
    return item


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def duration(started: str | None, ended: str | None, now: datetime | None = None) -> str:
    """``h:mm:ss`` from start to end (to now while the run has no end); "" if unknown."""
    start = _parse_time(started)
    if start is None:
        return ""
    end = _parse_time(ended) or now or datetime.now(tz=UTC)
    seconds = max(0, int((end - start).total_seconds()))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _split_keys(keys: Sequence[str]) -> tuple[list[str], list[str]]:
    """Metric keys as (the run's own, system metrics), each sorted."""
    ordered = sorted(keys)
    return (
        [k for k in ordered if not k.startswith(SYSTEM_PREFIX)],
        [k for k in ordered if k.startswith(SYSTEM_PREFIX)],
    )


def _status_labels(view: View) -> dict[str, str]:
    _ = view.gettext
    return {
        "RUNNING": _("running"),
        "SCHEDULED": _("scheduled"),
        "FINISHED": _("finished"),
        "FAILED": _("failed"),
        "KILLED": _("killed"),
    }


# -- experiments ---------------------------------------------------------------------


def _experiments(view: View) -> Mapping[str, Any]:
    """Experiments of the current project, or with ``scope=all`` of every project the
    user can read; ``q`` searches names."""
    from zhongtai_train import api

    everywhere = view.query.get("scope") == "all"
    q = (view.query.get("q") or "").strip()
    page, errors = call_api(
        api.list_experiments,
        view,
        project=None if everywhere else _project_id(view),
        q=q or None,
        deleted=False,
        limit=None,
        cursor=view.query.get("cursor") or None,
    )
    return {
        "page": page or {"items": [], "next_cursor": None},
        "errors": errors,
        "q": q,
        "scope": "all" if everywhere else "",
        "project_names": {p.id: p.name for p in view.projects},
    }


def _experiment(view: View) -> Mapping[str, Any]:
    """An experiment and its runs, filtered by status, name and one metric threshold."""
    from zhongtai_train import api

    experiment_id = str(view.params.get("experiment_id", ""))
    experiment, _errors = call_api(api.get_experiment, view, experiment_id=experiment_id)
    _in_project(view, experiment, "experiment")
    _ = view.gettext
    errors: dict[str, str] = {}
    status = (view.query.get("status") or "").upper()
    if status and status not in api.STATUSES:
        errors["status"] = _("Not a status: %(status)s") % {"status": status[:20]}
        status = ""
    metric = (view.query.get("metric") or "").strip()
    q = (view.query.get("q") or "").strip()
    page, problems = call_api(
        api.list_runs,
        view,
        project=_project_id(view),
        experiment=experiment_id,
        status=status or None,
        tag=None,
        metric=[metric] if metric else None,
        q=q or None,
        limit=None,
        cursor=view.query.get("cursor") or None,
    )
    errors.update(problems)
    page = page or {"items": [], "next_cursor": None}
    now = datetime.now(tz=UTC)
    runs = [
        {**run, "duration": duration(run["started_at"], run["ended_at"], now)}
        for run in page["items"]
    ]
    own, _system = _split_keys([k for run in runs for k in run["metrics"]])
    columns = list(dict.fromkeys(own))
    return {
        "experiment": experiment,
        "runs": runs,
        "next_cursor": page["next_cursor"],
        "columns": columns[:MAX_METRIC_COLUMNS],
        "errors": errors,
        "filters": {"status": status, "metric": metric, "q": q},
        "statuses": api.STATUSES,
        "labels": _status_labels(view),
        "live": any(run["status"] in LIVE_STATUSES for run in runs),
        "max_compare": MAX_COMPARE,
    }


# -- a run ---------------------------------------------------------------------------


def _crumbs(path: str) -> list[tuple[str, str]]:
    """(name, path) of each folder above and including ``path``."""
    parts = [p for p in path.split("/") if p]
    return [(part, "/".join(parts[: i + 1])) for i, part in enumerate(parts)]


def _artifacts(view: View, run_id: str, path: str) -> tuple[Any, dict[str, str]]:
    """The listing of one folder of the run's artifacts; if MLflow's server does not
    answer, an error in its place (the rest of the page does not need it)."""
    import httpx

    from zhongtai_train import api
    from zhongtai_train.tracking import TrackingUnavailable

    try:
        return call_api(api.list_artifacts, view, run_id=run_id, path=path)
    except (TrackingUnavailable, httpx.HTTPError) as exc:
        message = view.gettext("The artifact store does not answer: %(error)s")
        return None, {"_": message % {"error": str(exc)[:200]}}


def _run(view: View) -> Mapping[str, Any]:
    """A run: facts, parameters, tags, latest metrics, charts and an artifacts folder."""
    from zhongtai_train import api

    run_id = str(view.params.get("run_id", ""))
    run, _errors = call_api(api.get_run, view, run_id=run_id)
    _in_project(view, run, "run")
    experiment, _errors = call_api(api.get_experiment, view, experiment_id=run["experiment"])
    own, system = _split_keys(list(run["metrics"]))
    path = (view.query.get("path") or "").strip("/")
    listing, artifact_errors = _artifacts(view, run_id, path)
    files = sorted(
        (listing or {}).get("files", []), key=lambda f: (not f["is_dir"], f["path"].lower())
    )
    for item in files:
        item["name"] = item["path"].rsplit("/", 1)[-1]
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    with view.platform.db.session() as session:
        can_run = view.access.has(session, JOB_RUN.name, project_id=run["project"])
    return {
        "run": run,
        "can_run": can_run,  # the evaluation form's link
        "experiment": experiment,
        "duration": duration(run["started_at"], run["ended_at"]),
        "params": sorted(run["params"].items()),
        "tags": sorted(run["tags"].items()),
        "source": run["system_tags"].get("mlflow.source.name", ""),
        "own_keys": own,
        "system_keys": system,
        "live": run["status"] in LIVE_STATUSES,
        "labels": _status_labels(view),
        "interval": REFRESH_SECONDS,
        "run_url": f"{API}/runs/{run['id']}",
        "series_url": f"{API}/runs/{run['id']}/metrics/",
        "download_url": f"{API}/runs/{run['id']}/artifacts/download",
        "path": path,
        "parent": parent if path else None,
        "crumbs": _crumbs(path),
        "files": files,
        "artifact_errors": artifact_errors,
    }


# -- comparison ----------------------------------------------------------------------


def _picked(view: View) -> list[str]:
    """The run ids of ``?runs=a&runs=b`` (or ``runs=a,b``), in order, each once."""
    given = view.request.query_params.getall("runs", [])
    ids = [r.strip() for item in given for r in str(item).split(",") if r.strip()]
    return list(dict.fromkeys(ids))


def _compare(view: View) -> Mapping[str, Any]:
    """Up to 20 runs of the current project side by side."""
    from zhongtai_train import api

    _ = view.gettext
    ids = _picked(view)
    empty: dict[str, Any] = {"runs": [], "params": [], "metrics": []}
    if not ids:
        return {"compare": empty, "errors": {}, "picked": 0}
    if len(ids) > MAX_COMPARE:
        message = _("Compare at most %(most)s runs at a time: %(picked)s were picked.") % {
            "most": MAX_COMPARE,
            "picked": len(ids),
        }
        return {"compare": empty, "errors": {"runs": message}, "picked": len(ids)}
    compared, errors = call_api(api.compare_runs, view, runs=ids)
    if compared is None:
        return {"compare": empty, "errors": errors, "picked": len(ids)}
    for run in compared["runs"]:
        _in_project(view, run, "run")
    own, system = _split_keys([m["key"] for m in compared["metrics"]])
    runs = [
        {"id": r["id"], "name": r["name"] or r["id"][:8], "experiment": r["experiment"]}
        for r in compared["runs"]
    ]
    return {
        "compare": compared,
        "errors": {},
        "picked": len(ids),
        "chart_runs": runs,
        "own_keys": own,
        "system_keys": system,
        "labels": _status_labels(view),
        "differing": sum(1 for p in compared["params"] if p["differs"]),
    }


PANELS = [
    Panel(
        name="experiments",
        title={"en": "Experiments", "zh": "实验"},
        path="/experiments",
        template="experiments.html",
        icon="list",
        order=30,
        permission=READ,
        context=_experiments,
    ),
    Panel(
        name="experiment",
        title={"en": "Experiment", "zh": "实验详情"},
        path="/experiments/{experiment_id:str}",
        template="experiment.html",
        icon="list",
        permission=READ,
        context=_experiment,
    ),
    Panel(
        name="run",
        title={"en": "Run", "zh": "运行"},
        path="/runs/{run_id:str}",
        template="run.html",
        icon="play",
        permission=READ,
        context=_run,
    ),
    Panel(
        name="compare",
        title={"en": "Compare runs", "zh": "比较运行"},
        path="/compare",
        template="compare.html",
        icon="list",
        nav=False,
        permission=READ,
        context=_compare,
    ),
]
