"""The data plugin's pages: datasets of the current project, a dataset's versions,
and a version's files (each downloads through the API, with the session cookie)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zhongtai.identity.access import NotFound
from zhongtai.ui import Panel, View
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
    number = view.query.get("version") or (
        str(dataset["latest_version"]) if dataset["latest_version"] else None
    )
    files = None
    if number:
        files, _ = call_api(
            api.list_files,
            view,
            dataset_id=dataset_id,
            ref=number,
            prefix=None,
            limit=None,
            cursor=view.query.get("files") or None,
        )
    return {
        "dataset": dataset,
        "versions": versions or {"items": [], "next_cursor": None},
        "number": number,
        "files": files,
    }


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
    ),
    Panel(
        name="dataset",
        title={"en": "Dataset", "zh": "数据集详情"},
        path="/datasets/{dataset_id:str}",
        template="dataset.html",
        icon="folder",
        permission="data.dataset.read",
        context=_dataset,
    ),
]
