"""``train.run`` on the local backend, end to end: a git commit, a real subprocess, the
real ``mlflow`` client inside it logging through the platform with the key the job
gave it, live logs, cancel, failure, timeouts, and the 422s a bad spec gets."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

pytestmark = [pytest.mark.zt_plugins("train"), pytest.mark.timeout(300)]

TRAIN_PY = r"""
import json, os, subprocess, sys, time
import mlflow

rank = int(os.environ.get("RANK", "0"))
print(f"rank {rank} of {os.environ.get('WORLD_SIZE', '1')}", flush=True)
if rank == 0:
    print("argv " + json.dumps(sys.argv[1:]), flush=True)
    print("secret " + os.environ.get("SECRET_NAME", ""), flush=True)
mode = os.environ.get("MODE", "ok")
if mode == "sleep":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.environ["PID_FILE"], "w") as out:
        json.dump([os.getpid(), child.pid], out)
    print("sleeping", flush=True)
    time.sleep(600)
if rank == 0:
    with mlflow.start_run():
        for step in range(5):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.set_tag("from", "train.py")
print("done", flush=True)
if mode == "fail":
    sys.exit(3)
"""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.com",
        },
    ).stdout.strip()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A git repository with train.py; (file URL, commit)."""
    folder = tmp_path_factory.mktemp("code")
    _git(folder, "init", "--quiet")
    (folder / "train.py").write_text(TRAIN_PY)
    (folder / "sub").mkdir()
    (folder / "sub" / "hello.txt").write_text("hi\n")
    _git(folder, "add", ".")
    _git(folder, "commit", "--quiet", "-m", "train")
    return f"file://{folder}", _git(folder, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory, start_tracked: Any) -> Iterator[Any]:
    from zhongtai_train.tracking import settings_of

    with start_tracked(tmp_path_factory.mktemp("train-jobs") / "home") as tracked:
        settings = settings_of(tracked.platform)
        # Where this test's server listens (a free port, known only once it runs), and
        # the repository above, which lives on this machine's disk.
        settings.job_tracking_uri = f"{tracked.url}/mlflow"
        settings.allow_file_git = True
        yield tracked


def _spec(repo: tuple[str, str], **extra: Any) -> dict[str, Any]:
    url, commit = repo
    return {"code": {"kind": "git", "url": url, "commit": commit}, **extra}


def _submit(t: Any, key: str, project: Any, spec: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{t.url}/api/v1/jobs",
        json={"type": "train.run", "project": project.id, "params": spec},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def _wait(t: Any, key: str, job_id: str, until: set[str], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(
            f"{t.url}/api/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}
        ).json()
        if job["status"] in until or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


def _logs(t: Any, key: str, job_id: str) -> list[str]:
    body = httpx.get(
        f"{t.url}/api/v1/jobs/{job_id}/logs",
        params={"limit": 1000},
        headers={"Authorization": f"Bearer {key}"},
    ).json()
    return [line["line"] for line in body["items"]]


def _developer(t: Any) -> tuple[Any, Any, str]:
    user, project = t.identity.project_with("developer")
    return user, project, t.identity.api_key(user, project=project)


def _train_row(t: Any, job_id: str) -> Any:
    from zhongtai_train.models import TrainJob

    with t.platform.db.session() as session:
        return session.scalars(select(TrainJob).where(TrainJob.job_id == job_id)).one()


def _api_key_row(t: Any, key_id: str) -> Any:
    from zhongtai.identity.models import ApiKey

    with t.platform.db.session() as session:
        return session.get(ApiKey, key_id)


def test_a_commit_trains_and_logs_to_its_mlflow_run(trainer, repo):
    t = trainer
    _user, project, key = _developer(t)
    spec = _spec(
        repo,
        args=["--note", "0.1; touch /tmp/zt-pwned", "$(id)"],
        hyperparameters={"lr": 0.01, "epochs": 3, "model": "tiny", "amp": True},
        env={"SECRET_NAME": "visible"},
        experiment="jobs",
        run_name="first",
    )
    answer = _submit(t, key, project, spec)
    assert answer.status_code == 201, answer.text
    job = _wait(t, key, answer.json()["id"], {"succeeded", "failed"})
    lines = _logs(t, key, job["id"])
    assert job["status"] == "succeeded", (job, lines)
    run_id = job["result"]["run_id"]
    assert job["result"]["backend"] == "local" and job["result"]["exit_code"] == 0

    # The arguments arrived as one list, verbatim: nothing went through a shell.
    argv = json.loads(next(line for line in lines if line.startswith("argv "))[5:])
    assert argv == [
        "--note",
        "0.1; touch /tmp/zt-pwned",
        "$(id)",
        "--lr=0.01",
        "--epochs=3",
        "--model=tiny",
        "--amp=true",
    ]
    assert not Path("/tmp/zt-pwned").exists()
    assert "done" in lines and "secret visible" in lines

    # The code's mlflow.start_run() continued the job's run, in the job's project.
    run = httpx.get(
        f"{t.url}/api/v1/train/runs/{run_id}", headers={"Authorization": f"Bearer {key}"}
    ).json()
    assert run["status"] == "FINISHED"
    assert run["params"] == {"lr": "0.01", "epochs": "3", "model": "tiny", "amp": "true"}
    assert run["tags"]["zhongtai.job_id"] == job["id"]
    assert run["tags"]["from"] == "train.py"
    assert run["system_tags"]["mlflow.source.git.commit"] == repo[1]
    assert run["metrics"]["loss"] == {"value": pytest.approx(0.2), "step": 4}
    series = httpx.get(
        f"{t.url}/api/v1/train/runs/{run_id}/metrics/loss",
        headers={"Authorization": f"Bearer {key}"},
    ).json()
    assert series["steps"] == [0, 1, 2, 3, 4]

    # The key the code was given is revoked, and the attempt's folder is gone.
    row = _train_row(t, job["id"])
    assert row.state == "succeeded" and row.run_id == run_id
    assert _api_key_row(t, row.api_key_id).revoked_at is not None
    from zhongtai_train.jobs import jobs_dir

    assert not (jobs_dir(t.platform) / job["id"]).exists()


def test_a_failing_script_fails_the_job_with_its_exit_code(trainer, repo):
    t = trainer
    _user, project, key = _developer(t)
    answer = _submit(t, key, project, _spec(repo, env={"MODE": "fail"}, experiment="fails"))
    assert answer.status_code == 201, answer.text
    job = _wait(t, key, answer.json()["id"], {"succeeded", "failed"})
    assert job["status"] == "failed"
    assert "exit code 3" in job["error"]
    row = _train_row(t, job["id"])
    assert row.state == "failed" and row.reason == "exit code 3"
    run = httpx.get(
        f"{t.url}/api/v1/train/runs/{row.run_id}", headers={"Authorization": f"Bearer {key}"}
    ).json()
    assert run["status"] == "FAILED"


def _pids_gone(pids: list[int], within: float = 10) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if state[state.rindex(")") + 2] != "Z":
                alive.append(pid)
        if not alive:
            return True
        time.sleep(0.2)
    return False


def test_cancel_stops_the_script_and_everything_it_started(trainer, repo, tmp_path):
    t = trainer
    _user, project, key = _developer(t)
    pid_file = tmp_path / "pids.json"
    spec = _spec(repo, env={"MODE": "sleep", "PID_FILE": str(pid_file)}, experiment="cancels")
    spec["backend_options"] = {"grace_seconds": 1}
    job_id = _submit(t, key, project, spec).json()["id"]
    deadline = time.monotonic() + 60
    while not pid_file.exists() or "sleeping" not in _logs(t, key, job_id):
        assert time.monotonic() < deadline, _logs(t, key, job_id)
        time.sleep(0.2)
    pids = json.loads(pid_file.read_text())
    answer = httpx.post(
        f"{t.url}/api/v1/jobs/{job_id}/cancel", headers={"Authorization": f"Bearer {key}"}
    )
    assert answer.status_code in (200, 202), answer.text
    job = _wait(t, key, job_id, {"cancelled", "failed", "succeeded"})
    assert job["status"] == "cancelled", job
    assert _pids_gone(pids), "the script or its child outlived the cancel"
    row = _train_row(t, job_id)
    run = httpx.get(
        f"{t.url}/api/v1/train/runs/{row.run_id}", headers={"Authorization": f"Bearer {key}"}
    ).json()
    assert run["status"] == "KILLED"


def test_a_run_past_its_timeout_is_stopped_and_fails(trainer, repo, tmp_path):
    t = trainer
    _user, project, key = _developer(t)
    spec = _spec(
        repo,
        env={"MODE": "sleep", "PID_FILE": str(tmp_path / "p.json")},
        timeout=10,
        backend_options={"grace_seconds": 0},
    )
    job = _wait(t, key, _submit(t, key, project, spec).json()["id"], {"failed", "succeeded"})
    assert job["status"] == "failed" and "DeadlineExceeded" in job["error"]
    assert _pids_gone(json.loads((tmp_path / "p.json").read_text()))


def test_processes_per_node_get_the_torchrun_environment(trainer, repo):
    t = trainer
    _user, project, key = _developer(t)
    spec = _spec(repo, distributed={"procs_per_node": 2}, experiment="ddp")
    job = _wait(t, key, _submit(t, key, project, spec).json()["id"], {"failed", "succeeded"})
    lines = _logs(t, key, job["id"])
    assert job["status"] == "succeeded", lines
    assert "rank 0 of 2" in lines and "rank 1 of 2" in lines


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"backend": "slurm"}, "params.backend"),
        (
            {"code": {"kind": "git", "url": "ext::sh -c touch% /tmp/x", "commit": "main"}},
            "params.code",
        ),
        (
            {
                "code": {
                    "kind": "git",
                    "url": "https://example.com/r.git",
                    "commit": "--upload-pack=x",
                }
            },
            "params.code",
        ),
        ({"code": {"kind": "image", "image": "python:3.12"}}, "params.code"),
        ({"entry_point": ["../../bin/sh"]}, "params.entry_point"),
        ({"env": {"MLFLOW_TRACKING_URI": "http://elsewhere"}}, "params.env"),
        ({"env": {"bad name": "x"}}, "params.env"),
        ({"distributed": {"nodes": 2}}, "params.distributed.nodes"),
        ({"backend_options": {"grace_seconds": -1}}, "params.backend_options.grace_seconds"),
        ({"backend_options": {"privileged": True}}, "params.backend_options.privileged"),
        ({"resources": {"gpus": -1}}, "params.resources.gpus"),
        ({"hyperparameters": {"lr; rm": 1}}, "params.hyperparameters"),
        ({"inputs": [{"name": "train", "dataset_version": "0123456789abcdef"}]}, "params.inputs"),
        ({"args": ["a\x00b"]}, "params.args"),
    ],
)
def test_bad_specs_are_refused_naming_the_field(trainer, repo, change, field):
    t = trainer
    _user, project, key = _developer(t)
    answer = _submit(t, key, project, {**_spec(repo), **change})
    assert answer.status_code == 422, answer.text
    keys = [item["field"] for item in answer.json()["errors"]]
    assert any(k.startswith(field) for k in keys), keys


def test_file_repositories_are_refused_unless_allowed(trainer, repo):
    from zhongtai_train.tracking import settings_of

    t = trainer
    _user, project, key = _developer(t)
    settings = settings_of(t.platform)
    settings.allow_file_git = False
    try:
        answer = _submit(t, key, project, _spec(repo))
    finally:
        settings.allow_file_git = True
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == "params.code.url"


def test_only_developers_of_the_project_start_training(trainer, repo):
    t = trainer
    viewer, project = t.identity.project_with("viewer")
    answer = _submit(t, t.identity.api_key(viewer, project=project), project, _spec(repo))
    assert answer.status_code == 403
    _stranger, _other, key = _developer(t)
    answer = _submit(t, key, project, _spec(repo))
    assert answer.status_code == 404
