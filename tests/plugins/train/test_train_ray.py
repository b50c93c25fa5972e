"""The ray backend against a real Ray head, started here on 127.0.0.1 for the module.

Starting a head takes a while (10-30 s on a small machine), so the tests share one; each
job gets its own name. The head is stopped by killing what it started (its session, and
anything whose command line or folder is under its private temp dir), not with
``ray stop``, which would stop every Ray process of the user on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from zhongtai_train.backends import (
    BackendError,
    Distributed,
    InputMount,
    Launch,
    Outcome,
    Requirements,
    SpecError,
)
from zhongtai_train.backends.ray import RayBackend, RayOptions

pytestmark = pytest.mark.timeout(300)

ADDRESS_VARIABLES = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _processes_of(session: int, folder: str) -> list[int]:
    """Processes the head started: in its session, or working under its temp dir (job
    entrypoints and workers start sessions of their own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            if os.getsid(pid) == session:
                found.append(pid)
                continue
            command = (entry / "cmdline").read_bytes()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if folder.encode() + b"/" in command or cwd.startswith(folder + "/"):
            found.append(pid)
    return found


def _stop_head(session: int, folder: str) -> None:
    for sig, patience in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        pids = _processes_of(session, folder)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + patience
        while _processes_of(session, folder) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _processes_of(session, folder):
            return


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """The Jobs API address of a Ray head started for this module."""
    from ray.job_submission import JobSubmissionClient

    ray = Path(sys.executable).parent / "ray"
    # Ray's Unix sockets live under the temp dir: keep its path short (107 chars at most).
    folder = tempfile.mkdtemp(prefix="ztray-", dir="/tmp")
    dashboard_port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ADDRESS_VARIABLES}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    command = [
        str(ray), "start", "--head",
        "--node-ip-address=127.0.0.1",
        "--port=0",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--ray-client-server-port={_free_port()}",
        "--num-cpus=2",
        "--object-store-memory=100000000",
        "--include-dashboard=true",
        "--disable-usage-stats",
        f"--temp-dir={folder}",
    ]  # fmt: skip
    output = Path(folder) / "start.log"
    with output.open("wb") as out:
        # Its own session, so that everything it leaves running can be found again.
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        try:
            process.wait(timeout=180)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`ray start` did not finish in 180 s:\n{output.read_text()[-3000:]}")
        if process.returncode != 0:
            pytest.fail(f"`ray start` failed ({process.returncode}):\n{output.read_text()[-3000:]}")
        address = f"http://127.0.0.1:{dashboard_port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    pytest.fail(f"the Jobs API at {address} did not answer in 120 s: {exc}")
                time.sleep(1)
        yield address
    finally:
        _stop_head(process.pid, folder)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_address_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ADDRESS_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def make_launch(workdir: Path | None, argv: list[str], address: str, **changes: Any) -> Launch:
    fields: dict[str, Any] = {
        "job_id": uuid.uuid4().hex,
        "project_id": "p1",
        "attempt": 1,
        "name": f"zt-{uuid.uuid4().hex[:12]}",
        "argv": tuple(argv),
        "env": {},
        "secret_env": frozenset(),
        "workdir": workdir,
        "image": None,
        # Small, so that the module's jobs fit on the head's two CPUs at once.
        "requirements": Requirements(cpu=0.25, memory_mb=64),
        "distributed": Distributed(),
        "inputs": (),
        "timeout": 600,
        "options": RayOptions(address=address),
    }
    fields.update(changes)
    return Launch(**fields)


def code(tmp_path: Path, source: str) -> Path:
    workdir = tmp_path / "code"
    workdir.mkdir()
    (workdir / "train.py").write_text(source)
    return workdir


def wait_final(backend: RayBackend, handle: str, timeout: float = 120) -> Outcome:
    deadline = time.monotonic() + timeout
    while True:
        outcome = backend.poll(handle)
        if outcome.final:
            return outcome
        assert time.monotonic() < deadline, f"still {outcome.state} after {timeout} s"
        time.sleep(0.5)


TRAIN = """
import json, os, sys, time
for i in range(5):
    print(f"step {i}", flush=True)
    time.sleep(0.3)
print("greeting", os.environ["ZT_GREETING"])
print("token ok" if os.environ["MLFLOW_TRACKING_TOKEN"] == "tok-123" else "token wrong")
print("inputs", os.environ["ZT_INPUT_TRAIN"], os.environ["ZT_INPUT_EVAL"])
print("data", open(os.path.join(os.environ["ZT_INPUT_TRAIN"], "a.txt")).read().strip())
print("argv", json.dumps(sys.argv))
sys.stdout.write("no newline at the end")
"""


def test_runs_the_code_and_streams_its_logs(ray_head: str, tmp_path: Path) -> None:
    workdir = code(tmp_path, TRAIN)
    (workdir / "data").mkdir()
    (workdir / "data" / "a.txt").write_text("shipped\n")
    pwn = Path(f"/tmp/pwn-{uuid.uuid4().hex}")
    args = ["--lr", f"0.1; touch {pwn}", "$(id)", "`id`", "a b", "'q'", '"d"', "x\\y"]
    launch = make_launch(
        workdir,
        [sys.executable, "train.py", *args],
        ray_head,
        env={"ZT_GREETING": "hello ray", "MLFLOW_TRACKING_TOKEN": "tok-123"},
        secret_env=frozenset({"MLFLOW_TRACKING_TOKEN"}),
        inputs=(
            InputMount("train", "dv1", workdir / "data", None),
            InputMount("eval", "dv2", None, "s3://bucket/p/dv2/"),
        ),
    )
    backend = RayBackend(None)
    handle = backend.submit(launch)
    assert json.loads(handle) == {"address": ray_head, "id": f"{launch.name}-a1"}

    lines: list[str] = []
    cursor: str | None = None
    calls = 0
    while True:
        outcome = backend.poll(handle)
        chunk = backend.read_logs(handle, cursor)
        lines += chunk.lines
        cursor = chunk.cursor
        calls += 1
        if outcome.final:
            break
        time.sleep(0.3)
    assert calls > 1
    assert backend.read_logs(handle, cursor).lines == []  # nothing twice

    assert outcome == Outcome("succeeded", exit_code=0)
    ours = [line for line in lines if not line.startswith(("Running entrypoint", "20"))]
    assert ours == [
        *(f"step {i}" for i in range(5)),
        "greeting hello ray",
        "token ok",
        "inputs data s3://bucket/p/dv2/",
        "data shipped",
        "argv " + json.dumps(["train.py", *args]),
        "no newline at the end",
    ]
    assert not pwn.exists()
    # The credential travels in the runtime env, never on the command line.
    from ray.job_submission import JobSubmissionClient

    info = JobSubmissionClient(ray_head).get_job_info(f"{launch.name}-a1")
    assert "tok-123" not in info.entrypoint
    assert info.metadata == launch.labels()

    backend.cleanup(handle)
    assert backend.poll(handle).reason == "JobNotFound"
    assert backend.read_logs(handle, cursor).lines == []
    backend.cleanup(handle)  # already gone: no error


def test_an_exit_code_fails_the_run(ray_head: str, tmp_path: Path) -> None:
    workdir = code(tmp_path, "import sys\nprint('bad data')\nsys.exit(3)\n")
    backend = RayBackend(None)
    handle = backend.submit(make_launch(workdir, [sys.executable, "train.py"], ray_head))
    outcome = wait_final(backend, handle)
    assert (outcome.state, outcome.reason, outcome.exit_code) == ("failed", "exit code 3", 3)
    assert "exit code 3" in outcome.message
    assert "bad data" in backend.read_logs(handle, None).lines
    backend.cleanup(handle)


SLEEPER = """
import os, pathlib, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
pathlib.Path(os.environ["PIDS"]).write_text(f"{os.getpid()} {child.pid}")
print("sleeping", flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_cancel_stops_the_code_and_what_it_started(ray_head: str, tmp_path: Path) -> None:
    workdir = code(tmp_path, SLEEPER)
    pids = tmp_path / "pids"
    launch = make_launch(workdir, [sys.executable, "train.py"], ray_head, env={"PIDS": str(pids)})
    backend = RayBackend(None)
    handle = backend.submit(launch)

    # Submitting the same attempt again (a worker that crashed after submitting) follows
    # the first job; a job of another origin under that name is refused.
    assert RayBackend(None).submit(launch) == handle
    other = make_launch(workdir, ["true"], ray_head, name=launch.name)
    with pytest.raises(BackendError, match="another origin"):
        RayBackend(None).submit(other)

    deadline = time.monotonic() + 120
    while not pids.exists() or " " not in pids.read_text():
        assert time.monotonic() < deadline, backend.poll(handle)
        time.sleep(0.3)
    assert backend.poll(handle).state == "running"
    started = [int(pid) for pid in pids.read_text().split()]

    backend.cancel(handle)
    assert wait_final(backend, handle, timeout=60).state == "cancelled"
    deadline = time.monotonic() + 15
    while not all(_gone(pid) for pid in started):
        assert time.monotonic() < deadline, f"still running: {started}"
        time.sleep(0.2)
    backend.cancel(handle)  # already ended: no error
    backend.cleanup(handle)


def test_cleanup_stops_a_job_still_running(ray_head: str, tmp_path: Path) -> None:
    workdir = code(tmp_path, "import time\nprint('up', flush=True)\ntime.sleep(600)\n")
    backend = RayBackend(None)
    handle = backend.submit(make_launch(workdir, [sys.executable, "train.py"], ray_head))
    deadline = time.monotonic() + 120
    while "up" not in backend.read_logs(handle, None).lines:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    backend.cleanup(handle)
    assert backend.poll(handle).reason == "JobNotFound"
    # Ray's job monitor may notice the stopped job's supervisor gone only after the
    # delete and write the record back; cleanup deletes it again, so it stays gone.
    time.sleep(2.0)
    assert backend.poll(handle).reason == "JobNotFound"


def test_check_refuses_what_ray_cannot_run(tmp_path: Path) -> None:
    backend = RayBackend(None)
    address = "http://127.0.0.1:8265"

    def refused(**changes: Any) -> str:
        workdir = changes.pop("workdir", tmp_path)
        with pytest.raises(SpecError) as caught:
            backend.check(make_launch(workdir, ["python", "train.py"], address, **changes))
        return caught.value.field

    assert refused(image="python:3.12") == "image"
    assert refused(workdir=None) == "code"
    assert refused(distributed=Distributed(nodes=2)) == "distributed.nodes"
    assert refused(distributed=Distributed(procs_per_node=4)) == "distributed.procs_per_node"
    # Ray would expand these from the node's own environment.
    assert refused(env={"A": "$HOME"}) == "env.A"
    assert refused(env={"B": "x${SECRET}y"}) == "env.B"
    secret = make_launch(tmp_path, ["python"], address, env={"T": "$tok-secret"})
    with pytest.raises(SpecError) as caught:
        backend.check(secret)
    assert "tok-secret" not in str(caught.value)
    backend.check(make_launch(tmp_path, ["python"], address, env={"P": "100$", "Q": "a $ b"}))


@pytest.mark.parametrize(
    "options",
    [
        {"address": "ftp://head:8265"},
        {"address": "http://"},
        {"address": "head:8265"},
        {"address": "http://user:pw@head:8265"},
        {"address": "http://head:8265/?x=1"},
        {"address": "http://head:99999"},
        {"address": "http://head:8265/x\ny"},
        {"headers": {"a": "b"}},
        {"pip": ["-r requirements.txt"]},
        {"pip": ["--index-url=https://evil.example/simple"]},
        {"pip": ["torch\n--extra-index-url https://evil.example"]},
        {"pip": ["./local-package"]},
        {"pip": ["git+https://example.com/x.git"]},
        {"pip": ["pkg @ https://example.com/pkg.whl"]},
        {"pip": ["torch; os_name == 'nt'"]},
        {"excludes": [""]},
        {"excludes": ["a\nb"]},
    ],
)
def test_options_refuse(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RayOptions.model_validate(options)


def test_options_accept() -> None:
    options = RayOptions.model_validate(
        {
            "address": "https://ray.example.com:443/prefix/",
            "pip": ["torch>=2.4", "transformers[torch]==4.46", "numpy>=1.26,<3", "a.b-c_d"],
            "excludes": ["data/", "*.ckpt"],
        }
    )
    assert options.address == "https://ray.example.com:443/prefix"
    assert RayBackend.describe()["options_schema"]["additionalProperties"] is False


def test_an_unreachable_cluster_is_a_backend_error(tmp_path: Path) -> None:
    address = f"http://127.0.0.1:{_free_port()}"  # closed: nothing listens there
    backend = RayBackend(None)
    started = time.monotonic()
    with pytest.raises(BackendError, match="cannot reach the Ray Jobs API"):
        backend.submit(make_launch(tmp_path, ["python"], address))
    with pytest.raises(BackendError):
        backend.poll(json.dumps({"address": address, "id": "zt-x-a1"}))
    assert time.monotonic() - started < 30
    with pytest.raises(BackendError, match="not a ray backend handle"):
        backend.poll("zt-x-a1")


def test_an_address_in_the_environment_must_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:1")
    with pytest.raises(BackendError, match="RAY_ADDRESS"):
        RayBackend(None).submit(make_launch(tmp_path, ["python"], "http://127.0.0.1:2"))


def test_without_ray_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray.job_submission", None)
    with pytest.raises(BackendError, match=r"zhongtai-train\[ray\]"):
        RayBackend(None).submit(make_launch(tmp_path, ["python"], "http://127.0.0.1:2"))


# --------------------------------------------------------------------------- train.run on Ray

JOB_TRAIN = """
import os, sys

import mlflow

inputs = os.environ["ZT_INPUT_TABLE"]
rows = open(os.path.join(inputs, "table.csv")).read().splitlines()[1:]
print("input", inputs, "rows", len(rows), flush=True)
print("argv", sys.argv[1:], flush=True)
for step in range(3):
    mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
mlflow.log_metric("rows", len(rows))
print("done", flush=True)
"""


@pytest.fixture(scope="module")
def ray_platform(
    ray_head: str, tmp_path_factory: pytest.TempPathFactory, start_tracked: Any
) -> Iterator[Any]:
    """The platform (train and data plugins) sending training jobs to the module's head."""
    from zhongtai_train.tracking import settings_of

    home = tmp_path_factory.mktemp("train-ray") / "home"
    with start_tracked(home, plugins=("train", "data")) as tracked:
        settings = settings_of(tracked.platform)
        settings.job_tracking_uri = f"{tracked.url}/mlflow"
        settings.allow_file_git = True
        settings.backend_options = {"ray": {"address": ray_head}}
        yield tracked


def test_a_training_job_runs_on_the_ray_head_with_its_dataset_input(
    ray_platform: Any, tmp_path: Path, git_code: Any
) -> None:
    import httpx

    t = ray_platform
    user, project = t.identity.project_with("developer")
    key = t.identity.api_key(user, project=project)
    headers = {"Authorization": f"Bearer {key}"}
    api = f"{t.url}/api/v1/data/datasets"
    dataset = httpx.post(api, json={"project": project.id, "name": "table"}, headers=headers)
    assert dataset.status_code == 201, dataset.text
    draft = httpx.post(f"{api}/{dataset.json()['id']}/versions", json={}, headers=headers)
    ref = draft.json()["id"]
    added = httpx.post(
        f"{api}/{dataset.json()['id']}/versions/{ref}/files",
        data={"path": "table.csv"},
        files={"file": ("table.csv", b"x,y\n1,2\n3,4\n5,6\n", "text/csv")},
        headers=headers,
    )
    assert added.status_code == 201, added.text
    version = httpx.post(
        f"{api}/{dataset.json()['id']}/versions/{ref}/commit", json={}, headers=headers
    ).json()["id"]
    (tmp_path / "code").mkdir()
    url, commit = git_code(tmp_path / "code", {"train.py": JOB_TRAIN})
    pwn = Path(f"/tmp/pwn-{uuid.uuid4().hex}")
    answer = httpx.post(
        f"{t.url}/api/v1/jobs",
        json={
            "type": "train.run",
            "project": project.id,
            "params": {
                "code": {"kind": "git", "url": url, "commit": commit},
                "backend": "ray",
                "resources": {"cpu": 0.25, "memory_mb": 256},
                "args": [f"0.1; touch {pwn}", "$(id)"],
                "inputs": [{"name": "table", "dataset_version": version}],
                "experiment": "on-ray",
            },
        },
        headers=headers,
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    job_id = answer.json()["id"]
    deadline = time.monotonic() + 180
    while True:
        job = httpx.get(f"{t.url}/api/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    lines = [
        item["line"]
        for item in httpx.get(
            f"{t.url}/api/v1/jobs/{job_id}/logs", params={"limit": 1000}, headers=headers
        ).json()["items"]
    ]
    assert job["status"] == "succeeded", (job, lines)
    assert job["result"]["backend"] == "ray"
    # The input travelled with the code (a path inside Ray's working_dir).
    assert "input .zt-inputs/table rows 3" in lines, "\n".join(lines)
    assert f"argv ['0.1; touch {pwn}', '$(id)']" in lines, lines
    assert not pwn.exists()
    run = httpx.get(f"{t.url}/api/v1/train/runs/{job['result']['run_id']}", headers=headers).json()
    assert run["metrics"]["rows"]["value"] == 3
    assert run["status"] == "FINISHED"
