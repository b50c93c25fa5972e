"""MLflow's tracking server, run by the platform behind its own authentication.

The plugin starts MLflow's own server (``mlflow server``: tracking, model registry
and artifact proxy) as a child process that listens on a Unix socket in a private
folder, so nothing but the platform can reach it. MLflow's *workspaces* give each
platform project its own namespace: every request the platform forwards names the
caller's project as its workspace (``X-MLflow-Workspace``), and MLflow's stores then
answer only with that workspace's experiments, runs, models and artifacts. Whoever
asks for another project's objects gets MLflow's own ``RESOURCE_DOES_NOT_EXIST``.

Where MLflow keeps things:

* Embedded database: its store is the SQLite file ``train/mlflow.db`` under the data
  directory. On PostgreSQL: the schema ``mlflow`` of the platform's database (MLflow
  keeps its own Alembic history there, apart from the platform's).
  ``[train] tracking_store_uri`` points it elsewhere.
* Artifacts go through MLflow's artifact proxy to ``train/artifacts`` under the data
  directory on the ``local`` storage driver, or to ``s3://<bucket>/<prefix>mlflow/``
  with the platform's S3 settings on the ``s3`` driver.

The server starts on first use (a request under ``/mlflow`` or ``/api/v1/train``),
not with the platform, and stops with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from zhongtai.platform import StashKey
from zhongtai_train.settings import TrainSettings

if TYPE_CHECKING:
    from zhongtai.platform import Platform

log = logging.getLogger("zhongtai.train")

PREFIX = "/mlflow"
SCHEMA = "mlflow"  # on PostgreSQL: MLflow's tables, apart from the platform's
WORKSPACE_HEADER = "X-MLflow-Workspace"
# Our ``mlflow.app`` entry point: MLflow's app, its start-up heap frozen (mlflow_app.py).
MLFLOW_APP_NAME = "zhongtai"


class TrackingUnavailable(RuntimeError):
    """The MLflow server could not be started or does not answer."""


def settings_of(platform: Platform) -> TrainSettings:
    settings = platform.plugin_settings("train")
    assert isinstance(settings, TrainSettings)
    return settings


def workspace_of(project_id: str) -> str:
    """The MLflow workspace of a platform project: ``p`` + its id (ids are lower case)."""
    return "p" + project_id.lower()


def project_of(workspace: str) -> str | None:
    """The project id a workspace name stands for, or None if it is not one of ours."""
    if len(workspace) != 27 or not workspace.startswith("p") or not workspace[1:].isalnum():
        return None
    return workspace[1:]


def store_uri(platform: Platform) -> str:
    """The SQLAlchemy URL of MLflow's store (see the module's documentation)."""
    settings = settings_of(platform)
    if settings.tracking_store_uri:
        return settings.tracking_store_uri
    if platform.settings.is_embedded_database:
        folder = platform.settings.home / "train"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return f"sqlite:///{folder / 'mlflow.db'}"
    url = make_url(platform.settings.effective_database_url).set(drivername="postgresql+psycopg")
    url = url.update_query_dict({"options": f"-csearch_path={SCHEMA}"})
    return url.render_as_string(hide_password=False)


def artifacts_destination(platform: Platform) -> str:
    storage = platform.settings.storage
    if storage.driver == "s3":
        prefix = storage.prefix.strip("/")
        return f"s3://{storage.bucket}/{prefix + '/' if prefix else ''}mlflow"
    folder = platform.settings.home / "train" / "artifacts"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder.as_uri()


def _child_environment(platform: Platform) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        # The platform's own settings (secret key, database password) stay with it.
        if not k.startswith(("ZHONGTAI_", "MLFLOW_TRACKING_", "AWS_"))
    }
    env["MLFLOW_ENABLE_WORKSPACES"] = "true"
    env["PYTHONUNBUFFERED"] = "1"
    # MLflow's server-side job runner (GenAI scorers, prompt optimization) starts a
    # runner and several Huey consumer processes. Its endpoints are refused by the
    # proxy, so the processes would only cost memory.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    storage = platform.settings.storage
    if storage.driver == "s3":
        if storage.endpoint_url:
            env["MLFLOW_S3_ENDPOINT_URL"] = storage.endpoint_url
        if storage.region:
            env["AWS_DEFAULT_REGION"] = storage.region
        if storage.access_key_id:
            env["AWS_ACCESS_KEY_ID"] = storage.access_key_id
        if storage.secret_access_key is not None:
            env["AWS_SECRET_ACCESS_KEY"] = storage.secret_access_key.get_secret_value()
    return env


def _prepare_store(platform: Platform, uri: str) -> None:
    """Create the PostgreSQL schema MLflow's tables go in (MLflow creates the rest)."""
    url = make_url(uri)
    if url.get_backend_name() != "postgresql" or SCHEMA not in str(url.query.get("options", "")):
        return
    with platform.db.engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))


class TrackingServer:
    """One platform's MLflow server: started on first use, stopped with the platform."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.settings = settings_of(platform)
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._folder: Path | None = None
        self._client: httpx.Client | None = None
        self._engine: Engine | None = None
        self._workspaces: set[str] = set()
        self.uri = store_uri(platform)

    # -- the child process -------------------------------------------------------------

    @property
    def socket(self) -> Path:
        if self._folder is None:
            raise TrackingUnavailable("the tracking server is not started")
        return self._folder / "mlflow.sock"

    @property
    def workspaces(self) -> set[str]:
        """The workspaces known to exist (created or found since the server started)."""
        return self._workspaces

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def ensure(self) -> None:
        """Start the server unless it runs; raise :class:`TrackingUnavailable` on failure."""
        if self.running:
            return
        with self._lock:
            if self.running:
                return
            self._stop_locked()
            self._start_locked()

    def _start_locked(self) -> None:
        _prepare_store(self.platform, self.uri)
        # A short private path: a Unix socket's path has at most 107 bytes.
        self._folder = Path(tempfile.mkdtemp(prefix="zt-mlflow-"))
        self._folder.chmod(0o700)
        logs = self.platform.settings.home / "train"
        logs.mkdir(parents=True, exist_ok=True, mode=0o700)
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.uri,
            "--serve-artifacts",
            "--artifacts-destination",
            artifacts_destination(self.platform),
            "--static-prefix",
            PREFIX,
            "--enable-workspaces",
            "--app-name",
            MLFLOW_APP_NAME,
            "--workers",
            str(self.settings.tracking_workers),
            "--allowed-hosts",
            "localhost",
            "--uvicorn-opts",
            f"--uds {shlex.quote(str(self.socket))} --no-access-log",
        ]
        log.info("starting the MLflow tracking server (%s)", make_url(self.uri).get_backend_name())
        with open(logs / "mlflow-server.log", "ab") as out:
            self._process = subprocess.Popen(  # noqa: S603 - an argument list of our own
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_child_environment(self.platform),
                start_new_session=True,  # its uvicorn workers stop with it (killpg)
            )
        deadline = time.monotonic() + self.settings.tracking_start_timeout
        client = self._new_client()
        try:
            while True:
                if self._process.poll() is not None:
                    raise TrackingUnavailable(
                        f"the MLflow server exited with status {self._process.returncode}; "
                        f"see {logs / 'mlflow-server.log'}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{PREFIX}/health").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise TrackingUnavailable(
                        "the MLflow server did not answer within "
                        f"{self.settings.tracking_start_timeout:g} s"
                    )
                time.sleep(0.1)
        except BaseException:
            client.close()
            self._stop_locked()
            raise
        self._client = client
        log.info("MLflow tracking server ready on %s", self.socket)

    def _new_client(self) -> httpx.Client:
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)),
            base_url="http://localhost",
            timeout=httpx.Timeout(60.0, connect=5.0),
        )

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        self._workspaces.clear()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # -- talking to it -----------------------------------------------------------------

    @property
    def client(self) -> httpx.Client:
        """A client for the platform's own calls (not for proxying users' requests)."""
        self.ensure()
        assert self._client is not None
        return self._client

    def call(
        self,
        method: str,
        path: str,
        project_id: str,
        *,
        json: Any = None,
        params: Any = None,
    ) -> httpx.Response:
        """One MLflow REST call in a project's workspace, e.g. ``("POST", "runs/search")``."""
        self.ensure_workspace(project_id)
        return self.client.request(
            method,
            f"{PREFIX}/api/2.0/mlflow/{path}",
            json=json,
            params=params,
            headers={WORKSPACE_HEADER: workspace_of(project_id)},
        )

    def ensure_workspace(self, project_id: str) -> str:
        """Create the project's MLflow workspace if it does not exist yet; its name."""
        name = workspace_of(project_id)
        if name in self._workspaces:
            return name
        client = self.client
        found = client.get(f"{PREFIX}/api/3.0/mlflow/workspaces/{name}")
        if found.status_code == 404:
            made = client.post(
                f"{PREFIX}/api/3.0/mlflow/workspaces",
                json={"name": name, "description": f"zhongtai project {project_id}"},
            )
            if made.status_code >= 400 and "ALREADY_EXISTS" not in made.text:
                raise TrackingUnavailable(f"could not create workspace {name}: {made.text}")
        elif found.status_code >= 400:
            raise TrackingUnavailable(f"could not read workspace {name}: {found.text}")
        self._workspaces.add(name)
        return name

    @property
    def engine(self) -> Engine:
        """An engine on MLflow's store, for reads MLflow's API makes slow (long series)."""
        if self._engine is None:
            self.ensure()  # the store exists (migrated) once the server answers
            self._engine = create_engine(self.uri, pool_pre_ping=True)
        return self._engine


SERVER: StashKey[TrackingServer] = StashKey()


def tracking(platform: Platform) -> TrackingServer:
    """The platform's tracking server object (created at the plugin's startup)."""
    if SERVER not in platform.stash:
        platform.stash[SERVER] = TrackingServer(platform)
    return platform.stash[SERVER]
