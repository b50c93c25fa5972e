"""The train plugin's pages over HTTP: experiments, an experiment's runs, a run, a
comparison. The data comes from the standard ``mlflow`` client through ``/mlflow``;
the pages are read by a browser-like client signed in with a session cookie."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from zhongtai.testing import ZtIdentity

pytestmark = pytest.mark.zt_plugins("train")

HOSTILE = "<img src=x onerror=alert(1)>"


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page[:1500]
    return found.group(1)


@pytest.fixture
def browse(tracked: Any) -> Iterator[Callable[[Any], httpx.Client]]:
    """``browse(user)``: an HTTP client signed in to the UI as ``user`` (session cookie)."""
    clients: list[httpx.Client] = []

    def sign_in(user: Any) -> httpx.Client:
        client = httpx.Client(base_url=tracked.url, timeout=60)
        clients.append(client)
        form = client.get("/ui/login")
        done = client.post(
            "/ui/login",
            data={
                "email": user.email,
                "password": ZtIdentity.DEFAULT_PASSWORD,
                "csrf_token": csrf_of(form.text),
            },
        )
        assert done.status_code == 303, done.text[:500]
        return client

    yield sign_in
    for client in clients:
        client.close()


def mlflow_as(tracked: Any, monkeypatch: pytest.MonkeyPatch, key: str) -> MlflowClient:
    tracked.use(monkeypatch, key)
    return MlflowClient(tracking_uri=tracked.tracking_uri)


@pytest.fixture
def member(tracked: Any, monkeypatch: pytest.MonkeyPatch, browse: Any) -> Any:
    """A developer of a new project: (ui client, mlflow client, project)."""
    user, project = tracked.identity.project_with("developer")
    client = mlflow_as(tracked, monkeypatch, tracked.identity.api_key(user, project=project))
    return browse(user), client, project


def test_signed_out_the_pages_ask_to_sign_in(tracked):
    with httpx.Client(base_url=tracked.url) as client:
        answer = client.get("/ui/train/experiments")
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/ui/login?next=")


def test_experiments_are_listed_searched_and_paginated(member):
    ui, client, project = member
    mnist = client.create_experiment("mnist")
    for name in ("run-a", "run-b"):
        client.create_run(mnist, run_name=name)
    client.create_experiment("cifar-10")

    page = ui.get(f"/ui/train/experiments?project={project.id}")
    assert page.status_code == 200
    assert 'data-panel="train.experiments"' in page.text  # in the navigation
    row = re.search(rf'<tr data-experiment="{mnist}">(.*?)</tr>', page.text, re.S)
    assert row and "mnist" in row.group(1)
    assert re.search(r"<td data-run-count>2</td>", row.group(1))
    assert f'href="/ui/train/experiments/{mnist}?project={project.id}"' in row.group(1)
    assert "cifar-10" in page.text

    found = ui.get(f"/ui/train/experiments?project={project.id}&q=CIFAR")
    assert "cifar-10" in found.text and "mnist" not in found.text
    nothing = ui.get(f"/ui/train/experiments?project={project.id}&q=zzz")
    assert "No experiment matches." in nothing.text

    # More than a page (50): a "Next page" link that carries the search on.
    for i in range(51):
        client.create_experiment(f"sweep-{i:02d}")
    first = ui.get(f"/ui/train/experiments?project={project.id}&q=sweep")
    assert first.text.count("<tr data-experiment=") == 50
    following = re.search(r'<nav class="pager"><a href="([^"]+)"', first.text)
    assert following, "no pager"
    link = html.unescape(following.group(1))
    assert "q=sweep" in link and "cursor=" in link
    second = ui.get(link)
    assert second.text.count("<tr data-experiment=") == 1
    assert '<nav class="pager">' not in second.text


def test_the_project_filter_shows_every_project_of_the_user(tracked, member, monkeypatch):
    ui, client, project = member
    client.create_experiment("here")
    owner, other = tracked.identity.project_with("owner")
    theirs = mlflow_as(tracked, monkeypatch, tracked.identity.api_key(owner, project=other))
    theirs.create_experiment("there")
    page = ui.get(f"/ui/train/experiments?project={project.id}&scope=all")
    assert "here" in page.text and "there" not in page.text  # not a member there
    tracked.identity.member(ui_user(tracked, project), other, "viewer")
    shown = ui.get(f"/ui/train/experiments?project={project.id}&scope=all")
    assert "here" in shown.text and "there" in shown.text
    assert other.name in shown.text  # the project column
    only = ui.get(f"/ui/train/experiments?project={project.id}")
    assert "there" not in only.text


def ui_user(tracked: Any, project: Any) -> Any:
    """The one member of ``project`` (the ``member`` fixture's user)."""
    from sqlalchemy import select

    from zhongtai.identity.models import ProjectMember, User

    with tracked.platform.db.session() as session:
        user = session.scalars(
            select(User)
            .join(ProjectMember, ProjectMember.user_id == User.id)
            .where(ProjectMember.project_id == project.id)
        ).one()
        session.expunge(user)
        return user


def test_an_experiment_page_filters_its_runs(member):
    ui, client, project = member
    exp = client.create_experiment("tuning")
    runs = {}
    for name, loss in (("good", 0.2), ("bad", 0.9), ("live", 0.4)):
        run = client.create_run(exp, run_name=name).info.run_id
        client.log_metric(run, "loss", loss, step=3)
        client.log_metric(run, "system/cpu_utilization_percentage", 12.0, step=0)
        runs[name] = run
    client.set_terminated(runs["good"])
    client.set_terminated(runs["bad"], status="FAILED")

    base = f"/ui/train/experiments/{exp}?project={project.id}"
    page = ui.get(base)
    assert page.status_code == 200
    assert "data-experiment-name>tuning<" in page.text
    for run in runs.values():
        assert f'<tr data-run="{run}">' in page.text
        assert f'name="runs" value="{run}"' in page.text  # a checkbox to compare it
    assert 'data-metric-column="loss"' in page.text
    assert 'data-metric-column="system/' not in page.text  # system metrics stay out
    assert 'action="/ui/train/compare"' in page.text and 'data-max="20"' in page.text
    assert "badge-succeeded" in page.text and "badge-failed" in page.text
    assert "badge-running" in page.text

    finished = ui.get(base + "&status=FINISHED")
    assert runs["good"] in finished.text and runs["bad"] not in finished.text
    low = ui.get(base, params={"metric": "loss<0.5"})
    assert runs["good"] in low.text and runs["live"] in low.text and runs["bad"] not in low.text
    named = ui.get(base, params={"q": "BA"})
    assert runs["bad"] in named.text and runs["good"] not in named.text

    wrong = ui.get(base, params={"metric": "loss is low"})
    assert wrong.status_code == 200
    assert 'id="metric-error"' in wrong.text and "expected &lt;key&gt;&lt;op&gt;" in wrong.text
    status = ui.get(base, params={"status": "SLEEPING"})
    assert 'id="status-error"' in status.text and "Not a status: SLEEPING" in status.text


def test_a_run_page_shows_everything_of_the_run(member, tmp_path):
    ui, client, project = member
    exp = client.create_experiment("resnet")
    run = client.create_run(exp, run_name="baseline", tags={"team": "vision"}).info.run_id
    client.log_param(run, "lr", "0.01")
    client.log_param(run, "optimizer", "adam")
    for step in range(5):
        client.log_metric(run, "loss", 1.0 / (step + 1), step=step)
        client.log_metric(run, "val/acc", 0.5 + step / 10, step=step)
    client.log_metric(run, "system/gpu_0_utilization_percentage", 93.0, step=0)
    (tmp_path / "notes.txt").write_text("hello artifacts")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(b"\x00\x01weights")
    client.log_artifact(run, str(tmp_path / "notes.txt"))
    client.log_artifacts(run, str(tmp_path / "model"), artifact_path="model")

    url = f"/ui/train/runs/{run}?project={project.id}"
    started = time.perf_counter()
    page = ui.get(url)
    assert page.status_code == 200, page.text[:2000]
    assert time.perf_counter() - started < 5
    text = page.text
    assert "data-run-name>baseline<" in text
    assert '<tr data-param="lr"><td>lr</td><td><code>0.01</code></td></tr>' in text
    assert '<tr data-tag="team"><td>team</td><td>vision</td></tr>' in text
    assert 'data-latest="loss"' in text and 'data-latest="val/acc"' in text
    # One chart per key, system metrics in their own group; live while RUNNING.
    metrics = text.split('data-chart-group="metrics"')[1].split('data-chart-group="system"')[0]
    assert 'data-key="loss"' in metrics and 'data-key="val/acc"' in metrics
    assert "system/" not in metrics
    system = text.split('data-chart-group="system"')[1]
    assert 'data-key="system/gpu_0_utilization_percentage"' in system
    assert 'data-run-live="true"' in text and 'data-status="RUNNING"' in text
    assert f'data-series-url="/api/v1/train/runs/{run}/metrics/"' in text
    assert "/ui/static/train/train.js" in text and "uPlot.iife.min.js" in text
    # What the chart script asks for: the downsampled series, with the session cookie.
    series = ui.get(f"/api/v1/train/runs/{run}/metrics/val/acc", params={"max_points": 600})
    assert series.status_code == 200 and series.json()["steps"] == [0, 1, 2, 3, 4]
    assert ui.get(f"/api/v1/train/runs/{run}").json()["status"] == "RUNNING"

    # Artifacts: a folder to open, files that download as attachments.
    assert 'data-artifact="model"' in text and 'data-artifact="notes.txt"' in text
    folder = ui.get(url, params={"path": "model"})
    assert 'data-artifact="model/weights.bin"' in folder.text and "data-artifact-up" in folder.text
    link = re.search(r'<a href="([^"]+)" download data-file>weights.bin</a>', folder.text)
    assert link, folder.text
    download = ui.get(html.unescape(link.group(1)))
    assert download.status_code == 200 and download.content == b"\x00\x01weights"
    assert download.headers["content-disposition"].startswith("attachment")
    note = re.search(r'<a href="([^"]+)" download data-file>notes.txt</a>', text)
    assert note and ui.get(html.unescape(note.group(1))).text == "hello artifacts"
    bad = ui.get(url, params={"path": "../../etc"})
    assert bad.status_code == 200 and "form-error" in bad.text

    client.set_terminated(run)
    done = ui.get(url)
    assert 'data-run-live="false"' in done.text and 'data-status="FINISHED"' in done.text


def test_compare_runs_side_by_side(member):
    ui, client, project = member
    exp = client.create_experiment("sweep")
    ids = []
    for i, lr in enumerate(("0.1", "0.01", "0.01")):
        run = client.create_run(exp, run_name=f"lr-{i}").info.run_id
        client.log_param(run, "lr", lr)
        client.log_param(run, "batch", "64")
        client.log_metric(run, "loss", 0.5 - i / 10, step=1)
        ids.append(run)
    page = ui.get(
        "/ui/train/compare", params=[("project", project.id)] + [("runs", r) for r in ids]
    )
    assert page.status_code == 200
    text = page.text
    for run in ids:
        assert f'<th data-run="{run}">' in text
    assert re.search(r'<tr data-param="lr" class="differs" data-differs>', text)
    assert '<tr data-param="batch">' in text  # the same everywhere: not highlighted
    assert "1 of 2 parameters differ" in text
    assert '<tr data-metric="loss">' in text
    assert 'data-compare-chart data-key="loss"' in text
    runs_json = re.search(r"data-runs='([^']+)'", text).group(1)
    assert all(run in html.unescape(runs_json) for run in ids)

    # The same list as runs=a,b and with no run at all.
    joined = ui.get("/ui/train/compare", params={"project": project.id, "runs": ",".join(ids)})
    assert all(f'<th data-run="{run}">' in joined.text for run in ids)
    empty = ui.get("/ui/train/compare", params={"project": project.id})
    assert "Pick runs to compare" in empty.text

    # More than 20: a clear error, nothing compared.
    many = ids + [client.create_run(exp, run_name=f"extra-{i}").info.run_id for i in range(18)]
    too_many = ui.get(
        "/ui/train/compare", params=[("project", project.id)] + [("runs", r) for r in many]
    )
    assert too_many.status_code == 200
    assert "Compare at most 20 runs at a time: 21 were picked." in too_many.text
    assert "<th data-run=" not in too_many.text
    twenty = ui.get(
        "/ui/train/compare", params=[("project", project.id)] + [("runs", r) for r in many[:20]]
    )
    assert twenty.text.count("<th data-run=") == 20


def test_hostile_strings_are_inert_on_every_page(member):
    ui, client, project = member
    exp = client.create_experiment(HOSTILE)
    client.set_experiment_tag(exp, "note", HOSTILE)
    # MLflow allows any text in names and values (keys are restricted to [\w./ :-]).
    run = client.create_run(exp, run_name=HOSTILE, tags={"label": HOSTILE}).info.run_id
    client.log_param(run, "note", HOSTILE)
    client.log_param(run, "quote", "it's \"quoted\" & 'single'")
    client.log_metric(run, "loss", 0.5)
    other = client.create_run(exp, run_name="plain").info.run_id
    client.log_param(other, "note", "plain")
    pages = {
        "list": ui.get(f"/ui/train/experiments?project={project.id}"),
        "all": ui.get(f"/ui/train/experiments?project={project.id}&scope=all"),
        "experiment": ui.get(f"/ui/train/experiments/{exp}?project={project.id}"),
        "run": ui.get(f"/ui/train/runs/{run}?project={project.id}"),
        "compare": ui.get(
            "/ui/train/compare", params=[("project", project.id), ("runs", run), ("runs", other)]
        ),
    }
    escaped = html.escape(HOSTILE, quote=False)
    for name, page in pages.items():
        assert page.status_code == 200, name
        assert "<img" not in page.text, name
        assert escaped in page.text or "\\u003cimg" in page.text, name
    assert "it&#39;s &#34;quoted&#34; &amp; &#39;single&#39;" in pages["run"].text
    # In the JSON the compare page hands its script, the name stays a string.
    runs_json = re.search(r"data-runs='([^']+)'", pages["compare"].text).group(1)
    assert "\\u003cimg src=x onerror=alert(1)\\u003e" in runs_json


def test_another_projects_experiment_and_run_are_not_found(tracked, member, monkeypatch):
    ui, _client, project = member
    owner, other = tracked.identity.project_with("owner")
    theirs = mlflow_as(tracked, monkeypatch, tracked.identity.api_key(owner, project=other))
    exp = theirs.create_experiment("secret-experiment")
    run = theirs.create_run(exp, run_name="secret-run").info.run_id
    theirs.log_param(run, "secret-param", "x")

    missing_run = ui.get(f"/ui/train/runs/{'0' * 32}?project={project.id}")
    missing_exp = ui.get(f"/ui/train/experiments/999999?project={project.id}")
    assert missing_run.status_code == missing_exp.status_code == 404
    for url in (
        f"/ui/train/runs/{run}?project={project.id}",
        f"/ui/train/runs/{run}",
        f"/ui/train/experiments/{exp}?project={project.id}",
        f"/ui/train/runs/not-an-id?project={project.id}",
        f"/ui/train/compare?project={project.id}&runs={run}",
    ):
        page = ui.get(url)
        assert page.status_code == 404, url
        assert page.text == missing_run.text, url
        assert "secret" not in page.text
    # Naming the other project outright is the same: not found.
    assert ui.get(f"/ui/train/runs/{run}?project={other.id}").status_code == 404

    # A run of another project the user does see is not shown under the wrong project.
    tracked.identity.member(ui_user(tracked, project), other, "viewer")
    assert ui.get(f"/ui/train/runs/{run}?project={project.id}").status_code == 404
    shown = ui.get(f"/ui/train/runs/{run}?project={other.id}")
    assert shown.status_code == 200 and "secret-run" in shown.text


def test_a_run_of_100k_points_renders_fast(tracked, member):
    from mlflow.store.tracking.dbmodels.models import SqlMetric
    from sqlalchemy import insert

    from zhongtai_train.tracking import tracking

    ui, client, project = member
    exp = client.create_experiment("long")
    run = client.create_run(exp, run_name="long-run").info.run_id
    start = int(time.time() * 1000)
    first = [Metric("loss", 1.0, start, 0)] + [
        Metric("loss", 1.0 / (1 + i / 1000), start + i, i) for i in range(1, 1000)
    ]
    client.log_batch(run, metrics=first)
    # The middle of the series straight into MLflow's table: the client would take half a
    # minute for it (MLflow's log_batch does about 8,000 points/s), the page is the same.
    rows = [
        {
            "key": "loss",
            "value": 1.0 / (1 + i / 1000),
            "timestamp": start + i,
            "step": i,
            "is_nan": False,
            "run_uuid": run,
        }
        for i in range(1000, 99_999)
    ]
    with tracking(tracked.platform).engine.begin() as conn:
        conn.execute(insert(SqlMetric.__table__), rows)
    client.log_metric(run, "loss", 1.0 / 100.999, timestamp=start + 99_999, step=99_999)
    client.set_terminated(run)

    url = f"/ui/train/runs/{run}?project={project.id}"
    ui.get(url)  # the first request of the kind warms things up
    started = time.perf_counter()
    page = ui.get(url)
    took = time.perf_counter() - started
    assert page.status_code == 200 and 'data-key="loss"' in page.text
    assert took < 1.0, f"{took:.2f} s"
    assert len(page.content) < 200_000  # the points are not in the page

    started = time.perf_counter()
    series = ui.get(f"/api/v1/train/runs/{run}/metrics/loss", params={"max_points": 2000})
    took = time.perf_counter() - started
    body = series.json()
    assert body["total"] == 100_000 and body["points"] <= 2000, body["total"]
    assert body["steps"][0] == 0 and body["steps"][-1] == 99_999
    assert took < 1.0, f"{took:.2f} s"


def test_the_pages_speak_chinese_and_mlflow_s_own_ui_leads_here(tracked, monkeypatch, browse):
    from sqlalchemy import update

    from zhongtai.identity.models import User

    user, project = tracked.identity.project_with("developer")
    client = mlflow_as(tracked, monkeypatch, tracked.identity.api_key(user, project=project))
    exp = client.create_experiment("语言")
    client.create_run(exp, run_name="first")
    with tracked.platform.db.transaction() as session:
        session.execute(update(User).where(User.id == user.id).values(language="zh-CN"))
    ui = browse(user)
    page = ui.get(f"/ui/train/experiments/{exp}?project={project.id}")
    assert page.status_code == 200
    assert "运行名称" in page.text and "指标阈值" in page.text and "Run name" not in page.text
    moved = ui.get("/mlflow/", follow_redirects=False)
    assert moved.status_code == 302 and moved.headers["location"] == "/ui/train/experiments"
