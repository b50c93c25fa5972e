"""``train.evaluate`` end to end on the local backend: a scikit-learn model logged
through the platform's ``/mlflow``, a dataset version made with the data plugin's
API, the evaluator run as a subprocess (the platform never unpickles the model), its
metrics stored, served, compared and shown; evaluations after training; the 422s a
bad spec gets and the 404s of another project."""

from __future__ import annotations

import io
import os
import pickle
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

import zhongtai
from zhongtai.testing import (
    ZtIdentity,
    database_server_for_tests,
    serve_in_thread,
    throwaway_postgres,
)

pytestmark = [pytest.mark.zt_plugins("train", "data"), pytest.mark.timeout(300)]

FEATURES = ("a", "b", "c")

TRAIN_PY = r"""
import mlflow
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

rng = np.random.default_rng(1)
x = pd.DataFrame(rng.normal(size=(80, 3)), columns=["a", "b", "c"])
y = (x["a"] + x["b"] > 0).astype(int)
with mlflow.start_run():
    model = LogisticRegression().fit(x, y)
    mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])
print("trained", flush=True)
"""


# --------------------------------------------------------------------------- the platform


class ExtraEvaluators:
    """A plugin that registers one evaluator of its own (``register_evaluators``)."""

    @zhongtai.hookimpl
    def register_evaluators(self) -> list[Any]:
        from zhongtai_train.evaluate import Evaluator

        return [Evaluator("binary", "Binary classifiers, by a plugin", model_type="classifier")]


@dataclass
class Evaluating:
    """The module's platform, a developer's project with a model and a dataset."""

    url: str
    platform: Any
    identity: ZtIdentity
    user: Any = None
    project: Any = None
    key: str = ""
    run_id: str = ""
    version_id: str = ""
    other: dict[str, Any] = field(default_factory=dict)

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}


@contextmanager
def _platform(home: Path) -> Iterator[tuple[str, Any]]:
    from zhongtai.settings import load_settings
    from zhongtai.web.app import create_app
    from zhongtai_train.tracking import tracking

    saved = {
        k: os.environ.pop(k)
        for k in list(os.environ)
        if k.startswith("ZHONGTAI_") and not k.startswith("ZHONGTAI_TEST_")
    }
    server = database_server_for_tests()
    database = (
        nullcontext(f"sqlite:///{home.parent / 'zhongtai.db'}")
        if server is None
        else throwaway_postgres(server)
    )
    try:
        with database as database_url:
            settings = load_settings(
                home=home, database_url=database_url, log_format="text", access_log=False
            )
            app = create_app(
                settings,
                plugins=["train", "data"],
                extra_plugins=[("extraevaluators", ExtraEvaluators())],
                schema="upgrade",
            )
            platform = app.state["platform"]
            try:
                assert platform.plugins.get("train").loaded, platform.plugins.get("train").error
                with serve_in_thread(app) as url:
                    tracking(platform).ensure()
                    yield url, platform
            finally:
                # Stopped here too when a broken change unloaded the plugin (and with
                # it the shutdown hook that stops MLflow's server).
                tracking(platform).stop()
                platform.close()
    finally:
        os.environ.update(saved)


def _csv(rows: int, seed: int) -> bytes:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, 3)), columns=list(FEATURES))
    frame["label"] = (frame["a"] + frame["b"] > 0).astype(int)
    return frame.to_csv(index=False).encode()


def _dataset(url: str, key: str, project: Any, name: str, files: dict[str, bytes]) -> str:
    """A committed version of a new dataset with ``files``; its id."""
    headers = {"Authorization": f"Bearer {key}"}
    api = f"{url}/api/v1/data/datasets"
    made = httpx.post(api, json={"project": project.id, "name": name}, headers=headers)
    assert made.status_code == 201, made.text
    dataset = made.json()["id"]
    draft = httpx.post(f"{api}/{dataset}/versions", json={}, headers=headers)
    assert draft.status_code == 201, draft.text
    ref = draft.json()["id"]
    for path, content in files.items():
        added = httpx.post(
            f"{api}/{dataset}/versions/{ref}/files",
            data={"path": path},
            files={"file": (path.rsplit("/", 1)[-1], io.BytesIO(content), "text/csv")},
            headers=headers,
        )
        assert added.status_code == 201, added.text
    done = httpx.post(f"{api}/{dataset}/versions/{ref}/commit", json={}, headers=headers)
    assert done.status_code == 200, done.text
    return str(done.json()["id"])


def _log_model(url: str, key: str, experiment: str) -> str:
    """A run with a logistic regression logged by the standard client; its id."""
    import mlflow
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(80, 3)), columns=list(FEATURES))
    y = (x["a"] + x["b"] > 0).astype(int)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"{url}/mlflow")
        patch.setenv("MLFLOW_TRACKING_TOKEN", key)
        patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        patch.delenv("MLFLOW_WORKSPACE", raising=False)
        mlflow.set_tracking_uri(f"{url}/mlflow")
        mlflow.set_experiment(experiment)
        with mlflow.start_run() as run:
            # Requirements named: inferring them takes many seconds.
            mlflow.sklearn.log_model(
                LogisticRegression().fit(x, y), name="model", pip_requirements=["scikit-learn"]
            )
        return str(run.info.run_id)


def _other_project_run(url: str, key: str) -> str:
    """A run (no model) in another project, made through the REST API."""
    client = httpx.Client(
        base_url=f"{url}/mlflow/api/2.0/mlflow/", headers={"Authorization": f"Bearer {key}"}
    )
    with client:
        made = client.post("experiments/create", json={"name": "elsewhere"})
        assert made.status_code == 200, made.text
        run = client.post(
            "runs/create", json={"experiment_id": made.json()["experiment_id"], "start_time": 0}
        )
        assert run.status_code == 200, run.text
        return str(run.json()["run"]["info"]["run_id"])


@pytest.fixture(scope="module")
def ev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Evaluating]:
    from zhongtai_train.tracking import settings_of

    with _platform(tmp_path_factory.mktemp("evaluate") / "home") as (url, platform):
        settings = settings_of(platform)
        settings.job_tracking_uri = f"{url}/mlflow"
        settings.allow_file_git = True
        e = Evaluating(url, platform, ZtIdentity(platform))
        e.user, e.project = e.identity.project_with("developer")
        e.key = e.identity.api_key(e.user, project=e.project)
        e.version_id = _dataset(
            url, e.key, e.project, "holdout", {"test.csv": _csv(60, 7), "notes.csv": b"x\n1\n"}
        )
        e.run_id = _log_model(url, e.key, "models")
        other_user, other_project = e.identity.project_with("developer")
        other_key = e.identity.api_key(other_user, project=other_project)
        e.other = {
            "user": other_user,
            "project": other_project,
            "key": other_key,
            "run_id": _other_project_run(url, other_key),
            "version_id": _dataset(url, other_key, other_project, "theirs", {"t.csv": _csv(5, 1)}),
        }
        yield e


def _submit(e: Evaluating, params: dict[str, Any], key: str | None = None) -> httpx.Response:
    return httpx.post(
        f"{e.url}/api/v1/jobs",
        json={"type": "train.evaluate", "project": e.project.id, "params": params},
        headers=e.headers(key),
        timeout=30,
    )


def _params(e: Evaluating, **extra: Any) -> dict[str, Any]:
    return {
        "run_id": e.run_id,
        "dataset_version": e.version_id,
        "file": "test.csv",
        "target": "label",
        **extra,
    }


def _wait(e: Evaluating, job_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{e.url}/api/v1/jobs/{job_id}", headers=e.headers()).json()
        if job["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return job
        time.sleep(0.3)


def _logs(e: Evaluating, job_id: str) -> list[str]:
    body = httpx.get(
        f"{e.url}/api/v1/jobs/{job_id}/logs", params={"limit": 1000}, headers=e.headers()
    ).json()
    return [line["line"] for line in body["items"]]


def _row(e: Evaluating, job_id: str) -> Any:
    from sqlalchemy import select

    from zhongtai_train.evaluation_models import Evaluation

    with e.platform.db.session() as session:
        row = session.scalars(select(Evaluation).where(Evaluation.job_id == job_id)).one()
        session.expunge(row)
        return row


def _evaluate(e: Evaluating, **extra: Any) -> dict[str, Any]:
    answer = _submit(e, _params(e, **extra))
    assert answer.status_code == 201, answer.text
    job = _wait(e, answer.json()["id"])
    assert job["status"] == "succeeded", (job, _logs(e, job["id"]))
    return job


@pytest.fixture(scope="module")
def first(ev: Evaluating) -> dict[str, Any]:
    """An evaluation with the built-in classifier evaluator, while the platform's
    process cannot unpickle anything: the model is only ever loaded elsewhere."""

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the platform's process unpickled something")

    import cloudpickle

    with pytest.MonkeyPatch.context() as patch:
        for module in (pickle, cloudpickle):
            patch.setattr(module, "load", refuse)
            patch.setattr(module, "loads", refuse)
        patch.setattr(pickle, "Unpickler", refuse)
        return _evaluate(ev)


# --------------------------------------------------------------------------- the tests


def test_an_evaluation_runs_in_a_subprocess_and_stores_its_metrics(ev, first):
    job = first
    result = job["result"]
    metrics = result["metrics"]
    assert metrics["accuracy_score"] > 0.8
    assert {"f1_score", "precision_score", "recall_score", "roc_auc"} <= set(metrics)
    assert "confusion_matrix.png" in result["artifacts"]

    # The evaluator's own lines: it ran as a process on the backend, not in here.
    lines = _logs(ev, job["id"])
    assert any(line.startswith("[zhongtai] started on the local backend") for line in lines)
    assert any(line.startswith(f"[evaluator] evaluating runs:/{ev.run_id}/model") for line in lines)
    assert any(line.startswith("[evaluator] metric accuracy_score = ") for line in lines)

    row = _row(ev, job["id"])
    assert row.status == "succeeded" and row.error is None and row.finished_at is not None
    assert row.run_id == ev.run_id and row.eval_run_id == result["eval_run_id"]
    assert row.metrics["accuracy_score"] == pytest.approx(metrics["accuracy_score"])
    assert row.project_id == ev.project.id and row.evaluator == "classifier"

    # Served by the API, with the dataset's name and number.
    item = httpx.get(f"{ev.url}/api/v1/train/evaluations/{row.id}", headers=ev.headers()).json()
    assert item["metrics"] == metrics and item["status"] == "succeeded"
    assert (item["dataset"], item["version"], item["file"]) == ("holdout", 1, "test.csv")
    listed = httpx.get(
        f"{ev.url}/api/v1/train/evaluations",
        params={"project": ev.project.id, "run_id": ev.run_id},
        headers=ev.headers(),
    ).json()
    assert row.id in [i["id"] for i in listed["items"]]

    # Logged to a run of its own, in the evaluated run's experiment, tagged.
    run = httpx.get(
        f"{ev.url}/api/v1/train/runs/{result['eval_run_id']}", headers=ev.headers()
    ).json()
    evaluated = httpx.get(f"{ev.url}/api/v1/train/runs/{ev.run_id}", headers=ev.headers()).json()
    assert run["experiment"] == evaluated["experiment"]
    assert run["name"] == "eval-holdout-1" and run["status"] == "FINISHED"
    assert run["tags"]["zhongtai.evaluates"] == ev.run_id
    assert run["tags"]["zhongtai.evaluation.dataset_version"] == ev.version_id
    assert run["tags"]["zhongtai.job_id"] == job["id"]
    assert run["metrics"]["accuracy_score"]["value"] == pytest.approx(metrics["accuracy_score"])
    chart = httpx.get(
        f"{ev.url}/api/v1/train/runs/{run['id']}/artifacts/download",
        params={"path": "confusion_matrix.png"},
        headers=ev.headers(),
    )
    assert chart.status_code == 200 and chart.content.startswith(b"\x89PNG")

    # The key the evaluator was given is revoked.
    from zhongtai.identity.models import ApiKey
    from zhongtai_train.models import TrainJob

    with ev.platform.db.session() as session:
        key_id = session.get(TrainJob, job["id"]).api_key_id
        assert session.get(ApiKey, key_id).revoked_at is not None


def test_hook_register_evaluators(ev, first):
    listed = httpx.get(f"{ev.url}/api/v1/train/evaluators", headers=ev.headers()).json()
    names = {item["name"]: item for item in listed["items"]}
    assert {"classifier", "regressor", "binary"} <= set(names)
    assert names["binary"]["model_type"] == "classifier"

    # A plugin's evaluator runs, and two evaluations compare metric by metric.
    second = _evaluate(ev, evaluator="binary")
    ids = [_row(ev, first["id"]).id, _row(ev, second["id"]).id]
    compared = httpx.get(
        f"{ev.url}/api/v1/train/evaluations/compare",
        params={"ids": ",".join(ids)},
        headers=ev.headers(),
    ).json()
    assert [item["id"] for item in compared["evaluations"]] == ids
    assert [item["evaluator"] for item in compared["evaluations"]] == ["classifier", "binary"]
    rows = {row["key"]: row["values"] for row in compared["metrics"]}
    assert set(rows) == set(first["result"]["metrics"]) | set(second["result"]["metrics"])
    assert rows["accuracy_score"] == [
        pytest.approx(first["result"]["metrics"]["accuracy_score"]),
        pytest.approx(second["result"]["metrics"]["accuracy_score"]),
    ]


@contextmanager
def _browser(ev: Evaluating, user: Any) -> Iterator[httpx.Client]:
    """An HTTP client signed in to the UI as ``user`` (a session cookie)."""
    with httpx.Client(base_url=ev.url, timeout=60) as client:
        yield _sign_in(client, user)


def _sign_in(client: httpx.Client, user: Any) -> httpx.Client:
    form = client.get("/ui/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token, form.text[:500]
    done = client.post(
        "/ui/login",
        data={
            "email": user.email,
            "password": ZtIdentity.DEFAULT_PASSWORD,
            "csrf_token": token.group(1),
        },
    )
    assert done.status_code == 303, done.text[:500]
    return client


def test_the_pages_show_metrics_charts_and_a_comparison(ev, first):
    row = _row(ev, first["id"])
    with _browser(ev, ev.user) as ui:
        page = ui.get(f"/ui/train/evaluations/{row.id}", params={"project": ev.project.id})
        assert page.status_code == 200, page.text[:500]
        assert 'data-metric="accuracy_score"' in page.text
        src = f"/api/v1/train/runs/{row.eval_run_id}/artifacts/download?path=confusion_matrix.png"
        assert f'<img src="{src}"' in page.text
        image = ui.get(src)  # what the browser fetches, with the session cookie
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")

        listing = ui.get("/ui/train/evaluations", params={"project": ev.project.id})
        assert listing.status_code == 200 and f'data-evaluation="{row.id}"' in listing.text
        compare = ui.get(
            "/ui/train/evaluations/compare", params={"project": ev.project.id, "ids": row.id}
        )
        assert compare.status_code == 200, compare.text[:500]
        assert 'data-metric="f1_score"' in compare.text


def test_a_successful_training_is_evaluated_when_the_setting_asks(ev, tmp_path, git_code):
    from zhongtai_train.tracking import settings_of

    url, commit = git_code(tmp_path, {"train.py": TRAIN_PY})
    settings = settings_of(ev.platform)
    wanted = {"dataset_version": ev.version_id, "file": "test.csv", "target": "label"}
    settings.evaluate_after_training = {"nightly": wanted}
    try:
        answer = httpx.post(
            f"{ev.url}/api/v1/jobs",
            json={
                "type": "train.run",
                "project": ev.project.id,
                "params": {
                    "code": {"kind": "git", "url": url, "commit": commit},
                    "experiment": "nightly",
                },
            },
            headers=ev.headers(),
        )
        assert answer.status_code == 201, answer.text
        train = _wait(ev, answer.json()["id"])
        assert train["status"] == "succeeded", _logs(ev, train["id"])
        deadline = time.monotonic() + 30
        while True:
            found = [
                job
                for job in httpx.get(
                    f"{ev.url}/api/v1/jobs",
                    params={"project": ev.project.id, "type": "train.evaluate"},
                    headers=ev.headers(),
                ).json()["items"]
                if job["parent"] == train["id"]
            ]
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert len(found) == 1, "no evaluation was submitted after the training"
        evaluation = _wait(ev, found[0]["id"])
        assert evaluation["status"] == "succeeded", _logs(ev, evaluation["id"])
        assert evaluation["owner"] == train["owner"] == ev.user.id
        row = _row(ev, evaluation["id"])
        assert row.run_id == train["result"]["run_id"]
        assert row.metrics["accuracy_score"] > 0.8

        # Once per training, whoever asks again.
        from zhongtai_train.evaluate import submit_after_training

        assert submit_after_training(ev.platform, train["id"]) is None
    finally:
        settings.evaluate_after_training = {}


@pytest.mark.parametrize(
    ("change", "field_name"),
    [
        ({"run_id": "other"}, "params.run_id"),
        ({"run_id": "0" * 32}, "params.run_id"),
        ({"run_id": "../x"}, "params.run_id"),
        ({"evaluator": "nonesuch"}, "params.evaluator"),
        ({"file": "missing.csv"}, "params.file"),
        ({"file": "test.txt"}, "params.file"),
        ({"model_path": "../model"}, "params.model_path"),
        ({"model_path": "model/../../x"}, "params.model_path"),
        ({"dataset_version": "other"}, "params.dataset_version"),
        ({"backend": "slurm"}, "params.backend"),
        ({"unknown": 1}, "params.unknown"),
    ],
)
def test_bad_specs_are_refused_naming_the_field(ev, change, field_name):
    given = dict(change)
    if given.get("run_id") == "other":
        given["run_id"] = ev.other["run_id"]
    if given.get("dataset_version") == "other":
        given["dataset_version"] = ev.other["version_id"]
    answer = _submit(ev, _params(ev, **given))
    assert answer.status_code == 422, answer.text
    keys = [item["field"] for item in answer.json()["errors"]]
    assert any(k.startswith(field_name) for k in keys), keys


def test_another_projects_user_cannot_see_an_evaluation(ev, first):
    row = _row(ev, first["id"])
    theirs = ev.headers(ev.other["key"])
    base = f"{ev.url}/api/v1/train/evaluations"
    assert httpx.get(f"{base}/{row.id}").status_code == 401
    assert httpx.get(f"{base}/{row.id}", headers=theirs).status_code == 404
    assert httpx.get(f"{base}/nonesuch", headers=theirs).status_code == 404
    compared = httpx.get(f"{base}/compare", params={"ids": row.id}, headers=theirs)
    assert compared.status_code == 404
    assert httpx.get(base, params={"project": ev.project.id}, headers=theirs).status_code == 404
    listed = httpx.get(base, headers=theirs).json()
    assert row.id not in [item["id"] for item in listed["items"]]
    with _browser(ev, ev.other["user"]) as ui:
        page = ui.get(f"/ui/train/evaluations/{row.id}", params={"project": ev.other["project"].id})
        assert page.status_code == 404


# --------------------------------------------------------------------------- train.run
# Training code from an uploaded archive, reading dataset inputs: both need the data
# plugin, which this module's platform has.

ARCHIVE_TRAIN = """
import os, sys
import mlflow

folder = os.environ["ZT_INPUT_TRAIN"]
names = sorted(os.listdir(folder))
print("input files " + ",".join(names), flush=True)
with open(os.path.join(folder, "test.csv")) as fh:
    rows = sum(1 for _ in fh) - 1
print(f"rows {rows}", flush=True)
print("helper " + open(os.path.join(os.path.dirname(__file__), "lib", "helper.txt")).read().strip())
with mlflow.start_run():
    mlflow.log_metric("rows", rows)
"""


def _tar_gz(files: dict[str, bytes], hostile: bool = False) -> bytes:
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        if hostile:
            info = tarfile.TarInfo("../../escaped.txt")
            info.size = 3
            archive.addfile(info, io.BytesIO(b"bad"))
    return buffer.getvalue()


def _train(e: Evaluating, params: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{e.url}/api/v1/jobs",
        json={"type": "train.run", "project": e.project.id, "params": params},
        headers=e.headers(),
        timeout=30,
    )


def test_code_from_an_uploaded_archive_trains_on_dataset_inputs(ev):
    e = ev
    code = _dataset(
        e.url,
        e.key,
        e.project,
        "code",
        {
            "code.tar.gz": _tar_gz(
                {"train.py": ARCHIVE_TRAIN.encode(), "lib/helper.txt": b"packed\n"}
            )
        },
    )
    params = {
        "code": {"kind": "archive", "dataset_version": code, "path": "code.tar.gz"},
        "inputs": [{"name": "train", "dataset_version": e.version_id}],
        "experiment": "from-archive",
    }
    answer = _train(e, params)
    assert answer.status_code == 201, answer.text
    job = _wait(e, answer.json()["id"])
    lines = _logs(e, job["id"])
    assert job["status"] == "succeeded", lines
    assert "input files notes.csv,test.csv" in lines
    assert "rows 60" in lines and "helper packed" in lines
    run = httpx.get(
        f"{e.url}/api/v1/train/runs/{job['result']['run_id']}", headers=e.headers()
    ).json()
    assert run["metrics"]["rows"]["value"] == 60
    assert run["tags"]["zhongtai.dataset_version"] == e.version_id
    assert run["tags"]["zhongtai.code_archive"] == f"{code}:code.tar.gz"
    # Lineage: the dataset versions → the job → its MLflow run.
    from sqlalchemy import or_, select

    from zhongtai.metadata.lineage import LineageEdge

    run_id = job["result"]["run_id"]
    with e.platform.db.session() as session:
        edges = {
            (edge.source_kind, edge.source_id, edge.relation, edge.target_kind, edge.target_id)
            for edge in session.scalars(
                select(LineageEdge).where(
                    or_(LineageEdge.target_id == job["id"], LineageEdge.source_id == job["id"])
                )
            )
        }
    assert edges == {
        ("data.version", e.version_id, "input", "job", job["id"]),
        ("data.version", code, "code", "job", job["id"]),
        ("job", job["id"], "produced", "train.run", run_id),
    }


def test_a_hostile_code_archive_is_refused_and_nothing_escapes(ev):
    e = ev
    code = _dataset(
        e.url,
        e.key,
        e.project,
        "hostile-code",
        {"code.tar.gz": _tar_gz({"train.py": b"print('hi')\n"}, hostile=True)},
    )
    from zhongtai_train.jobs import jobs_dir

    answer = _train(
        e, {"code": {"kind": "archive", "dataset_version": code, "path": "code.tar.gz"}}
    )
    assert answer.status_code == 201, answer.text
    job = _wait(e, answer.json()["id"])
    assert job["status"] == "failed"
    assert "refused" in job["error"] and "escaped.txt" in job["error"]
    assert not list(jobs_dir(e.platform).parent.rglob("escaped.txt"))


@pytest.mark.parametrize(
    ("code", "field_name"),
    [
        ({"path": "missing.tar.gz"}, "params.code.path"),
        ({"path": "test.csv"}, "params.code.path"),
        ({"path": "../x.tar.gz"}, "params.code"),
        ({"dataset_version": "other"}, "params.code.dataset_version"),
    ],
)
def test_bad_code_archives_are_refused_naming_the_field(ev, code, field_name):
    e = ev
    source = {"kind": "archive", "dataset_version": e.version_id, "path": "code.tar.gz", **code}
    if source["dataset_version"] == "other":
        source["dataset_version"] = e.other["version_id"]
    answer = _train(e, {"code": source})
    assert answer.status_code == 422, answer.text
    fields = [item["field"] for item in answer.json()["errors"]]
    assert any(f.startswith(field_name) for f in fields), fields
