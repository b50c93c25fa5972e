"""What the platform learns from the MLflow calls it forwards: events and lineage.

After MLflow has answered a forwarded request successfully:

* a run set to FINISHED, FAILED or KILLED → ``train.run.finished``;
* a model version created → ``model.version.registered``, and the lineage edge
  ``train.run`` -[registered]-> ``model.version`` (``<model name>/<version>``);
* a run that names the dataset versions it used → the edges ``data.version``
  -[trained]-> ``train.run``. A run names them with the tag
  ``zhongtai.dataset_version`` (one or more data version ids, comma separated), set
  at creation, with ``set_tag`` or in ``log_batch``; or with an MLflow dataset input
  (``mlflow.log_input``) whose source names ``zhongtai:data.version:<id>``.

Edges and events carry the run's project. Each is recorded once (edges are
idempotent); a body that is not what MLflow documents is ignored here (MLflow has
already refused it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from typing import TYPE_CHECKING, Any, ClassVar

from zhongtai.hooks.events import Event, emit
from zhongtai.metadata.lineage import EntityRef, record_edge

if TYPE_CHECKING:
    from zhongtai.platform import Platform

log = logging.getLogger("zhongtai.train")

DATASET_TAG = "zhongtai.dataset_version"
RUN_KIND = "train.run"
MODEL_VERSION_KIND = "model.version"
DATA_VERSION_KIND = "data.version"
_FINISHED = frozenset({"FINISHED", "FAILED", "KILLED"})
_VERSION_ID = re.compile(r"^[0-9a-z]{26}$")
_SOURCE_REF = re.compile(r"zhongtai:data\.version:([0-9a-z]{26})")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunFinished(Event):
    """``train.run.finished``: an MLflow run ended (finished, failed or killed)."""

    name: ClassVar[str] = "train.run.finished"
    run_id: str
    status: str
    experiment_id: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelVersionRegistered(Event):
    """``model.version.registered``: a version of a registered model was created."""

    name: ClassVar[str] = "model.version.registered"
    model: str
    version: str
    run_id: str | None = None
    source: str | None = None


def relevant(path: str, body: bytes | None) -> bool:
    """Whether a forwarded request may carry something for :func:`record` (cheap)."""
    if body is None:
        return False
    if path.endswith(("/runs/update", "/model-versions/create", "/runs/log-inputs")):
        return True
    if path.endswith(("/runs/create", "/runs/set-tag", "/runs/log-batch")):
        return DATASET_TAG.encode() in body
    return False


def _dataset_versions_from_tags(tags: Any) -> set[str]:
    found: set[str] = set()
    for tag in tags if isinstance(tags, list) else []:
        if isinstance(tag, dict) and tag.get("key") == DATASET_TAG:
            for part in str(tag.get("value", "")).split(","):
                if _VERSION_ID.match(part.strip()):
                    found.add(part.strip())
    return found


def _dataset_versions_from_inputs(inputs: Any) -> set[str]:
    found: set[str] = set()
    for item in inputs if isinstance(inputs, list) else []:
        dataset = item.get("dataset") if isinstance(item, dict) else None
        if isinstance(dataset, dict):
            text = " ".join(str(dataset.get(k, "")) for k in ("source", "name"))
            found.update(_SOURCE_REF.findall(text))
    return found


def record(platform: Platform, project: str, path: str, body: bytes, answer: bytes | None) -> None:
    """Record the events and lineage of one successful MLflow call (see the module)."""
    try:
        request = json.loads(body or b"{}")
        response = json.loads(answer) if answer else {}
    except ValueError:
        return
    if not isinstance(request, dict) or not isinstance(response, dict):
        return
    run_id = request.get("run_id") or request.get("run_uuid")
    versions: set[str] = set()
    events: list[Event] = []
    edges: list[tuple[EntityRef, EntityRef, str]] = []
    if path.endswith("/runs/update"):
        status = str(request.get("status", "")).upper()
        if run_id and status in _FINISHED:
            info = response.get("run_info") or {}
            events.append(
                RunFinished(
                    project=project,
                    run_id=str(run_id),
                    status=status,
                    experiment_id=str(info.get("experiment_id") or "") or None,
                )
            )
    elif path.endswith("/model-versions/create"):
        made = response.get("model_version") or {}
        name, number = made.get("name"), made.get("version")
        if name and number:
            source_run = made.get("run_id") or request.get("run_id")
            events.append(
                ModelVersionRegistered(
                    project=project,
                    model=str(name),
                    version=str(number),
                    run_id=str(source_run) if source_run else None,
                    source=str(made.get("source") or "") or None,
                )
            )
            if source_run:
                edges.append(
                    (
                        EntityRef(RUN_KIND, str(source_run)),
                        EntityRef(MODEL_VERSION_KIND, f"{name}/{number}"[:128]),
                        "registered",
                    )
                )
    elif path.endswith("/runs/create"):
        run_id = (response.get("run") or {}).get("info", {}).get("run_id")
        versions = _dataset_versions_from_tags(request.get("tags"))
    elif path.endswith("/runs/set-tag"):
        versions = _dataset_versions_from_tags([request])
    elif path.endswith("/runs/log-batch"):
        versions = _dataset_versions_from_tags(request.get("tags"))
    elif path.endswith("/runs/log-inputs"):
        versions = _dataset_versions_from_inputs(request.get("datasets"))
    if run_id:
        edges.extend(
            (EntityRef(DATA_VERSION_KIND, v), EntityRef(RUN_KIND, str(run_id)), "trained")
            for v in sorted(versions)
        )
    if not events and not edges:
        return
    with platform.db.transaction() as session:
        for source, target, relation in edges:
            record_edge(session, source, target, relation, project_id=project)
        for event in events:
            emit(session, event)


def record_quietly(
    platform: Platform, project: str, path: str, body: bytes, answer: bytes | None
) -> None:
    """:func:`record`, logging instead of raising: MLflow has already answered."""
    try:
        record(platform, project, path, body, answer)
    except Exception:
        log.warning("could not record lineage or events of %s", path, exc_info=True)
