"""``train.run`` on the local backend, end to end: a git commit, a real subprocess, the
real ``mlflow`` client inside it logging through the platform with the key the job
gave it, live logs, cancel, failure, timeouts, and the 422s a bad spec gets."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
    if os.environ.get("ZT_DEEPSPEED_CONFIG"):
        print("deepspeed " + open(os.environ["ZT_DEEPSPEED_CONFIG"]).read(), flush=True)
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


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, git_code: Any) -> tuple[str, str]:
    """A git repository with train.py; (file URL, commit)."""
    return git_code(
        tmp_path_factory.mktemp("code"), {"train.py": TRAIN_PY, "sub/hello.txt": "hi\n"}
    )


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
        args=["--note", "0.1; touch /tmp/zt-pwned", "$(id)", "--output=/etc/x"],
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
        "--output=/etc/x",
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
    # The error quotes the end of the script's output.
    assert "last lines of its output" in job["error"] and "  done" in job["error"]
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
    spec = _spec(
        repo,
        distributed={"procs_per_node": 2, "deepspeed_config": {"train_batch_size": 8}},
        experiment="ddp",
    )
    job = _wait(t, key, _submit(t, key, project, spec).json()["id"], {"failed", "succeeded"})
    lines = _logs(t, key, job["id"])
    assert job["status"] == "succeeded", lines
    assert "rank 0 of 2" in lines and "rank 1 of 2" in lines
    assert 'deepspeed {"train_batch_size": 8}' in lines


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


def test_an_unknown_backend_is_refused_listing_the_installed_ones(trainer, repo):
    t = trainer
    _user, project, key = _developer(t)
    answer = _submit(t, key, project, _spec(repo, backend="slurm"))
    assert answer.status_code == 422
    message = answer.json()["errors"][0]["message"]
    assert all(name in message for name in ("local", "ray", "kubernetes")), message


def test_a_hyperparameter_of_the_wrong_type_is_refused_naming_it(trainer, repo):
    t = trainer
    _user, project, key = _developer(t)
    answer = _submit(t, key, project, _spec(repo, hyperparameters={"lr": {"nested": 1}}))
    assert answer.status_code == 422
    fields = [item["field"] for item in answer.json()["errors"]]
    assert any(f.startswith("params.hyperparameters.lr") for f in fields), fields


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


# --------------------------------------------------------------------------- GPU quotas


def _quota(t: Any, key: str, project: Any, method: str = "GET", gpus: int | None = None):
    return httpx.request(
        method,
        f"{t.url}/api/v1/train/quotas/{project.id}",
        json=None if gpus is None else {"gpus": gpus},
        headers={"Authorization": f"Bearer {key}"},
    )


def test_only_project_admins_set_the_gpu_quota_and_strangers_see_nothing(trainer):
    t = trainer
    _developer_user, project, key = _developer(t)
    answer = _quota(t, key, project)
    assert answer.status_code == 200, answer.text
    assert answer.json()["gpus"] is None
    assert _quota(t, key, project, "PUT", 2).status_code == 403
    admin = t.identity.user()
    t.identity.member(admin, project, "admin")
    admin_key = t.identity.api_key(admin, project=project)
    answer = _quota(t, admin_key, project, "PUT", 2)
    assert answer.status_code == 200, answer.text
    assert answer.json()["gpus"] == 2 and answer.json()["source"] == "project"
    bad = _quota(t, admin_key, project, "PUT", -1)
    assert bad.status_code in (400, 422) and "gpus" in bad.text
    _s, _p, stranger = _developer(t)
    assert _quota(t, stranger, project).status_code == 404
    assert _quota(t, stranger, project, "PUT", 100).status_code == 404
    assert _quota(t, key, project).json()["gpus"] == 2


def _set_quota(t: Any, project: Any, gpus: int) -> None:
    admin = t.identity.user()
    t.identity.member(admin, project, "admin")
    assert _quota(t, t.identity.api_key(admin, project=project), project, "PUT", gpus).is_success


def test_a_job_over_the_quota_is_refused_and_one_that_must_wait_is_held(trainer, repo, tmp_path):
    t = trainer
    _user, project, key = _developer(t)
    _set_quota(t, project, 1)
    too_big = _submit(t, key, project, _spec(repo, resources={"gpus": 2}))
    assert too_big.status_code == 422
    assert too_big.json()["errors"][0]["field"] == "params.resources.gpus"

    sleeping = {"MODE": "sleep", "PID_FILE": str(tmp_path / "a.json")}
    first = _submit(
        t,
        key,
        project,
        _spec(repo, resources={"gpus": 1}, env=sleeping, backend_options={"grace_seconds": 0}),
    ).json()
    _wait(t, key, first["id"], {"running"})
    second = _submit(
        t,
        key,
        project,
        _spec(repo, resources={"gpus": 1}, env={**sleeping, "PID_FILE": str(tmp_path / "b.json")}),
    ).json()
    held = _wait(t, key, second["id"], {"held"}, timeout=10)
    assert held["status"] == "held", held
    assert "waiting for GPUs" in held["progress_message"]
    assert _quota(t, key, project).json()["in_use"] == 1
    # A job without GPUs is not held by the quota.
    cpu_only = _submit(t, key, project, _spec(repo, experiment="cpu")).json()
    assert _wait(t, key, cpu_only["id"], {"succeeded", "failed"})["status"] == "succeeded"

    # When the GPU is free, the held job starts.
    httpx.post(
        f"{t.url}/api/v1/jobs/{first['id']}/cancel", headers={"Authorization": f"Bearer {key}"}
    )
    started = _wait(t, key, second["id"], {"running", "succeeded", "failed"}, timeout=60)
    assert started["status"] == "running", started
    httpx.post(
        f"{t.url}/api/v1/jobs/{second['id']}/cancel", headers={"Authorization": f"Bearer {key}"}
    )
    assert _wait(t, key, second["id"], {"cancelled"})["status"] == "cancelled"


def test_raising_the_quota_starts_held_jobs_at_once(trainer, repo, tmp_path):
    t = trainer
    _user, project, key = _developer(t)
    _set_quota(t, project, 1)
    sleeping = {"MODE": "sleep", "PID_FILE": str(tmp_path / "a.json")}
    options = {"grace_seconds": 0}
    first = _submit(
        t, key, project, _spec(repo, resources={"gpus": 1}, env=sleeping, backend_options=options)
    ).json()
    _wait(t, key, first["id"], {"running"})
    second = _submit(
        t,
        key,
        project,
        _spec(
            repo,
            resources={"gpus": 1},
            env={**sleeping, "PID_FILE": str(tmp_path / "b.json")},
            backend_options=options,
        ),
    ).json()
    assert _wait(t, key, second["id"], {"held"}, timeout=10)["status"] == "held"
    _set_quota(t, project, 2)
    assert _wait(t, key, second["id"], {"running"}, timeout=30)["status"] == "running"
    for job in (first, second):
        httpx.post(
            f"{t.url}/api/v1/jobs/{job['id']}/cancel", headers={"Authorization": f"Bearer {key}"}
        )
        assert _wait(t, key, job["id"], {"cancelled"})["status"] == "cancelled"


def test_backends_are_listed_with_their_options(trainer):
    t = trainer
    _user, _project, key = _developer(t)
    body = httpx.get(
        f"{t.url}/api/v1/train/backends", headers={"Authorization": f"Bearer {key}"}
    ).json()
    by_name = {item["name"]: item for item in body["items"]}
    assert body["default"] == "local"
    assert {"local", "ray", "kubernetes"} <= set(by_name)
    assert "grace_seconds" in by_name["local"]["options_schema"]["properties"]
    assert by_name["ray"]["operator_options"] == ["address"]
    assert "kubeconfig" in by_name["kubernetes"]["operator_options"]


def test_operator_options_cannot_come_from_a_job(trainer, repo):
    t = trainer
    _user, project, key = _developer(t)
    answer = _submit(
        t,
        key,
        project,
        _spec(repo, backend="ray", backend_options={"address": "http://evil.example:8265"}),
    )
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == "params.backend_options.address"


# --------------------------------------------------------------------------- the wizard


HOSTILE = "<img src=x onerror=alert(1)>"


@contextmanager
def _browser(t: Any, user: Any) -> Iterator[httpx.Client]:
    """An HTTP client signed in to the UI as ``user`` (session cookie)."""
    from zhongtai.testing import ZtIdentity

    with httpx.Client(base_url=t.url, timeout=60) as client:
        yield _sign_in(client, user, ZtIdentity.DEFAULT_PASSWORD)


def _sign_in(client: httpx.Client, user: Any, password: str) -> httpx.Client:
    form = client.get("/ui/login")
    done = client.post(
        "/ui/login",
        data={
            "email": user.email,
            "password": password,
            "csrf_token": _csrf(form.text),
        },
    )
    assert done.status_code == 303, done.text[:500]
    return client


def _csrf(page: str) -> str:
    import re

    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page[:1000]
    return found.group(1)


def _fields(page: str) -> dict[str, str]:
    """The hidden fields a wizard page carries to the next step."""
    import html
    import re

    return {
        name: html.unescape(value)
        for name, value in re.findall(
            r'<input type="hidden" name="([a-z_0-9]+)" value="([^"]*)"', page
        )
    }


def test_the_wizard_validates_each_step_shows_the_request_and_runs(trainer, repo):
    import html

    t = trainer
    user, project, key = _developer(t)
    with _browser(t, user) as browser:
        page = browser.get(f"/ui/train/new?project={project.id}")
        assert page.status_code == 200 and "data-step-code" in page.text
        where = f"/ui/train/new?project={project.id}"
        # Step 1 with a transport git would run: refused, on step 1, next to the field.
        form = {
            **_fields(page.text),
            "csrf_token": _csrf(page.text),
            "step": "0",
            "action": "next",
            "code_kind": "git",
            "git_url": "ext::sh -c touch% /tmp/x",
            "git_commit": repo[1],
            "entry_point": "python\ntrain.py",
            "args": f"--note\n{HOSTILE}",
        }
        page = browser.post(where, data=form)
        assert "data-step-code" in page.text and 'id="git_url-error"' in page.text
        form["git_url"] = repo[0]
        page = browser.post(where, data=form)
        assert "data-step-data" in page.text, page.text[:2000]
        # Step 2: a version that is not this project's cannot be picked (no data plugin).
        form = {**_fields(page.text), "csrf_token": _csrf(page.text), "action": "next"}
        page = browser.post(where, data=form)
        assert "data-step-resources" in page.text
        # Step 3: bad hyperparameter syntax and a reserved variable are caught here.
        form = {
            **_fields(page.text),
            "csrf_token": _csrf(page.text),
            "action": "next",
            "hyperparameters": "lr 0.1",
            "env": "MODE=ok",
            "experiment": "wizard",
            "run_name": HOSTILE,
            "gpus": "0",
        }
        page = browser.post(where, data=form)
        assert "data-step-resources" in page.text and 'id="hyperparameters-error"' in page.text
        form["hyperparameters"] = "lr=0.5\nlayers=3"
        page = browser.post(where, data={**form, "csrf_token": _csrf(page.text)})
        assert "data-step-review" in page.text, page.text[:3000]
        # The review shows the exact request, with hostile text escaped.
        assert HOSTILE not in page.text
        shown = html.unescape(page.text.split("data-request-json>")[1].split("</pre>")[0])
        request = json.loads(shown)
        assert request["type"] == "train.run" and request["project"] == project.id
        assert request["params"]["hyperparameters"] == {"lr": 0.5, "layers": 3}
        assert request["params"]["args"] == ["--note", HOSTILE]
        # Run: a job is submitted and the page follows it.
        form = {**_fields(page.text), "csrf_token": _csrf(page.text), "action": "run"}
        done = browser.post(where, data=form)
        assert done.status_code == 303, done.text[:2000]
        assert done.headers["location"].startswith("/ui/train/jobs/")
        job_id = done.headers["location"].split("/")[-1].split("?")[0]
        job = _wait(t, key, job_id, {"succeeded", "failed"})
        assert job["status"] == "succeeded", _logs(t, key, job_id)
        page = browser.get(done.headers["location"])
        assert page.status_code == 200
        assert f"/api/v1/jobs/{job_id}/logs/stream" in page.text
        assert "data-run-live" in page.text and HOSTILE not in page.text
        # Someone of another project gets nothing.
        stranger, _other, _k = _developer(t)
        with _browser(t, stranger) as other:
            assert other.get(f"/ui/train/jobs/{job_id}").status_code == 404


# --------------------------------------------------------------------------- YAML specs


def _post_spec(t: Any, key: str, project: Any, body: str, content_type: str) -> httpx.Response:
    return httpx.post(
        f"{t.url}/api/v1/train/jobs",
        params={"project": project.id},
        content=body.encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": content_type},
        timeout=30,
    )


def test_a_yaml_spec_file_starts_a_training_job(trainer, repo):
    t = trainer
    _user, project, key = _developer(t)
    body = f"""
code:
  kind: git
  url: {repo[0]}
  commit: {repo[1]}
hyperparameters:
  lr: 0.5
experiment: from-yaml
"""
    answer = _post_spec(t, key, project, body, "application/yaml")
    assert answer.status_code == 201, answer.text
    job = _wait(t, key, answer.json()["id"], {"succeeded", "failed"})
    assert job["status"] == "succeeded", _logs(t, key, job["id"])
    assert job["type"] == "train.run" and job["params"]["hyperparameters"] == {"lr": 0.5}


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (
            "code: !!python/object/apply:os.system ['touch /tmp/zt-yaml-pwned']\n",
            "application/yaml",
            422,
        ),
        ("a: &a [x, x, x]\nb: &b [*a, *a, *a]\ncode: [*b, *b]\n", "application/yaml", 422),
        ("- just\n- a list\n", "text/yaml", 422),
        ("{not json", "application/json", 422),
        ("code: {kind: git}\n", "application/yaml", 422),
        ("code: x\n", "text/plain", 415),
    ],
)
def test_unsafe_or_malformed_spec_files_are_refused(trainer, body, content_type, status):
    t = trainer
    _user, project, key = _developer(t)
    answer = _post_spec(t, key, project, body, content_type)
    assert answer.status_code == status, answer.text
    assert not Path("/tmp/zt-yaml-pwned").exists()


def test_a_spec_file_for_another_project_finds_nothing(trainer, repo):
    t = trainer
    _user, _project, key = _developer(t)
    _other_user, other = t.identity.project_with("developer")
    body = json.dumps(_spec(repo))
    assert _post_spec(t, key, other, body, "application/json").status_code == 404


def test_the_quota_page_lets_admins_set_the_quota_and_shows_it_to_members(trainer):
    t = trainer
    developer, project, key = _developer(t)
    admin = t.identity.user()
    t.identity.member(admin, project, "admin")
    with _browser(t, admin) as browser:
        page = browser.get(f"/ui/train/quota?project={project.id}")
        assert page.status_code == 200 and "data-quota-form" in page.text
        done = browser.post(
            f"/ui/train/quota?project={project.id}",
            data={"csrf_token": _csrf(page.text), "action": "set", "gpus": "-3"},
        )
        assert 'id="gpus-error"' in done.text, (done.status_code, done.text[-3000:])
        done = browser.post(
            f"/ui/train/quota?project={project.id}",
            data={"csrf_token": _csrf(page.text), "action": "set", "gpus": "3"},
        )
        assert done.status_code == 303, done.text[:1000]
    assert _quota(t, key, project).json()["gpus"] == 3
    with _browser(t, developer) as browser:
        page = browser.get(f"/ui/train/quota?project={project.id}")
        assert page.status_code == 200
        assert "data-quota-form" not in page.text
        assert "data-quota-gpus>3" in page.text
