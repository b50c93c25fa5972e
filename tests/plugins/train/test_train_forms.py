"""Starting a sweep and an evaluation from the UI: the forms at ``/ui/train/sweeps/new``
and ``/ui/train/evaluations/new`` are filled from a training job or run, refuse bad input
next to its field (keeping it) with the API's own checks, show the API request, and
start real ``train.sweep`` and ``train.evaluate`` jobs; another project's job or run is
not found. One two-trial sweep and one evaluation actually run."""

from __future__ import annotations

import html
import io
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from zhongtai.testing import ZtIdentity

pytestmark = [pytest.mark.zt_plugins("train", "data"), pytest.mark.timeout(300)]

HOSTILE = "<img src=x onerror=alert(1)>"

# Arguments arrive as --name=value: loss = (x-2)**2, logged at two steps.
TRAIN_PY = r"""
import sys
import mlflow

args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
x = float(args.get("x", "0"))
with mlflow.start_run():
    for step in range(2):
        mlflow.log_metric("loss", (x - 2) ** 2 + (1 - step) * 0.5, step=step)
print("done", flush=True)
"""


# --------------------------------------------------------------------------- helpers


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page[:1500]
    return found.group(1)


@contextmanager
def _signed_in(url: str, user: Any) -> Iterator[httpx.Client]:
    """An HTTP client signed in to the UI as ``user`` (a session cookie)."""
    with httpx.Client(base_url=url, timeout=60) as client:
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
        yield client


def _value(page: str, name: str) -> str | None:
    """The value an input (or the text a textarea, or the option a select) shows."""
    found = re.search(rf'<input id="{name}" name="{name}"[^>]* value="([^"]*)"', page)
    if found:
        return html.unescape(found.group(1))
    found = re.search(rf'<textarea id="{name}" name="{name}"[^>]*>(.*?)</textarea>', page, re.S)
    if found:
        return html.unescape(found.group(1))
    select = re.search(rf'<select id="{name}" name="{name}".*?</select>', page, re.S)
    if select:
        chosen = re.search(r'<option value="([^"]*)" selected>', select.group(0))
        return html.unescape(chosen.group(1)) if chosen else None
    return None


def _error(page: str, field: str) -> str | None:
    found = re.search(rf'<p class="field-error" id="{field}-error" role="alert">(.*?)</p>', page)
    return html.unescape(found.group(1)) if found else None


def _request_shown(page: str) -> dict[str, Any]:
    shown = page.split("data-request-json>")[1].split("</pre>")[0]
    return dict(json.loads(html.unescape(shown)))


def _wait(url: str, key: str, job_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = httpx.get(
            f"{url}/api/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}
        ).json()
        if job["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return job
        time.sleep(0.3)


def _jobs(url: str, key: str, project: Any, job_type: str) -> list[str]:
    found = httpx.get(
        f"{url}/api/v1/jobs",
        params={"project": project.id, "type": job_type, "limit": 200},
        headers={"Authorization": f"Bearer {key}"},
    ).json()
    return [job["id"] for job in found["items"]]


# --------------------------------------------------------------------------- sweep form


@pytest.fixture(scope="module")
def trainer(tracked: Any) -> Any:
    """The module's ``tracked`` platform (train plugin only), able to run git code."""
    from zhongtai_train.tracking import settings_of

    settings = settings_of(tracked.platform)
    settings.job_tracking_uri = f"{tracked.url}/mlflow"
    settings.allow_file_git = True
    return tracked


@pytest.fixture(scope="module")
def base(trainer: Any, tmp_path_factory: pytest.TempPathFactory, git_code: Any) -> dict[str, Any]:
    """A developer's finished training job (its run logged ``loss``): the user, project,
    key and job."""
    url, commit = git_code(tmp_path_factory.mktemp("forms-code"), {"train.py": TRAIN_PY})
    user, project = trainer.identity.project_with("developer")
    key = trainer.identity.api_key(user, project=project)
    spec = {
        "code": {"kind": "git", "url": url, "commit": commit},
        "experiment": "forms",
        "run_name": "first",
        "hyperparameters": {"x": 1, "note": HOSTILE},
        "backend_options": {"grace_seconds": 1},
    }
    answer = httpx.post(
        f"{trainer.url}/api/v1/jobs",
        json={"type": "train.run", "project": project.id, "params": spec},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert answer.status_code == 201, answer.text
    job = _wait(trainer.url, key, answer.json()["id"])
    assert job["status"] == "succeeded", job
    return {"user": user, "project": project, "key": key, "job": job, "code": (url, commit)}


def _sweep_url(base: dict[str, Any], job_id: str | None = None) -> str:
    return f"/ui/train/sweeps/new?from={job_id or base['job']['id']}&project={base['project'].id}"


def _good_sweep(page: str) -> dict[str, str]:
    """The form as shown, with one searched parameter and a two-trial budget."""
    return {
        "csrf_token": _csrf(page),
        "rows": "3",
        "trial": _value(page, "trial") or "",
        "space_name_0": "x",
        "space_kind_0": "float",
        "space_low_0": "1.5",
        "space_high_0": "2.5",
        "metric": "loss",
        "direction": "minimize",
        "sampler": "random",
        "trials": "2",
        "parallelism": "2",
        "seed": "3",
        "pruner_startup_trials": "5",
        "pruner_warmup_steps": "0",
    }


def test_the_sweep_form_is_filled_from_the_training_job(trainer, base):
    job = base["job"]
    with _signed_in(trainer.url, base["user"]) as ui:
        # The training job's page offers it.
        page = ui.get(f"/ui/train/jobs/{job['id']}?project={base['project'].id}")
        assert page.status_code == 200
        assert f'href="/ui/train/sweeps/new?from={job["id"]}&amp;project=' in page.text
        assert "data-evaluate-link" in page.text  # it succeeded: its model can be evaluated

        page = ui.get(_sweep_url(base))
        assert page.status_code == 200, page.text[:2000]
        trial = json.loads(_value(page.text, "trial") or "")
        # The job's spec, without its run name (trials have their own) or defaults.
        assert trial["code"] == {"kind": "git", "url": base["code"][0], "commit": base["code"][1]}
        assert trial["experiment"] == "forms" and trial["hyperparameters"]["x"] == 1
        assert "run_name" not in trial and "env" not in trial
        assert _value(page.text, "metric") == "loss"  # what its run logged
        assert '<option value="loss">' in page.text
        assert _value(page.text, "sampler") == "tpe" and _value(page.text, "trials") == "10"
        assert "<code>x=1</code>" in page.text  # the fixed values, as they are
        assert HOSTILE not in page.text  # the hostile fixed value is shown as text

        # "Another parameter" adds a row and keeps what was typed.
        form = {**_good_sweep(page.text), "action": "more"}
        more = ui.post(_sweep_url(base), data=form)
        assert more.status_code == 200
        assert 'data-space-row="3"' in more.text and _value(more.text, "space_low_0") == "1.5"


@pytest.mark.parametrize(
    ("change", "field", "message", "kept"),
    [
        (
            {"space_name_0": "", "space_low_0": "", "space_high_0": ""},
            "space",
            "at least one",
            None,
        ),
        ({"space_low_0": "3", "space_high_0": "1"}, "space_high_0", "greater than low", "1"),
        ({"sampler": "cmaes"}, "sampler", "'grid', 'random' or 'tpe'", "cmaes"),
        ({"space_low_0": "abc"}, "space_low_0", "valid number", "abc"),
        ({"space_kind_0": "int", "space_low_0": "0.5"}, "space_low_0", "integer", "0.5"),
        ({"space_kind_0": "log-float", "space_low_0": "0"}, "space_low_0", "log scale", "0"),
        ({"space_kind_0": "categorical", "space_choices_0": ""}, "space_choices_0", "1 item", None),
        ({"space_name_0": "a b"}, "space_name_0", "not a parameter name", "a b"),
        ({"space_name_1": "x", "space_low_1": "1", "space_high_1": "2"}, "space_name_1", "", "x"),
        ({"trials": "0"}, "trials", "greater than or equal to 1", "0"),
        ({"metric": ""}, "metric", "required", ""),
        ({"trial": "{not json"}, "trial", "Not JSON", "{not json"),
        (
            {"trial": '{"code": {"kind": "git", "url": "ext::sh", "commit": "main"}}'},
            "trial",
            "code",
            None,
        ),
        ({"trial": '{"code": {"kind": "image", "image": "busybox:1"}}'}, "trial", "code", None),
    ],
)
def test_bad_sweep_input_is_shown_next_to_its_field_and_kept(
    trainer, base, change, field, message, kept
):
    before = _jobs(trainer.url, base["key"], base["project"], "train.sweep")
    with _signed_in(trainer.url, base["user"]) as ui:
        page = ui.get(_sweep_url(base))
        form = {**_good_sweep(page.text), **change, "action": "run"}
        answer = ui.post(_sweep_url(base), data=form)
    assert answer.status_code == 422, answer.text[:3000]
    shown = _error(answer.text, field)
    assert shown is not None and message in shown, (field, shown, answer.text[:3000])
    if kept is not None:
        assert _value(answer.text, field) == kept
    assert _value(answer.text, "metric") == form["metric"]  # the rest is kept too
    assert "data-request-json" not in answer.text
    assert _jobs(trainer.url, base["key"], base["project"], "train.sweep") == before


def test_the_sweep_form_is_not_found_for_another_projects_job(trainer, base):
    job_id = base["job"]["id"]
    # A user of another project, even naming their own project.
    stranger, theirs = trainer.identity.project_with("developer")
    with _signed_in(trainer.url, stranger) as ui:
        assert ui.get(f"/ui/train/sweeps/new?from={job_id}").status_code == 404
        page = ui.get(f"/ui/train/sweeps/new?from={job_id}&project={theirs.id}")
        assert page.status_code == 404 and base["code"][0] not in page.text
        form = ui.get(f"/ui/train/sweeps/new?project={theirs.id}")
        assert form.status_code == 200  # the form itself, without a job, is theirs to use
        posted = ui.post(
            f"/ui/train/sweeps/new?from={job_id}&project={theirs.id}",
            data={**_good_sweep(form.text), "action": "run"},
        )
        assert posted.status_code == 404
    # A member of both projects, with the other project chosen.
    user = base["user"]
    _again, other = trainer.identity.project_with("developer", user=user)
    with _signed_in(trainer.url, user) as ui:
        assert ui.get(f"/ui/train/sweeps/new?from={job_id}&project={other.id}").status_code == 404
        assert ui.get(_sweep_url(base, "0123456789abcdef")).status_code == 404
    # Starting jobs takes train.job.run: a viewer of the project is refused the form (as
    # the API refuses the job: 403) and is not offered it.
    viewer = trainer.identity.user()
    trainer.identity.member(viewer, base["project"], "viewer")
    with _signed_in(trainer.url, viewer) as ui:
        assert ui.get(_sweep_url(base)).status_code == 403
        job_page = ui.get(f"/ui/train/jobs/{job_id}?project={base['project'].id}")
        assert job_page.status_code == 200 and "data-sweep-link" not in job_page.text
        run_id = base["job"]["result"]["run_id"]
        run_page = ui.get(f"/ui/train/runs/{run_id}?project={base['project'].id}")
        assert run_page.status_code == 200 and "data-evaluations-link" in run_page.text
        assert "data-evaluate-link" not in run_page.text
    with _signed_in(trainer.url, user) as ui:
        run_page = ui.get(f"/ui/train/runs/{run_id}?project={base['project'].id}")
        assert "data-evaluate-link" in run_page.text


def test_a_good_sweep_form_shows_the_request_then_starts_the_sweep(trainer, base):
    project, key = base["project"], base["key"]
    with _signed_in(trainer.url, base["user"]) as ui:
        page = ui.get(_sweep_url(base))
        form = _good_sweep(page.text)
        # The searched x replaces the fixed x=1; the other fixed value stays.
        review = ui.post(_sweep_url(base), data={**form, "action": "review"})
        assert review.status_code == 200, review.text[:3000]
        request = _request_shown(review.text)
        assert request["type"] == "train.sweep" and request["project"] == project.id
        params = request["params"]
        assert params["space"] == {"x": {"type": "float", "low": 1.5, "high": 2.5}}
        assert params["trial"]["hyperparameters"] == {"note": HOSTILE}
        assert (params["metric"], params["sampler"], params["trials"]) == ("loss", "random", 2)
        assert "curl -X POST" in review.text and "/api/v1/jobs" in review.text
        assert HOSTILE not in review.text

        done = ui.post(_sweep_url(base), data={**form, "action": "run"})
        assert done.status_code == 303, done.text[:3000]
        location = done.headers["location"]
        assert location.startswith("/ui/train/sweeps/")
        sweep_id = location.split("/")[-1].split("?")[0]
        assert f"project={project.id}" in location
        job = _wait(trainer.url, key, sweep_id)
        assert job["type"] == "train.sweep" and job["owner"] == base["user"].id
        assert job["params"]["space"]["x"] == {
            "type": "float",
            "low": 1.5,
            "high": 2.5,
            "step": None,
            "log": False,
        }
        assert job["status"] == "succeeded", job
        assert job["result"]["completed"] == 2
        assert 1.5 <= job["result"]["best_params"]["x"] <= 2.5
        shown = ui.get(location)
        assert shown.status_code == 200
        assert len(re.findall(r'<tr data-trial="\d+"', shown.text)) == 2
        assert "data-evaluate-best" in shown.text  # its best trial's model, next
    # As the API would, the UI records who started it.
    from sqlalchemy import select

    from zhongtai.identity.models import AuditEvent

    with trainer.platform.db.session() as session:
        actions = session.scalars(
            select(AuditEvent.action).where(AuditEvent.target_id == sweep_id)
        ).all()
    assert "job.submit" in actions


def test_the_evaluation_form_says_so_without_the_data_plugin(trainer, base):
    run_id = base["job"]["result"]["run_id"]
    url = f"/ui/train/evaluations/new?run={run_id}&project={base['project'].id}"
    with _signed_in(trainer.url, base["user"]) as ui:
        page = ui.get(url)
        assert page.status_code == 200, page.text[:2000]
        assert "data-no-data-plugin" in page.text
        assert _value(page.text, "run_id") == run_id
        form = {
            "csrf_token": _csrf(page.text),
            "run_id": run_id,
            "dataset_version": "0123456789abcdef",
            "file": "test.csv",
            "target": "label",
            "evaluator": "classifier",
            "action": "run",
        }
        answer = ui.post(url, data=form)
    assert answer.status_code == 422
    assert "need the data plugin" in (_error(answer.text, "dataset_version") or "")
    assert _value(answer.text, "dataset_version") == "0123456789abcdef"


# --------------------------------------------------------------------------- evaluation form


@dataclass
class Evaluating:
    url: str
    platform: Any
    identity: ZtIdentity
    user: Any
    project: Any
    key: str
    run_id: str
    version_id: str
    theirs: dict[str, Any]


def _csv(rows: int) -> bytes:
    lines = ["a,b,label"]
    for i in range(rows):
        a, b = (i * 7 % 11) - 5, (i * 5 % 13) - 6
        lines.append(f"{a},{b},{int(a + b > 0)}")
    return ("\n".join(lines) + "\n").encode()


def _dataset(url: str, key: str, project: Any, files: dict[str, bytes]) -> str:
    """A committed version of a new dataset with ``files``, made through the API; its id."""
    headers = {"Authorization": f"Bearer {key}"}
    api = f"{url}/api/v1/data/datasets"
    made = httpx.post(api, json={"project": project.id, "name": "holdout"}, headers=headers)
    assert made.status_code == 201, made.text
    dataset = made.json()["id"]
    draft = httpx.post(f"{api}/{dataset}/versions", json={}, headers=headers)
    assert draft.status_code == 201, draft.text
    for path, content in files.items():
        added = httpx.post(
            f"{api}/{dataset}/versions/{draft.json()['id']}/files",
            data={"path": path},
            files={"file": (path, io.BytesIO(content), "text/csv")},
            headers=headers,
        )
        assert added.status_code == 201, added.text
    done = httpx.post(
        f"{api}/{dataset}/versions/{draft.json()['id']}/commit", json={}, headers=headers
    )
    assert done.status_code == 200, done.text
    return str(done.json()["id"])


def _log_model(url: str, key: str) -> str:
    """A run with a logistic regression logged by the standard client; its id."""
    import mlflow
    from sklearn.linear_model import LogisticRegression

    rows = [line.split(",") for line in _csv(40).decode().splitlines()[1:]]
    x = [[float(a), float(b)] for a, b, _label in rows]
    y = [int(label) for _a, _b, label in rows]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"{url}/mlflow")
        patch.setenv("MLFLOW_TRACKING_TOKEN", key)
        patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        patch.delenv("MLFLOW_WORKSPACE", raising=False)
        mlflow.set_tracking_uri(f"{url}/mlflow")
        mlflow.set_experiment("models")
        with mlflow.start_run() as run:
            mlflow.sklearn.log_model(  # requirements named: inferring them takes seconds
                LogisticRegression().fit(x, y), name="model", pip_requirements=["scikit-learn"]
            )
        return str(run.info.run_id)


def _run_without_model(url: str, key: str) -> str:
    """A run of another project, made through MLflow's REST API; its id."""
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=f"{url}/mlflow/api/2.0/mlflow/", headers=headers) as client:
        made = client.post("experiments/create", json={"name": "elsewhere"})
        assert made.status_code == 200, made.text
        experiment = made.json()["experiment_id"]
        run = client.post("runs/create", json={"experiment_id": experiment, "start_time": 0})
        assert run.status_code == 200, run.text
        return str(run.json()["run"]["info"]["run_id"])


@pytest.fixture(scope="module")
def ev(tmp_path_factory: pytest.TempPathFactory, start_tracked: Any) -> Iterator[Evaluating]:
    """A platform with the data plugin too (an evaluation reads a dataset version), a
    developer's project with a model and a dataset, and another project's."""
    from zhongtai_train.tracking import settings_of

    home = tmp_path_factory.mktemp("forms-evaluate") / "home"
    with start_tracked(home, plugins=("train", "data")) as tracked:
        url, identity = tracked.url, tracked.identity
        settings_of(tracked.platform).job_tracking_uri = f"{url}/mlflow"
        user, project = identity.project_with("developer")
        key = identity.api_key(user, project=project)
        other_user, other_project = identity.project_with("developer")
        other_key = identity.api_key(other_user, project=other_project)
        yield Evaluating(
            url=url,
            platform=tracked.platform,
            identity=identity,
            user=user,
            project=project,
            key=key,
            run_id=_log_model(url, key),
            version_id=_dataset(url, key, project, {"test.csv": _csv(30)}),
            theirs={
                "user": other_user,
                "project": other_project,
                "dataset_version": _dataset(url, other_key, other_project, {"theirs.csv": _csv(5)}),
                "run_id": _run_without_model(url, other_key),
            },
        )


def _evaluation_url(ev: Evaluating, run_id: str | None = None) -> str:
    return f"/ui/train/evaluations/new?run={run_id or ev.run_id}&project={ev.project.id}"


def _good_evaluation(ev: Evaluating, page: str) -> dict[str, str]:
    return {
        "csrf_token": _csrf(page),
        "run_id": ev.run_id,
        "model_path": "model",
        "dataset_version": ev.version_id,
        "file": "test.csv",
        "target": "label",
        "evaluator": "classifier",
        "backend": "",
        "cpu": "1",
        "memory_mb": "2048",
        "gpus": "0",
        "timeout": "",
    }


def test_the_evaluation_form_offers_the_projects_data_and_the_evaluators(ev):
    with _signed_in(ev.url, ev.user) as ui:
        run_page = ui.get(f"/ui/train/runs/{ev.run_id}?project={ev.project.id}")
        assert run_page.status_code == 200
        assert f'href="/ui/train/evaluations/new?run={ev.run_id}&amp;project=' in run_page.text
        page = ui.get(_evaluation_url(ev))
    assert page.status_code == 200, page.text[:2000]
    assert _value(page.text, "run_id") == ev.run_id
    assert _value(page.text, "dataset_version") == ev.version_id  # the only one: picked
    assert _value(page.text, "file") == "test.csv" and _value(page.text, "model_path") == "model"
    assert '<option value="label">' in page.text  # the columns the data plugin knows
    assert _value(page.text, "evaluator") == "classifier"
    assert '<option value="regressor">' in page.text
    # Only this project's data is offered.
    assert ev.theirs["dataset_version"] not in page.text and "theirs.csv" not in page.text
    assert "data-no-data-plugin" not in page.text


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"dataset_version": "theirs"}, "dataset_version", "no such committed version"),
        ({"dataset_version": "0123456789abcdef"}, "dataset_version", "no such committed"),
        ({"dataset_version": "../x"}, "dataset_version", "dataset version id"),
        ({"run_id": "theirs"}, "run_id", "no such run in this project"),
        ({"file": "missing.csv"}, "file", "no such file"),
        ({"file": "notes.txt"}, "file", "CSV"),
        ({"target": "nope"}, "target", "no column 'nope'"),
        ({"target": ""}, "target", "required"),
        ({"evaluator": "nonesuch"}, "evaluator", "no evaluator 'nonesuch'"),
        ({"backend": "slurm"}, "backend", "slurm"),
        ({"cpu": "lots"}, "cpu", "valid number"),
        ({"timeout": "1"}, "timeout", "greater than or equal to 10"),
    ],
)
def test_bad_evaluation_input_is_shown_next_to_its_field_and_kept(ev, change, field, message):
    given = {k: ev.theirs[k] if v == "theirs" else v for k, v in change.items()}
    before = _jobs(ev.url, ev.key, ev.project, "train.evaluate")
    with _signed_in(ev.url, ev.user) as ui:
        page = ui.get(_evaluation_url(ev))
        form = {**_good_evaluation(ev, page.text), **given, "action": "run"}
        answer = ui.post(_evaluation_url(ev), data=form)
    assert answer.status_code == 422, answer.text[:3000]
    shown = _error(answer.text, field)
    assert shown is not None and message in shown, (field, shown)
    assert _value(answer.text, field) == given[field]
    assert _value(answer.text, "target") == form["target"]
    assert _jobs(ev.url, ev.key, ev.project, "train.evaluate") == before


def test_the_evaluation_form_is_not_found_for_another_projects_run(ev):
    theirs = ev.theirs["run_id"]
    with _signed_in(ev.url, ev.user) as ui:
        assert ui.get(_evaluation_url(ev, theirs)).status_code == 404
        assert ui.get(_evaluation_url(ev, "0" * 32)).status_code == 404
    with _signed_in(ev.url, ev.theirs["user"]) as ui:
        mine = f"/ui/train/evaluations/new?run={ev.run_id}&project={ev.theirs['project'].id}"
        assert ui.get(mine).status_code == 404
        assert ui.get(f"/ui/train/evaluations/new?run={ev.run_id}").status_code == 404


def test_a_good_evaluation_form_starts_the_evaluation(ev):
    from sqlalchemy import select

    from zhongtai_train.evaluation_models import Evaluation

    with _signed_in(ev.url, ev.user) as ui:
        page = ui.get(_evaluation_url(ev))
        form = _good_evaluation(ev, page.text)
        review = ui.post(_evaluation_url(ev), data={**form, "action": "review"})
        assert review.status_code == 200, review.text[:3000]
        request = _request_shown(review.text)
        assert request["type"] == "train.evaluate" and request["project"] == ev.project.id
        assert request["params"] == {
            "run_id": ev.run_id,
            "model_path": "model",
            "dataset_version": ev.version_id,
            "file": "test.csv",
            "target": "label",
            "evaluator": "classifier",
            "resources": {"cpu": 1, "memory_mb": 2048, "gpus": 0},
        }
        done = ui.post(_evaluation_url(ev), data={**form, "action": "run"})
        assert done.status_code == 303, done.text[:3000]
        location = done.headers["location"]
        assert location.startswith("/ui/jobs/")
        job_id = location.split("/")[-1].split("?")[0]
        job = _wait(ev.url, ev.key, job_id)
        assert job["type"] == "train.evaluate" and job["owner"] == ev.user.id
        assert job["status"] == "succeeded", job
        assert job["result"]["metrics"]["accuracy_score"] > 0.5
        assert ui.get(location).status_code == 200
    with ev.platform.db.session() as session:
        row = session.scalars(select(Evaluation).where(Evaluation.job_id == job_id)).one()
    assert (row.run_id, row.dataset_version, row.status) == (
        ev.run_id,
        ev.version_id,
        "succeeded",
    )
