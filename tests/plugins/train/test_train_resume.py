"""A worker killed while its ``train.run`` job runs on the local backend.

The attempt runs in a worker process of its own (the platform bootstrapped in a
subprocess, taking the job as a queue would hand it over, beating its heart); the test
kills that process with SIGKILL mid-run. The training process, in its own session,
goes on. The platform's reconciler notices the silent worker, the job is resumed at
once (``train.run`` has ``resume_interrupted``), and the new attempt asks the backend
about the run: it follows a run that still goes on, and records the real outcome of
one that ended while no worker watched — its exit code, not "worker lost".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.zt_plugins("train"), pytest.mark.timeout(300)]

TRAIN_PY = r"""
import os, sys, time

print("waiting for release", flush=True)
release = os.environ["RELEASE"]
deadline = time.time() + 120
while not os.path.exists(release) and time.time() < deadline:
    time.sleep(0.05)
print("finishing", flush=True)
if os.environ.get("MLFLOW_RUN_ID"):
    import mlflow

    x = float(next(a for a in sys.argv if a.startswith("--x=")).split("=")[1]) if any(
        a.startswith("--x=") for a in sys.argv
    ) else 0.0
    with mlflow.start_run():
        mlflow.log_metric("loss", (x - 2) ** 2)
sys.exit(int(os.environ.get("EXIT_CODE", "0")))
"""

# A worker process: what `zhongtai worker` does for one job, without a queue.
WORKER = r"""
import os, socket, sys, threading, time

from zhongtai.hooks.events import utcnow
from zhongtai.jobs.engine import JOBS, JobEngine
from zhongtai.jobs.models import Job
from zhongtai.platform import bootstrap
from zhongtai.settings import load_settings

platform = bootstrap(load_settings(), schema="check")
# An engine that runs only the job handed to it below; jobs it submits (a sweep's
# trials) are queued in this process and picked up by the server's reconciler.
engine = platform.stash[JOBS] = JobEngine(platform)


def beat():
    while True:
        engine.heartbeat()
        time.sleep(0.2)


threading.Thread(target=beat, daemon=True).start()
job_id = sys.argv[1]
with platform.db.transaction() as session:  # handed over, as a queue hands a job over
    job = session.get(Job, job_id)
    job.status, job.run_at, job.created_at = "queued", None, utcnow()
engine.run(job_id, f"embedded:{socket.gethostname()}:{os.getpid()}:w0")
"""

FAST_JOBS = {"heartbeat_interval": 0.3, "stale_after": 2.0, "reconcile_interval": 0.3}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, git_code: Any) -> tuple[str, str]:
    return git_code(tmp_path_factory.mktemp("code"), {"train.py": TRAIN_PY})


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory, start_tracked: Any) -> Iterator[Any]:
    from zhongtai_train.tracking import settings_of

    home = tmp_path_factory.mktemp("train-resume") / "home"
    with start_tracked(home, jobs=FAST_JOBS) as tracked:
        settings = settings_of(tracked.platform)
        settings.job_tracking_uri = f"{tracked.url}/mlflow"
        settings.allow_file_git = True
        yield tracked


def _spawn_worker(t: Any, job_id: str, log: Path) -> subprocess.Popen[bytes]:
    settings = t.platform.settings
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ZHONGTAI_")},
        "ZHONGTAI_HOME": str(settings.home),
        "ZHONGTAI_DATABASE_URL": settings.effective_database_url,
        "ZHONGTAI_SECRET_KEY": settings.resolved_secret_key(),
        "ZHONGTAI_PLUGINS": "train",
        "ZHONGTAI_TRAIN__JOB_TRACKING_URI": f"{t.url}/mlflow",
        "ZHONGTAI_TRAIN__ALLOW_FILE_GIT": "true",
        "ZHONGTAI_LOG_FORMAT": "text",
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", WORKER, job_id], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _get(t: Any, key: str, path: str, **params: Any) -> Any:
    answer = httpx.get(
        f"{t.url}{path}", params=params, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def _logs(t: Any, key: str, job_id: str) -> list[str]:
    body = _get(t, key, f"/api/v1/jobs/{job_id}/logs", limit=1000)
    return [line["line"] for line in body["items"]]


def _finished(t: Any, key: str, job_id: str, seconds: float = 60) -> dict[str, Any]:
    """The job once it has ended."""
    return _until(
        lambda: (
            (job := _get(t, key, f"/api/v1/jobs/{job_id}"))["status"]
            in ("succeeded", "failed", "cancelled")
            and job
        ),
        seconds,
    )


def _until(what: Any, seconds: float = 60) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = what()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _start_and_kill(t: Any, repo: tuple[str, str], tmp_path: Path, exit_code: int) -> Any:
    """A job whose first attempt's worker is killed while the script waits for
    ``tmp_path / "release"``: (key, job id, the run's pid)."""
    from zhongtai_train.models import TrainJob

    user, project = t.identity.project_with("developer")
    key = t.identity.api_key(user, project=project)
    url, commit = repo
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    answer = httpx.post(
        f"{t.url}/api/v1/jobs",
        json={
            "type": "train.run",
            "project": project.id,
            "run_at": later,  # for the worker below to take, not this server
            "params": {
                "code": {"kind": "git", "url": url, "commit": commit},
                "env": {"RELEASE": str(tmp_path / "release"), "EXIT_CODE": str(exit_code)},
                "experiment": "resume",
            },
        },
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    job_id = answer.json()["id"]
    worker = _spawn_worker(t, job_id, tmp_path / "worker.log")
    try:
        _until(lambda: "waiting for release" in _logs(t, key, job_id))
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    with t.platform.db.session() as session:
        row = session.get(TrainJob, job_id)
        assert row is not None and row.state == "running" and row.attempt == 1
        pid = json.loads(row.handle)["pid"]
    os.kill(pid, 0)  # the run outlived its worker
    return key, job_id, pid


def test_a_run_that_outlives_its_worker_is_followed_again(trainer, repo, tmp_path):
    t = trainer
    key, job_id, pid = _start_and_kill(t, repo, tmp_path, exit_code=3)
    # The reconciler takes the silent worker for dead; the job resumes at once and
    # the new attempt follows the run that still waits.
    resumed = _until(
        lambda: (
            (job := _get(t, key, f"/api/v1/jobs/{job_id}"))["attempts"] == 2
            and job["status"] == "running"
            and any("outlived its worker" in line for line in _logs(t, key, job_id))
            and job
        )
    )
    assert resumed["interruptions"] == 1
    (tmp_path / "release").touch()
    done = _finished(t, key, job_id)
    # The script's own exit code, with its last lines, as if no worker had died.
    assert done["status"] == "failed", done
    assert "exit code 3" in done["error"] and "finishing" in done["error"], done["error"]
    assert (done["attempts"], done["interruptions"]) == (2, 1)
    lines = _logs(t, key, job_id)
    assert any("stopped responding" in line and "resuming" in line for line in lines)
    _until(lambda: not Path(f"/proc/{pid}").exists(), 10)
    _assert_settled(t, key, job_id, "FAILED")


def test_a_run_that_ended_while_no_worker_watched_keeps_its_real_outcome(trainer, repo, tmp_path):
    t = trainer
    key, job_id, pid = _start_and_kill(t, repo, tmp_path, exit_code=0)
    # The script ends now, seconds before the reconciler takes the worker for dead.
    (tmp_path / "release").touch()
    _until(lambda: not Path(f"/proc/{pid}").exists() or "Z" in _state(pid), 10)
    done = _finished(t, key, job_id)
    assert done["status"] == "succeeded", done
    assert done["result"]["exit_code"] == 0 and done["attempts"] == 2
    _assert_settled(t, key, job_id, "FINISHED")


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "Z"
    return stat[stat.rindex(")") + 2]


def _assert_settled(t: Any, key: str, job_id: str, mlflow_status: str) -> None:
    """The MLflow run ended to match, both attempts' keys are revoked, the job's
    folders are gone."""
    from sqlalchemy import select

    from zhongtai.identity.models import ApiKey
    from zhongtai_train.jobs import jobs_dir
    from zhongtai_train.models import TrainJob

    with t.platform.db.session() as session:
        row = session.get(TrainJob, job_id)
        assert row is not None and row.attempt == 2
        run_id = row.run_id
        keys = list(session.scalars(select(ApiKey).where(ApiKey.name == f"train.run {job_id}")))
    assert len(keys) == 2 and all(k.revoked_at is not None for k in keys), keys
    run = _get(t, key, "/mlflow/api/2.0/mlflow/runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == mlflow_status
    assert not (jobs_dir(t.platform) / job_id).exists()


def test_a_sweep_whose_worker_dies_goes_on_with_the_trials_it_started(trainer, repo, tmp_path):
    """The sweep resumes too: its next attempt watches the trial that was running (no
    second job for it) and runs the rest of the budget."""
    t = trainer
    user, project = t.identity.project_with("developer")
    key = t.identity.api_key(user, project=project)
    url, commit = repo
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    answer = httpx.post(
        f"{t.url}/api/v1/jobs",
        json={
            "type": "train.sweep",
            "project": project.id,
            "run_at": later,
            "params": {
                "trial": {
                    "code": {"kind": "git", "url": url, "commit": commit},
                    "env": {"RELEASE": str(tmp_path / "release")},
                    "experiment": "resume-sweep",
                },
                "space": {"x": {"type": "float", "low": 0, "high": 4}},
                "metric": "loss",
                "sampler": "random",
                "seed": 7,
                "trials": 2,
                "parallelism": 1,
            },
        },
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    sweep_id = answer.json()["id"]

    def children() -> list[dict[str, Any]]:
        items = _get(t, key, "/api/v1/jobs", project=project.id, type="train.run", limit=50)
        return [job for job in items["items"] if job["parent"] == sweep_id]

    worker = _spawn_worker(t, sweep_id, tmp_path / "worker.log")
    try:
        # The first trial's job runs (on this server: the worker's queue died with it).
        first = _until(lambda: children() and children()[0], 90)
        _until(lambda: "waiting for release" in _logs(t, key, first["id"]), 90)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    _until(lambda: _get(t, key, f"/api/v1/jobs/{sweep_id}")["attempts"] == 2, 60)
    (tmp_path / "release").touch()
    done = _finished(t, key, sweep_id, 180)
    lines = _logs(t, key, sweep_id)
    assert done["status"] == "succeeded", (done, lines)
    assert (done["attempts"], done["interruptions"]) == (2, 1)
    assert any("trial 0: continued" in line for line in lines), lines
    trials = children()
    assert len(trials) == 2 and all(job["status"] == "succeeded" for job in trials), trials
    assert first["id"] in {job["id"] for job in trials}
