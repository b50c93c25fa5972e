"""Tracking with the platform on the s3 storage driver: MLflow's artifacts go to S3.

moto's server mode on 127.0.0.1 speaks the S3 protocol and stands in for AWS S3 or
MinIO, which cannot run on our CI machines; MLflow's own S3 artifact repository
(boto3) talks to it exactly as it would to them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from mlflow import MlflowClient
from moto.server import ThreadedMotoServer

pytestmark = pytest.mark.zt_plugins("train")
BUCKET = "zt-train"


@pytest.fixture(scope="module")
def on_s3(tmp_path_factory: pytest.TempPathFactory, start_tracked: Any) -> Iterator[Any]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket=BUCKET)
    storage = {
        "driver": "s3",
        "bucket": BUCKET,
        "prefix": "platform",
        "endpoint_url": endpoint,
        "region": "us-east-1",
        "access_key_id": "testing",
        "secret_access_key": "testing",
        "addressing_style": "path",
    }
    try:
        with start_tracked(tmp_path_factory.mktemp("train-s3") / "home", storage=storage) as t:
            yield t, s3
    finally:
        server.stop()


def test_artifacts_and_models_are_stored_in_the_platforms_bucket(on_s3, monkeypatch, tmp_path):
    tracked, s3 = on_s3
    identity = tracked.identity
    user, project = identity.project_with("developer")
    tracked.use(monkeypatch, identity.api_key(user, project=project))
    client = MlflowClient(tracking_uri=tracked.tracking_uri)
    exp = client.create_experiment("on-s3")
    run = client.create_run(exp).info.run_id
    (tmp_path / "weights.bin").write_bytes(b"\x00\x01" * 5000)
    client.log_artifact(run, str(tmp_path / "weights.bin"), "model")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    wanted = [k for k in keys if k.endswith("model/weights.bin")]
    assert wanted and wanted[0].startswith(f"platform/mlflow/workspaces/p{project.id}/")
    down = client.download_artifacts(run, "model/weights.bin", str(tmp_path / "down"))
    assert Path(down).read_bytes() == b"\x00\x01" * 5000
    # The platform's own artifact browser reads the same objects.
    import httpx

    headers = {"Authorization": f"Bearer {identity.token(user)}"}
    listing = httpx.get(
        f"{tracked.url}/api/v1/train/runs/{run}/artifacts",
        params={"path": "model"},
        headers=headers,
        timeout=60,
    ).json()
    assert [f["path"] for f in listing["files"]] == ["model/weights.bin"]
    got = httpx.get(
        f"{tracked.url}/api/v1/train/runs/{run}/artifacts/download",
        params={"path": "model/weights.bin"},
        headers=headers,
        timeout=60,
    )
    assert got.status_code == 200 and got.content == b"\x00\x01" * 5000
    assert got.headers["content-disposition"].startswith("attachment")


def test_a_model_is_logged_and_registered_on_s3(on_s3, monkeypatch):
    import mlflow
    import mlflow.pyfunc

    class Double(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input * 2

    tracked, s3 = on_s3
    identity = tracked.identity
    user, project = identity.project_with("developer")
    tracked.use(monkeypatch, identity.api_key(user, project=project))
    mlflow.set_experiment("s3-models")
    with mlflow.start_run() as run:
        mlflow.log_metric("loss", 0.5)
        info = mlflow.pyfunc.log_model(name="model", python_model=Double())
    version = mlflow.register_model(info.model_uri, "s3-doubler")
    assert version.version == "1"
    client = MlflowClient(tracking_uri=tracked.tracking_uri)
    assert client.get_model_version("s3-doubler", "1").run_id == run.info.run_id
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert any(
        k.startswith(f"platform/mlflow/workspaces/p{project.id}/") and "MLmodel" in k for k in keys
    )
