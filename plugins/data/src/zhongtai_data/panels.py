"""The data plugin's pages: datasets of the current project, a dataset's versions,
and a version's files (each downloads through the API, with the session cookie)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zhongtai.identity.access import NotFound
from zhongtai.ui import Panel, Redirect, View
from zhongtai.ui.core_pages import call_api


def _datasets(view: View) -> Mapping[str, Any]:
    from zhongtai_data import api

    page, errors = call_api(
        api.list_datasets,
        view,
        project=view.project.id if view.project is not None else None,
        q=view.query.get("q") or None,
        tag=view.query.get("tag") or None,
        limit=None,
        cursor=view.query.get("cursor") or None,
    )
    return {"page": page or {"items": [], "next_cursor": None}, "errors": errors}


def _dataset(view: View) -> Mapping[str, Any]:
    """A dataset: its versions, the files of one (or of a draft, with the upload
    form), and a diff between two versions."""
    from zhongtai_data import api

    dataset_id = str(view.params.get("dataset_id", ""))
    dataset, _ = call_api(api.get_dataset, view, dataset_id=dataset_id)
    if dataset is None or (view.project is not None and dataset["project"] != view.project.id):
        raise NotFound("dataset")
    versions, _ = call_api(
        api.list_versions,
        view,
        dataset_id=dataset_id,
        status="committed",
        limit=None,
        cursor=view.query.get("cursor") or None,
    )
    drafts, _ = call_api(
        api.list_versions, view, dataset_id=dataset_id, status="draft", limit=None, cursor=None
    )
    draft = view.query.get("draft") or None
    number = view.query.get("version") or (
        str(dataset["latest_version"]) if dataset["latest_version"] and not draft else None
    )
    ref = draft or number
    files = None
    if ref:
        files, _ = call_api(
            api.list_files,
            view,
            dataset_id=dataset_id,
            ref=ref,
            prefix=None,
            limit=None,
            cursor=view.query.get("files") or None,
        )
    diff = None
    against = view.query.get("against")
    if number and against:
        diff, diff_errors = call_api(
            api.diff_versions, view, dataset_id=dataset_id, ref=number, against=against
        )
        if diff is None:
            diff = {"errors": diff_errors}
    return {
        "dataset": dataset,
        "versions": versions or {"items": [], "next_cursor": None},
        "drafts": (drafts or {"items": []})["items"],
        "number": number,
        "draft": draft,
        "files": files,
        "diff": diff,
        "against": against or "",
    }


def _dataset_post(view: View) -> Redirect | Mapping[str, Any]:
    """New draft, commit a draft, or drop a draft."""
    from zhongtai_data import api

    dataset_id = str(view.params.get("dataset_id", ""))
    here = f"/ui/data/datasets/{dataset_id}"
    action = view.form.get("action")
    if action == "new-draft":
        parent = view.form.get("parent") or None
        made, errors = call_api(
            api.create_version,
            view,
            api.VersionIn,
            data={"message": view.form.get("message", ""), "parent": parent},
            dataset_id=dataset_id,
        )
        if errors:
            return {**_dataset(view), "errors": errors}
        return Redirect(view.url(here, draft=made["id"]))
    draft = str(view.form.get("draft", ""))
    if action == "commit":
        done, errors = call_api(
            api.commit_version,
            view,
            api.CommitIn,
            data={"message": view.form.get("message") or None},
            dataset_id=dataset_id,
            ref=draft,
        )
        if errors:
            return {**_dataset(view), "errors": errors}
        return Redirect(view.url(here, version=done["number"]), flash="version committed")
    if action == "drop-draft":
        _, errors = call_api(
            api.delete_version, view, dataset_id=dataset_id, ref=draft, force=False
        )
        if errors:
            return {**_dataset(view), "errors": errors}
        return Redirect(view.url(here))
    return {**_dataset(view), "errors": {"action": "unknown action"}}


def _datasets_post(view: View) -> Redirect | Mapping[str, Any]:
    from zhongtai_data import api

    project = view.project.id if view.project is not None else ""
    tags = [t.strip() for t in str(view.form.get("tags", "")).split(",") if t.strip()]
    made, errors = call_api(
        api.create_dataset,
        view,
        api.DatasetIn,
        data={
            "project": project,
            "name": view.form.get("name", ""),
            "description": view.form.get("description", ""),
            "tags": tags,
        },
    )
    if errors:
        return {**_datasets(view), "errors": errors, "values": dict(view.form)}
    return Redirect(view.url(f"/ui/data/datasets/{made['id']}"))


def _file(view: View) -> Mapping[str, Any]:
    """One file of a version: preview, quality report, where the version came from."""
    from zhongtai.metadata.lineage import get_lineage
    from zhongtai_data import api

    dataset_id = str(view.params.get("dataset_id", ""))
    ref = view.query.get("version") or ""
    path = view.query.get("path") or ""
    dataset, _ = call_api(api.get_dataset, view, dataset_id=dataset_id)
    if dataset is None or not ref or not path:
        raise NotFound("file")
    offset = view.query.get("offset") or "0"
    preview, preview_errors = call_api(
        api.preview_file,
        view,
        dataset_id=dataset_id,
        ref=ref,
        path=path,
        offset=int(offset) if offset.isdigit() else 0,
        limit=None,
    )
    if preview is None and "_" in preview_errors and "no file" in preview_errors["_"]:
        raise NotFound("file")
    quality = None
    if preview is not None and preview.get("kind") == "table":
        quality, _ = call_api(api.get_quality, view, dataset_id=dataset_id, ref=ref, path=path)
    version, _ = call_api(api.get_version, view, dataset_id=dataset_id, ref=ref)
    lineage = None
    if version is not None:
        lineage, _ = call_api(
            get_lineage,
            view,
            kind="data.version",
            entity_id=version["id"],
            direction="both",
            depth=1,
        )
    return {
        "dataset": dataset,
        "version": version,
        "ref": ref,
        "path": path,
        "preview": preview,
        "errors": preview_errors,
        "quality": quality,
        "lineage": lineage,
    }


def _sources(view: View) -> Mapping[str, Any]:
    from zhongtai_data import sources

    page, errors = call_api(
        sources.list_sources,
        view,
        project=view.project.id if view.project is not None else None,
        limit=None,
        cursor=view.query.get("cursor") or None,
    )
    datasets = _datasets(view)["page"]["items"]
    return {
        "page": page or {"items": [], "next_cursor": None},
        "datasets": datasets,
        "errors": errors,
    }


def _sources_post(view: View) -> Redirect | Mapping[str, Any]:
    """Register a source, test one, or queue an import from one."""
    from zhongtai_data import sources

    action = view.form.get("action")
    form = {k: v for k, v in view.form.items() if v not in ("", None) and k != "action"}
    if action == "create":
        data = {"project": view.project.id if view.project is not None else "", **form}
        _, errors = call_api(sources.create_source, view, sources.SourceIn, data=data)
        if errors:
            values = {k: v for k, v in form.items() if "secret" not in k and k != "url"}
            return {**_sources(view), "create_errors": errors, "values": values}
        return Redirect(view.url("/ui/data/sources"), flash="source registered")
    source_id = str(form.pop("source", ""))
    if action == "test":
        result, errors = call_api(sources.test_source, view, source_id=source_id)
        outcome = errors or {}
        return {**_sources(view), "tested": {"id": source_id, **(result or {})}, "errors": outcome}
    if action == "import":
        job, errors = call_api(
            sources.import_source, view, sources.ImportIn, data=form, source_id=source_id
        )
        if errors:
            return {**_sources(view), "import_errors": errors, "import_source": source_id}
        return Redirect(view.url(f"/ui/jobs/{job['job']}"))
    return {**_sources(view), "errors": {"action": "unknown action"}}


PANELS = [
    Panel(
        name="datasets",
        title={"en": "Datasets", "zh": "数据集"},
        path="/datasets",
        template="datasets.html",
        icon="folder",
        order=15,
        permission="data.dataset.read",
        context=_datasets,
        on_post=_datasets_post,
    ),
    Panel(
        name="dataset",
        title={"en": "Dataset", "zh": "数据集详情"},
        path="/datasets/{dataset_id:str}",
        template="dataset.html",
        icon="folder",
        permission="data.dataset.read",
        context=_dataset,
        on_post=_dataset_post,
    ),
    Panel(
        name="sources",
        title={"en": "Data sources", "zh": "数据源"},
        path="/sources",
        template="sources.html",
        icon="list",
        order=16,
        permission="data.dataset.read",
        context=_sources,
        on_post=_sources_post,
    ),
    Panel(
        name="file",
        title={"en": "File", "zh": "文件"},
        path="/datasets/{dataset_id:str}/file",
        template="file.html",
        icon="folder",
        permission="data.dataset.read",
        context=_file,
    ),
]
