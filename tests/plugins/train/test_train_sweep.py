"""``train.sweep`` end to end on the local backend: Optuna asks, each trial is a real
``train.run`` child job whose script logs ``loss = (x-2)**2 + y`` through MLflow, and
the sweep reads the metric back, prunes, cancels, and shows its trials in the API and
on its page."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from zhongtai.testing import ZtIdentity

pytestmark = [pytest.mark.zt_plugins("train"), pytest.mark.timeout(600)]

HOSTILE = "<img src=x onerror=alert(1)>"

# Arguments arrive as --name=value. With slow=true, a trial whose first loss is over 1
# stops after step 0 and sleeps (until it is pruned or cancelled).
TRAIN_PY = r"""
import sys, time
import mlflow

args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
x, y = float(args.get("x", "0")), float(args.get("y", "0"))
loss = (x - 2) ** 2 + y
with mlflow.start_run():
    for step in range(3):
        mlflow.log_metric("loss", loss + (2 - step) * 0.5, step=step)
        if args.get("slow") == "true" and loss > 1:
            print("sleeping", flush=True)
            time.sleep(300)
print("done", flush=True)
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, git_code: Any) -> tuple[str, str]:
    """A git repository with train.py; (file URL, commit)."""
    return git_code(tmp_path_factory.mktemp("sweep-code"), {"train.py": TRAIN_PY})


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory, start_tracked: Any) -> Iterator[Any]:
    from zhongtai_train.tracking import settings_of

    with start_tracked(tmp_path_factory.mktemp("train-sweep") / "home") as tracked:
        settings = settings_of(tracked.platform)
        settings.job_tracking_uri = f"{tracked.url}/mlflow"
        settings.allow_file_git = True
        yield tracked


@pytest.fixture(scope="module")
def member(trainer: Any) -> tuple[Any, Any, str]:
    """A developer of a new project: (user, project, API key)."""
    user, project = trainer.identity.project_with("developer")
    return user, project, trainer.identity.api_key(user, project=project)


def _sweep(repo: tuple[str, str], **extra: Any) -> dict[str, Any]:
    url, commit = repo
    spec: dict[str, Any] = {
        "trial": {
            "code": {"kind": "git", "url": url, "commit": commit},
            "experiment": "sweeps",
            "backend_options": {"grace_seconds": 1},
        },
        "space": {"x": {"type": "float", "low": 0, "high": 4}},
        "metric": "loss",
    }
    for key, value in extra.items():
        if key == "fixed":
            spec["trial"]["hyperparameters"] = value
        else:
            spec[key] = value
    return spec


def _get(t: Any, key: str, path: str, **params: Any) -> httpx.Response:
    return httpx.get(
        f"{t.url}{path}", params=params, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def _submit(t: Any, key: str, project: Any, spec: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{t.url}/api/v1/jobs",
        json={"type": "train.sweep", "project": project.id, "params": spec},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def _wait(
    t: Any, key: str, job_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 240
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = _get(t, key, f"/api/v1/jobs/{job_id}").json()
        if until(job) or time.monotonic() > deadline:
            return job
        time.sleep(0.3)


def _finished(job: dict[str, Any]) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


def _logs(t: Any, key: str, job_id: str) -> list[str]:
    body = _get(t, key, f"/api/v1/jobs/{job_id}/logs", limit=1000).json()
    return [line["line"] for line in body["items"]]


def _children(t: Any, key: str, project: Any, sweep_id: str) -> list[dict[str, Any]]:
    items = _get(t, key, "/api/v1/jobs", project=project.id, type="train.run", limit=200).json()
    return [job for job in items["items"] if job["parent"] == sweep_id]


def _run_sweep(t: Any, member: Any, spec: dict[str, Any]) -> dict[str, Any]:
    _user, project, key = member
    answer = _submit(t, key, project, spec)
    assert answer.status_code == 201, answer.text
    job = _wait(t, key, answer.json()["id"], _finished)
    assert job["status"] == "succeeded", (job, _logs(t, key, job["id"]))
    return job


@pytest.fixture(scope="module")
def grid_sweep(trainer: Any, member: Any, repo: tuple[str, str]) -> dict[str, Any]:
    """A finished grid sweep over two categorical parameters, one with a hostile value."""
    spec = _sweep(
        repo,
        space={
            "x": {"type": "categorical", "choices": [1, 3]},
            "note": {"type": "categorical", "choices": [HOSTILE, "plain"]},
        },
        sampler="grid",
        trials=50,  # more than the grid: the grid's 4 points are the budget
        parallelism=2,
    )
    return _run_sweep(trainer, member, spec)


# --------------------------------------------------------------------------- searching


def test_a_random_sweep_runs_its_trials_as_child_jobs_and_finds_the_best(trainer, member, repo):
    t = trainer
    _user, project, key = member
    spec = _sweep(
        repo,
        space={
            "x": {"type": "float", "low": 0, "high": 4},
            "y": {"type": "int", "low": 0, "high": 2},
        },
        fixed={"epochs": 3},
        sampler="random",
        seed=7,
        trials=4,
        parallelism=2,
    )
    job = _run_sweep(t, member, spec)
    result = job["result"]
    assert result["study"] == f"sweep-{job['id']}"
    assert result["trials"] == 4 and result["completed"] == 4, _logs(t, key, job["id"])[-30:]

    # Four train.run children, parented by the sweep, never more than two at once.
    children = _children(t, key, project, job["id"])
    assert len(children) == 4
    assert all(c["status"] == "succeeded" and c["owner"] == job["owner"] for c in children)
    assert sorted(c["params"]["run_name"] for c in children) == [f"trial-{n}" for n in range(4)]
    spans = sorted((c["started_at"], c["finished_at"]) for c in children)
    for start, _end in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 2, spans

    # The best, computed again from the trials' own MLflow runs.
    losses = {}
    for child in children:
        run = _get(t, key, f"/api/v1/train/runs/{child['result']['run_id']}").json()
        assert run["params"]["epochs"] == "3"  # the fixed hyperparameter went along
        x, y = float(run["params"]["x"]), int(run["params"]["y"])
        assert run["metrics"]["loss"]["value"] == pytest.approx((x - 2) ** 2 + y)
        losses[child["id"]] = (run["metrics"]["loss"]["value"], x, y, run["id"])
    best_job = min(losses, key=lambda job_id: losses[job_id][0])
    value, x, y, run_id = losses[best_job]
    assert result["best_value"] == pytest.approx(value)
    assert result["best_params"]["x"] == pytest.approx(x) and result["best_params"]["y"] == y
    assert result["best_job_id"] == best_job and result["best_run_id"] == run_id

    # The API lists the four trials, the best one flagged.
    sweep = _get(t, key, f"/api/v1/train/sweeps/{job['id']}").json()
    assert sweep["status"] == "succeeded" and sweep["metric"] == "loss"
    assert [trial["number"] for trial in sweep["trials"]] == [0, 1, 2, 3]
    assert all(trial["state"] == "completed" for trial in sweep["trials"])
    flagged = [trial for trial in sweep["trials"] if trial["best"]]
    assert len(flagged) == 1 and flagged[0]["number"] == result["best_trial"]
    assert flagged[0]["job"] == best_job and flagged[0]["run"] == run_id
    assert sweep["best"]["number"] == result["best_trial"]
    assert sweep["counts"] == {"completed": 4}
    lines = _logs(t, key, job["id"])
    assert any(line.startswith("[sweep] best: trial") for line in lines), lines


def test_a_grid_sweep_covers_exactly_the_grid(trainer, member, grid_sweep):
    t = trainer
    _user, project, key = member
    result = grid_sweep["result"]
    assert result["trials"] == 4 and result["completed"] == 4
    sweep = _get(t, key, f"/api/v1/train/sweeps/{grid_sweep['id']}").json()
    seen = sorted((trial["params"]["x"], trial["params"]["note"]) for trial in sweep["trials"])
    assert seen == sorted(itertools.product([1, 3], [HOSTILE, "plain"]))
    assert sweep["budget"] == 4
    assert result["best_params"]["x"] in (1, 3)  # both are 1 away from 2: equally good
    assert len(_children(t, key, project, grid_sweep["id"])) == 4


def test_a_trial_that_never_logs_the_metric_fails(trainer, member, repo):
    t = trainer
    _user, project, key = member
    spec = _sweep(repo, metric="accuracy", trials=1, sampler="random")
    answer = _submit(t, key, project, spec)
    assert answer.status_code == 201, answer.text
    job = _wait(t, key, answer.json()["id"], _finished)
    assert job["status"] == "failed" and "no trial completed" in job["error"], job
    sweep = _get(t, key, f"/api/v1/train/sweeps/{job['id']}").json()
    (trial,) = sweep["trials"]
    assert trial["state"] == "failed" and "'accuracy' was never logged" in trial["reason"]
    assert trial["job_status"] == "succeeded"  # the training itself went well
    assert any("was never logged" in line for line in _logs(t, key, job["id"]))


# --------------------------------------------------------------------------- pruning, cancel


def test_pruning_stops_a_bad_trial_and_cancels_its_job(trainer, member, repo):
    t = trainer
    _user, _project, key = member
    # x=2 finishes quickly with a low loss; x=5 logs 9.0 at step 0 and sleeps: once
    # x=2 completed (the one startup trial), the median rule prunes it.
    spec = _sweep(
        repo,
        space={"x": {"type": "categorical", "choices": [2, 5]}},
        fixed={"slow": True},
        sampler="grid",
        trials=2,
        parallelism=2,
        pruning=True,
        pruner_startup_trials=1,
    )
    job = _run_sweep(t, member, spec)
    assert job["result"]["completed"] == 1 and job["result"]["pruned"] == 1
    assert job["result"]["best_params"] == {"x": 2}
    sweep = _get(t, key, f"/api/v1/train/sweeps/{job['id']}").json()
    pruned = next(trial for trial in sweep["trials"] if trial["state"] == "pruned")
    assert pruned["params"] == {"x": 5} and pruned["last_step"] == 0
    assert "pruned at step 0" in pruned["reason"]
    child = _wait(t, key, pruned["job"], _finished, timeout=60)
    assert child["status"] == "cancelled", child


def test_cancelling_the_sweep_cancels_its_running_trials(trainer, member, repo):
    t = trainer
    _user, project, key = member
    spec = _sweep(
        repo,
        space={"x": {"type": "categorical", "choices": [5, 6]}},
        fixed={"slow": True},
        sampler="grid",
        trials=2,
        parallelism=2,
    )
    answer = _submit(t, key, project, spec)
    assert answer.status_code == 201, answer.text
    sweep_id = answer.json()["id"]
    deadline = time.monotonic() + 120
    while True:
        running = [c for c in _children(t, key, project, sweep_id) if c["status"] == "running"]
        if len(running) == 2 and all("sleeping" in _logs(t, key, c["id"]) for c in running):
            break
        assert time.monotonic() < deadline, _logs(t, key, sweep_id)
        time.sleep(0.5)
    cancel = httpx.post(
        f"{t.url}/api/v1/jobs/{sweep_id}/cancel",
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert cancel.status_code == 202, cancel.text
    job = _wait(t, key, sweep_id, _finished, timeout=60)
    assert job["status"] == "cancelled", job
    for child in running:
        assert _wait(t, key, child["id"], _finished, timeout=60)["status"] == "cancelled"
    sweep = _get(t, key, f"/api/v1/train/sweeps/{sweep_id}").json()
    assert [trial["state"] for trial in sweep["trials"]] == ["failed", "failed"]
    assert all(trial["reason"] == "the sweep was cancelled" for trial in sweep["trials"])


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            {"space": {"lr": {"type": "float", "low": 0, "high": 1, "log": True}}},
            "params.space.lr.low",
        ),
        ({"space": {"lr": {"type": "float", "low": 1, "high": 1}}}, "params.space.lr.high"),
        (
            {"space": {"n": {"type": "int", "low": 1, "high": 64, "log": True, "step": 2}}},
            "params.space.n.step",
        ),
        ({"sampler": "grid"}, "params.space.x.step"),
        ({"space": {"epochs": {"type": "int", "low": 1, "high": 5}}}, "params.space.epochs"),
        ({"space": {"a b": {"type": "int", "low": 1, "high": 5}}}, "params.space"),
        ({"space": {"c": {"type": "categorical", "choices": []}}}, "params.space.c"),
        ({"space": {"c": {"type": "categorical", "choices": [True, 1]}}}, "params.space.c.choices"),
        ({"space": {"c": {"type": "normal", "low": 0, "high": 1}}}, "params.space.c"),
        ({"space": {}}, "params.space"),
        ({"trials": 0}, "params.trials"),
        ({"parallelism": 100}, "params.parallelism"),
        ({"sampler": "cmaes"}, "params.sampler"),
        ({"direction": "sideways"}, "params.direction"),
        ({"metric": "loss; drop"}, "params.metric"),
        (
            {"trial": {"code": {"kind": "git", "url": "ext::sh", "commit": "main"}}},
            "params.trial.code",
        ),
        (
            {
                "trial": {
                    "code": {"kind": "git", "url": "https://e.com/r.git", "commit": "main"},
                    "backend": "slurm",
                }
            },
            "params.trial.backend",
        ),
    ],
)
def test_bad_specs_are_refused_naming_the_field(trainer, member, repo, change, field):
    t = trainer
    _user, project, key = member
    spec = {**_sweep(repo, fixed={"epochs": 3}), **change}
    answer = _submit(t, key, project, spec)
    assert answer.status_code == 422, answer.text
    keys = [item["field"] for item in answer.json()["errors"]]
    assert any(k == field or k.startswith(field + ".") for k in keys), keys


# --------------------------------------------------------------------------- access, page


def test_another_projects_user_gets_404(trainer, member, grid_sweep):
    t = trainer
    stranger, other = t.identity.project_with("owner")
    key = t.identity.api_key(stranger, project=other)
    answer = _get(t, key, f"/api/v1/train/sweeps/{grid_sweep['id']}")
    assert answer.status_code == 404
    assert _get(t, key, "/api/v1/train/sweeps/0123456789abcdef").status_code == 404
    # A job that is not a sweep is not one, even to its own project.
    _user, project, own = member
    children = _children(t, own, project, grid_sweep["id"])
    assert _get(t, own, f"/api/v1/train/sweeps/{children[0]['id']}").status_code == 404


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page[:1500]
    return found.group(1)


def _browser(t: Any, user: Any) -> httpx.Client:
    client = httpx.Client(base_url=t.url, timeout=60)
    form = client.get("/ui/login")
    done = client.post(
        "/ui/login",
        data={
            "email": user.email,
            "password": ZtIdentity.DEFAULT_PASSWORD,
            "csrf_token": _csrf(form.text),
        },
    )
    assert done.status_code == 303, done.text[:500]
    return client


def test_the_sweep_page_shows_the_trials_escaped_and_the_charts(trainer, member, grid_sweep):
    t = trainer
    user, project, _key = member
    ui = _browser(t, user)
    try:
        page = ui.get(f"/ui/train/sweeps/{grid_sweep['id']}?project={project.id}")
        assert page.status_code == 200, page.text[:2000]
        text = page.text
        assert HOSTILE not in text  # escaped everywhere, in the table and in data-*
        assert "&lt;img src=x onerror=alert(1)&gt;" in text
        rows = re.findall(r'<tr data-trial="(\d+)"( class="best" data-best)?>', text)
        assert sorted(int(n) for n, _best in rows) == [0, 1, 2, 3]
        assert sum(1 for _n, best in rows if best) == 1
        assert text.count('data-scatter data-param="') == 2  # one chart per parameter
        assert 'data-param="x"' in text and 'data-param="note"' in text
        assert "/ui/static/train/sweep.js" in text and "uPlot.iife.min.js" in text
        assert 'data-live="false"' in text
        assert f'href="/ui/train/runs/{grid_sweep["result"]["best_run_id"]}?project=' in text
        script = ui.get("/ui/static/train/sweep.js")
        assert script.status_code == 200 and "textContent" in script.text
        assert "innerHTML" not in script.text

        # Another project's page does not show it.
        _other_user, other = t.identity.project_with("owner", user=user)
        elsewhere = ui.get(f"/ui/train/sweeps/{grid_sweep['id']}?project={other.id}")
        assert HOSTILE not in elsewhere.text and 'data-trial="0"' not in elsewhere.text
    finally:
        ui.close()


# Threads that need Optuna first at the same moment, as a sweep's worker and the sweep's
# page do: each one would once get "cannot import name … from partially initialized
# module" (seen as a 500 on the sweep page of a platform that had run no sweep yet).
FIRST_IMPORTS = r"""
import sys, threading
from zhongtai_train import sweep

assert "optuna" not in sys.modules
failures = []
barrier = threading.Barrier(4)

def call(fn, *args):
    def run():
        barrier.wait()
        try:
            fn(*args)
        except Exception as exc:
            failures.append(repr(exc))
    return threading.Thread(target=run)

spec = sweep.SweepSpec.model_validate({
    "trial": {"code": {"kind": "git", "url": "https://example.com/r.git", "commit": "a" * 40}},
    "space": {"x": {"type": "float", "low": 0, "high": 1}},
    "metric": "loss",
})
threads = [
    call(sweep._best, [], "minimize"),
    call(sweep.distributions, spec),
    call(sweep._best, [], "maximize"),
    call(sweep.distributions, spec),
]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(failures)
sys.exit(1 if failures else 0)
"""


@pytest.mark.parametrize("attempt", range(3))
def test_threads_that_first_need_optuna_at_once_all_get_it(attempt):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", FIRST_IMPORTS], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
