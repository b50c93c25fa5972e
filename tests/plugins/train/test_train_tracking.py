"""The standard ``mlflow`` client against the platform: tracking, registry, artifacts.

Every test drives MLflow's own client (the library data scientists use) against a
running platform whose ``/mlflow`` forwards to a real MLflow server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException, RestException

pytestmark = pytest.mark.zt_plugins("train")


def _client(tracked: Any, monkeypatch: pytest.MonkeyPatch, key: str, ws: str | None = None):
    tracked.use(monkeypatch, key, ws)
    return MlflowClient(tracking_uri=tracked.tracking_uri)


def _code(exc: BaseException) -> str:
    assert isinstance(exc, MlflowException), exc
    return exc.error_code


def test_a_training_script_logs_through_the_platform_with_a_key(tracked, tmp_path):
    """The issue's script, unchanged: only ``mlflow`` calls and two environment variables."""
    identity = tracked.identity
    user, project = identity.project_with("developer")
    key = identity.api_key(user, project=project)
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            import mlflow, mlflow.pyfunc, pathlib

            class Double(mlflow.pyfunc.PythonModel):
                def predict(self, context, model_input):
                    return model_input * 2

            mlflow.set_experiment("mnist")
            with mlflow.start_run(run_name="baseline") as run:
                mlflow.log_param("lr", 0.1)
                for step in range(20):
                    mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
                notes = pathlib.Path("notes.txt")
                notes.write_text("hello artifacts")
                mlflow.log_artifact(str(notes))
                info = mlflow.pyfunc.log_model(name="model", python_model=Double())
            version = mlflow.register_model(info.model_uri, "doubler")
            print("RUN", run.info.run_id, "VERSION", version.version)
            """
        )
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        "MLFLOW_TRACKING_URI": tracked.tracking_uri,
        "MLFLOW_TRACKING_TOKEN": key,
    }
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    words = done.stdout.split()
    run_id, version = words[words.index("RUN") + 1], words[words.index("VERSION") + 1]
    assert version == "1"

    client = MlflowClient(tracking_uri=tracked.tracking_uri)
    os.environ["MLFLOW_TRACKING_TOKEN"] = key
    try:
        run = client.get_run(run_id)
        assert run.data.params == {"lr": "0.1"}
        history = client.get_metric_history(run_id, "loss")
        assert [m.step for m in history] == list(range(20))
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/workspaces/p")
        names = {a.path for a in client.list_artifacts(run_id)}
        assert "notes.txt" in names
        local = client.download_artifacts(run_id, "notes.txt", str(tmp_path / "down"))
        assert Path(local).read_text() == "hello artifacts"
        registered = client.get_registered_model("doubler")
        assert registered.latest_versions[0].run_id == run_id
    finally:
        del os.environ["MLFLOW_TRACKING_TOKEN"]
    # The files are under the project's own workspace folder of the artifact store.
    home = tracked.platform.settings.home
    if tracked.platform.settings.storage.driver == "local":
        stored = list((home / "train" / "artifacts").rglob("notes.txt"))
        assert stored and all(f"p{project.id.lower()}" in str(p) for p in stored)


def test_another_projects_objects_do_not_exist(tracked, monkeypatch, tmp_path):
    identity = tracked.identity
    alice, project_a = identity.project_with("maintainer")  # may delete in her project
    bob, project_b = identity.project_with("owner")
    key_a = identity.api_key(alice, project=project_a)
    key_b = identity.api_key(bob, project=project_b)

    client_b = _client(tracked, monkeypatch, key_b)
    exp_b = client_b.create_experiment("secret-b")
    run_b = client_b.create_run(exp_b, run_name="b-run").info.run_id
    client_b.log_metric(run_b, "acc", 0.9)
    (tmp_path / "w.txt").write_text("weights of b")
    client_b.log_artifact(run_b, str(tmp_path / "w.txt"))
    client_b.create_registered_model("model-b")
    client_b.set_terminated(run_b)

    client_a = _client(tracked, monkeypatch, key_a)
    exp_a = client_a.create_experiment("mine-a")
    client_a.create_run(exp_a)
    client_a.create_registered_model("model-a")

    attempts = {
        "get_run": lambda: client_a.get_run(run_b),
        "get_experiment": lambda: client_a.get_experiment(exp_b),
        "log_metric": lambda: client_a.log_metric(run_b, "acc", 0.1),
        "set_tag": lambda: client_a.set_tag(run_b, "x", "y"),
        "delete_run": lambda: client_a.delete_run(run_b),
        "get_metric_history": lambda: client_a.get_metric_history(run_b, "acc"),
        "get_registered_model": lambda: client_a.get_registered_model("model-b"),
        "list_artifacts": lambda: client_a.list_artifacts(run_b),
    }
    for name, attempt in attempts.items():
        with pytest.raises(MlflowException) as caught:
            attempt()
            pytest.fail(f"{name} reached project B")
        assert _code(caught.value) == "RESOURCE_DOES_NOT_EXIST", (name, caught.value)
    with pytest.raises(MlflowException):
        client_a.download_artifacts(run_b, "w.txt", str(tmp_path / "stolen"))
        pytest.fail("download_artifacts reached project B")
    assert not (tmp_path / "stolen" / "w.txt").exists()
    with pytest.raises(MlflowException) as caught:
        client_a.create_model_version("model-a", f"runs:/{run_b}/w.txt", run_id=run_b)
        pytest.fail("create_model_version reached project B")
    assert _code(caught.value) == "RESOURCE_DOES_NOT_EXIST"

    names = {e.name for e in client_a.search_experiments()}
    assert "mine-a" in names and "secret-b" not in names
    runs = client_a.search_runs([exp_a])
    assert all(r.info.run_id != run_b for r in runs)
    assert client_a.search_runs([exp_b]) == []  # as for an experiment id that is not there
    models = {m.name for m in client_a.search_registered_models()}
    assert models == {"model-a"}

    # Bob's own view is untouched by Alice's attempts.
    client_b = _client(tracked, monkeypatch, key_b)
    assert client_b.get_run(run_b).info.lifecycle_stage == "active"
    assert client_b.get_run(run_b).data.metrics == {"acc": 0.9}


def test_a_user_of_several_projects_names_one(tracked, monkeypatch):
    identity = tracked.identity
    user, project_a = identity.project_with("developer")
    org_b = identity.org()
    project_b = identity.project(org_b, slug="vision")
    identity.member(user, project_b, "developer")
    key = identity.api_key(user)  # not scoped to a project

    client = _client(tracked, monkeypatch, key)
    with pytest.raises(MlflowException) as caught:
        client.search_experiments()
    assert "MLFLOW_WORKSPACE" in str(caught.value)

    client = _client(tracked, monkeypatch, key, f"{org_b.slug}/vision")
    exp = client.create_experiment("in-b")
    client = _client(tracked, monkeypatch, key, project_a.id)
    assert "in-b" not in {e.name for e in client.search_experiments()}
    client = _client(tracked, monkeypatch, key, f"p{project_b.id.lower()}")
    assert client.get_experiment(exp).name == "in-b"

    stranger_org = identity.org()
    stranger = identity.project(stranger_org, slug="hidden")
    client = _client(tracked, monkeypatch, key, f"{stranger_org.slug}/hidden")
    with pytest.raises(MlflowException) as caught:
        client.search_experiments()
    assert _code(caught.value) == "RESOURCE_DOES_NOT_EXIST"
    assert stranger.id not in str(caught.value)


def test_roles_limit_what_a_member_may_do(tracked, monkeypatch):
    identity = tracked.identity
    owner, project = identity.project_with("owner")
    viewer = identity.user()
    identity.member(viewer, project, "viewer")
    client = _client(tracked, monkeypatch, identity.api_key(owner, project=project))
    exp = client.create_experiment("roles")
    run = client.create_run(exp).info.run_id

    client = _client(tracked, monkeypatch, identity.api_key(viewer, project=project))
    assert client.get_run(run).info.run_id == run
    with pytest.raises(MlflowException) as caught:
        client.log_metric(run, "loss", 1.0)
    assert _code(caught.value) == "PERMISSION_DENIED"
    with pytest.raises(MlflowException):
        client.create_experiment("not-allowed")


@pytest.mark.parametrize(
    "location",
    [
        "file:///etc/",
        "http:///#/../../etc/",
        "http://169.254.169.254/latest/meta-data/",
        "s3://other-bucket/x",
        "mlflow-artifacts:/workspaces/pother/1",
    ],
)
def test_client_chosen_artifact_locations_are_refused(tracked, monkeypatch, location):
    identity = tracked.identity
    user, project = identity.project_with("developer")
    client = _client(tracked, monkeypatch, identity.api_key(user, project=project))
    with pytest.raises(MlflowException) as caught:
        client.create_experiment(f"loc-{abs(hash(location))}", artifact_location=location)
    assert _code(caught.value) == "INVALID_PARAMETER_VALUE"
    assert "artifact_location" in str(caught.value)
    names = {e.name for e in client.search_experiments()}
    assert not any(name.startswith("loc-") for name in names)


@pytest.mark.parametrize(
    "source",
    [
        "file:///etc/passwd",
        "/etc/passwd",
        "http://169.254.169.254/latest/meta-data/",
        "s3://other-bucket/model",
        "mlflow-artifacts:/workspaces/pzzzzzzzzzzzzzzzzzzzzzzzzzz/1/model",
        "mlflow-artifacts:/workspaces/{ws}/../../etc",
    ],
)
def test_model_sources_outside_the_project_are_refused(tracked, monkeypatch, source):
    identity = tracked.identity
    user, project = identity.project_with("developer")
    client = _client(tracked, monkeypatch, identity.api_key(user, project=project))
    client.create_registered_model("guarded")
    with pytest.raises(MlflowException) as caught:
        client.create_model_version("guarded", source.format(ws=f"p{project.id.lower()}"))
    assert _code(caught.value) == "INVALID_PARAMETER_VALUE"
    assert client.search_model_versions("name='guarded'") == []


@pytest.mark.parametrize(
    "path",
    [
        "../../../../etc/passwd",
        "..%2f..%2fetc%2fpasswd",
        "%252e%252e%252f%252e%252e%252fetc%252fpasswd",
        "..\\..\\etc\\passwd",
        "/etc/passwd",
    ],
)
def test_artifact_paths_never_escape(tracked, monkeypatch, path):
    identity = tracked.identity
    user, project = identity.project_with("developer")
    key = identity.api_key(user, project=project)
    client = _client(tracked, monkeypatch, key)
    exp = client.create_experiment(f"paths-{abs(hash(path))}")
    run = client.create_run(exp).info
    headers = {"Authorization": f"Bearer {key}"}
    ws_root = run.artifact_uri.removeprefix("mlflow-artifacts:/")
    attempts = [
        f"/mlflow/get-artifact?run_uuid={run.run_id}&path={path}",
        f"/mlflow/api/2.0/mlflow/artifacts/list?run_id={run.run_id}&path={path}",
        f"/mlflow/api/2.0/mlflow-artifacts/artifacts/{ws_root}/{path}",
        f"/mlflow/api/2.0/mlflow-artifacts/artifacts?path={ws_root}/{path}",
    ]
    for url in attempts:
        answer = httpx.get(tracked.url + url, headers=headers)
        assert answer.status_code in {400, 404}, (url, answer.status_code, answer.text[:200])
        assert "root:" not in answer.text
    with pytest.raises((MlflowException, RestException, OSError)):
        client.download_artifacts(run.run_id, path, "/tmp")


def test_no_token_or_a_revoked_one_is_401_everywhere(tracked, monkeypatch):
    from zhongtai.identity.apikeys import revoke_api_key

    identity = tracked.identity
    user, project = identity.project_with("developer")
    key = identity.api_key(user, project=project)
    paths = [
        "/mlflow/api/2.0/mlflow/experiments/search",
        "/mlflow/api/2.0/mlflow-artifacts/artifacts/workspaces/px/1/a.txt",
        "/mlflow/get-artifact?run_uuid=0&path=a",
        "/mlflow/",
        "/mlflow/health",
    ]
    for path in paths:
        assert httpx.get(tracked.url + path).status_code == 401, path
    with tracked.platform.db.transaction() as session:
        from sqlalchemy import select

        from zhongtai.identity.models import ApiKey

        row = session.scalars(select(ApiKey).where(ApiKey.user_id == user.id)).one()
        revoke_api_key(session, row.id)
    for path in paths:
        answer = httpx.get(tracked.url + path, headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 401, path


def test_mlflow_administration_is_not_reachable(tracked):
    identity = tracked.identity
    user, project = identity.project_with("owner")
    headers = identity.headers(identity.api_key(user, project=project))
    for method, path in [
        ("GET", "/mlflow/api/3.0/mlflow/workspaces"),
        ("POST", "/mlflow/api/3.0/mlflow/workspaces"),
        ("POST", "/mlflow/api/2.0/mlflow/webhooks/create"),
        ("GET", "/mlflow/api/3.0/mlflow/gateway/secrets/list"),
        ("POST", "/mlflow/graphql"),
    ]:
        answer = httpx.request(method, tracked.url + path, headers=headers, json={})
        assert answer.status_code == 404, (path, answer.text)
        assert answer.json()["error_code"] == "ENDPOINT_NOT_FOUND"


def test_the_clients_own_workspace_header_is_replaced(tracked):
    identity = tracked.identity
    alice, project_a = identity.project_with("developer")
    bob, project_b = identity.project_with("developer")
    key_b = identity.api_key(bob, project=project_b)
    httpx.post(
        tracked.url + "/mlflow/api/2.0/mlflow/experiments/create",
        headers={"Authorization": f"Bearer {key_b}"},
        json={"name": "hidden-b"},
    ).raise_for_status()
    key_a = identity.api_key(alice, project=project_a)
    answer = httpx.post(
        tracked.url + "/mlflow/api/2.0/mlflow/experiments/search",
        headers={"Authorization": f"Bearer {key_a}", "X-MLflow-Workspace": project_b.id},
        json={"max_results": 100},
    )
    assert answer.status_code == 404 and "hidden-b" not in answer.text


def test_runs_record_their_data_and_models_as_lineage_and_events(tracked, monkeypatch):
    import time

    import mlflow
    from sqlalchemy import select

    from zhongtai.metadata.ids import new_id
    from zhongtai.metadata.lineage import LineageEdge

    identity = tracked.identity
    user, project = identity.project_with("developer")
    client = _client(tracked, monkeypatch, identity.api_key(user, project=project))
    train_version, test_version, input_version = new_id(), new_id(), new_id()
    exp = client.create_experiment("lineage")
    run = client.create_run(exp, tags={"zhongtai.dataset_version": train_version}).info.run_id
    client.set_tag(run, "zhongtai.dataset_version", f"{train_version},{test_version}")
    dataset = mlflow.data.meta_dataset.MetaDataset(
        source=mlflow.data.http_dataset_source.HTTPDatasetSource(
            f"https://zt.example/zhongtai:data.version:{input_version}"
        ),
        name="inputs",
    )
    client.log_inputs(run, [mlflow.entities.DatasetInput(dataset._to_mlflow_entity())])
    client.set_terminated(run, "FAILED")
    client.create_registered_model("lineage-model")
    client.create_model_version("lineage-model", f"runs:/{run}/model", run_id=run)

    def edges() -> set[tuple[str, str, str, str]]:
        with tracked.platform.db.session() as session:
            rows = session.scalars(select(LineageEdge).where(LineageEdge.project_id == project.id))
            return {(e.source_kind, e.source_id, e.relation, e.target_id) for e in rows}

    wanted = {
        ("data.version", train_version, "trained", run),
        ("data.version", test_version, "trained", run),
        ("data.version", input_version, "trained", run),
        ("train.run", run, "registered", "lineage-model/1"),
    }
    deadline = time.monotonic() + 10
    while not wanted <= edges() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert edges() == wanted
    names = [
        (e.name, getattr(e, "run_id", None)) for e in tracked.events if e.project == project.id
    ]
    assert ("train.run.finished", run) in names
    assert ("model.version.registered", run) in names
    finished = next(e for e in tracked.events if e.name == "train.run.finished" and e.run_id == run)
    assert finished.status == "FAILED" and finished.experiment_id == exp


class _Trap:
    """Unpickling this writes a file: proof that something loaded it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).write_text, ("unpickled",))


def test_a_pickled_model_is_stored_and_served_never_unpickled(tracked, monkeypatch, tmp_path):
    import pickle

    identity = tracked.identity
    user, project = identity.project_with("developer")
    key = identity.api_key(user, project=project)
    client = _client(tracked, monkeypatch, key)
    marker = tmp_path / "was-unpickled"
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.pkl").write_bytes(pickle.dumps(_Trap(str(marker))))
    (tmp_path / "model" / "MLmodel").write_text(
        "flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n"
        "    model_path: model.pkl\n  sklearn:\n    pickled_model: model.pkl\n"
        "    serialization_format: pickle\n"
    )
    exp = client.create_experiment("pickles")
    run = client.create_run(exp).info.run_id
    client.log_artifacts(run, str(tmp_path / "model"), "model")
    client.create_registered_model("trap")
    version = client.create_model_version("trap", f"runs:/{run}/model", run_id=run)
    assert version.version == "1"
    headers = {"Authorization": f"Bearer {identity.token(user)}"}
    base = f"{tracked.url}/api/v1/train/runs/{run}"
    listing = httpx.get(f"{base}/artifacts", params={"path": "model"}, headers=headers).json()
    assert {f["path"] for f in listing["files"]} == {"model/MLmodel", "model/model.pkl"}
    got = httpx.get(
        f"{base}/artifacts/download", params={"path": "model/model.pkl"}, headers=headers
    )
    assert got.content == (tmp_path / "model" / "model.pkl").read_bytes()
    assert got.headers["content-disposition"] == 'attachment; filename="model.pkl"'
    assert got.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(f"{base}", headers=headers).status_code == 200
    assert client.get_model_version("trap", "1").source
    assert not marker.exists()


def _command_lines() -> list[str]:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue  # gone meanwhile
    return lines


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_the_mlflow_server_serves_mlflows_app_through_ours(tracked):
    from zhongtai_train.tracking import tracking

    socket = str(tracking(tracked.platform).socket)
    ours = [line for line in _command_lines() if socket in line]
    assert any("--app-name zhongtai" in line for line in ours), ours
    # MLflow resolved the entry point and gave uvicorn our app, not its own.
    assert any(line.rstrip().endswith("zhongtai_train.mlflow_app:app") for line in ours), ours


def test_the_mlflow_app_is_mlflows_own_with_the_start_up_heap_frozen():
    # In a process of its own: freezing is for the server's workers, not this one.
    script = textwrap.dedent(
        """
        import gc
        from mlflow.server import _find_app, _is_factory
        from mlflow.server.fastapi_app import app as mlflows
        path = _find_app("zhongtai")
        assert path == "zhongtai_train.mlflow_app:app", path
        assert not _is_factory(path)  # uvicorn is handed the object itself
        from zhongtai_train.mlflow_app import app
        assert gc.get_freeze_count() == 0
        assert app.load() is mlflows and app.load() is mlflows
        print(gc.get_freeze_count())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # Everything importing MLflow left behind: hundreds of thousands of objects.
    assert int(done.stdout.split()[-1]) > 100_000
