"""A newcomer's first model, from the UI alone, in a real browser: upload a CSV as a
dataset, train a scikit-learn model on it with the wizard (code from a local git
repository, the local backend), watch the job's page show its metrics, evaluate the
model and run a two-trial sweep through their forms, and read the results on the
evaluation's and the sweep's pages."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import pytest

from zhongtai.testing import (
    ZtIdentity,
    database_server_for_tests,
    serve_in_thread,
    throwaway_postgres,
)

pytestmark = pytest.mark.timeout(300)

# Hyperparameters arrive as --name=value; the dataset version at ZT_INPUT_POINTS.
TRAIN_PY = """
import os
import sys

import mlflow
import mlflow.sklearn
import pandas as pd
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import accuracy_score, log_loss

args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
frame = pd.read_csv(os.path.join(os.environ["ZT_INPUT_POINTS"], "points.csv"))
x, y = frame[["a", "b"]], frame["label"]
model = SGDClassifier(loss="log_loss", alpha=float(args.get("alpha", "0.001")), random_state=0)
with mlflow.start_run():
    for epoch in range(5):
        model.partial_fit(x, y, classes=[0, 1])
        mlflow.log_metric("loss", log_loss(y, model.predict_proba(x)), step=epoch)
        mlflow.log_metric("accuracy", accuracy_score(y, model.predict(x)), step=epoch)
    # Requirements named: inferring them takes seconds.
    mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])
print("trained", flush=True)
"""

PATIENCE = 120  # seconds for a page to show what a job did (training, a sweep)


def _git_repository(folder: Path) -> tuple[str, str]:
    """``train.py`` committed in a local repository: (file:// URL, commit)."""
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=folder, env=env, check=True, capture_output=True, text=True
        )
        return done.stdout.strip()

    (folder / "train.py").write_text(TRAIN_PY)
    git("init", "--quiet")
    git("add", ".")
    git("commit", "--quiet", "-m", "train")
    return f"file://{folder}", git("rev-parse", "HEAD")


@pytest.fixture(scope="module")
def platform_url(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, ZtIdentity]]:
    """A platform with the data and train plugins and MLflow's server, served on a port,
    able to run code from a local git repository."""
    from zhongtai.settings import load_settings
    from zhongtai.web.app import create_app
    from zhongtai_train.tracking import settings_of, tracking

    folder = tmp_path_factory.mktemp("train-newcomer")
    saved = {
        k: os.environ.pop(k)
        for k in list(os.environ)
        if k.startswith("ZHONGTAI_") and not k.startswith("ZHONGTAI_TEST_")
    }
    server = database_server_for_tests()
    database = (
        throwaway_postgres(server)
        if server is not None
        else nullcontext(f"sqlite:///{folder / 'zhongtai.db'}")
    )
    try:
        with database as database_url:
            settings = load_settings(
                home=folder / "home",
                database_url=database_url,
                log_format="text",
                access_log=False,
            )
            app = create_app(settings, plugins=["data", "train"], schema="upgrade")
            platform = app.state["platform"]
            try:
                with serve_in_thread(app) as url:
                    train = settings_of(platform)
                    train.job_tracking_uri = f"{url}/mlflow"
                    train.allow_file_git = True  # the repository is on this machine's disk
                    tracking(platform).ensure()
                    yield url, ZtIdentity(platform)
            finally:
                tracking(platform).stop()
                platform.close()
    finally:
        os.environ.update(saved)


def test_a_newcomer_trains_evaluates_and_sweeps_from_the_ui(platform_url, browser, pages, tmp_path):
    url, identity = platform_url
    user, _project = identity.project_with("developer")
    repo, commit = _git_repository(tmp_path)
    points = tmp_path / "points.csv"
    rows = [(((i * 7) % 23 - 11) / 5, ((i * 11) % 19 - 9) / 5) for i in range(200)]
    points.write_text("a,b,label\n" + "".join(f"{a},{b},{int(a + 2 * b > 0)}\n" for a, b in rows))

    context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    errors = pages.watch_errors(page)
    page.goto(f"{url}/ui/login")
    page.fill("#email", user.email)
    page.fill("#password", ZtIdentity.DEFAULT_PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(f"{url}/ui")

    # The data: a dataset with one committed version, uploaded from the browser.
    page.click("[data-panel='data.datasets']")
    page.fill("#dataset-name", "points")
    page.get_by_role("button", name="Create dataset", exact=True).click()
    page.get_by_role("button", name="New version", exact=True).click()
    page.wait_for_selector("[data-uploader]")
    page.set_input_files("[data-upload-files]", str(points))
    page.get_by_role("button", name="Upload", exact=True).click()
    page.wait_for_selector("tr[data-file='points.csv']")  # uploaded; the page reloaded
    page.fill("#commit-message", "first points")
    page.get_by_role("button", name="Commit", exact=True).click()
    page.wait_for_selector("[data-version='1']")

    # The wizard: code, data, resources, review, run.
    page.click("[data-panel='train.new']")
    page.fill("#git_url", repo)
    page.fill("#git_commit", commit)
    page.get_by_role("button", name="Next", exact=True).click()
    page.wait_for_selector("[data-step-data]")
    page.fill("#input_name_0", "points")
    page.select_option("#input_version_0", label="points v1")
    page.get_by_role("button", name="Next", exact=True).click()
    page.wait_for_selector("[data-step-resources]")
    page.fill("#experiment", "newcomer")
    page.fill("#hyperparameters", "alpha=0.001")
    page.get_by_role("button", name="Next", exact=True).click()
    assert '"type": "train.run"' in page.locator("[data-request-json]").inner_text()
    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_url(re.compile(r".*/ui/train/jobs/\w+\?.*"))
    training_page = page.url

    # The job's page shows the run's metrics as they come, then Evaluate… once it succeeded.
    accuracy = page.locator("[data-latest-metrics] tr[data-latest='accuracy'] [data-value]")
    pages.wait_until(lambda: accuracy.count() == 1, seconds=PATIENCE)
    evaluate = page.locator("[data-evaluate-link]")
    pages.wait_until(lambda: evaluate.count() == 1, seconds=PATIENCE)
    assert page.locator(".jobhead .badge").inner_text() == "succeeded"
    pages.wait_until(
        lambda: page.locator("figure[data-key='loss'] canvas").count() == 1, seconds=PATIENCE
    )
    assert float(accuracy.inner_text()) > 0.8
    pages.shot(page, "25-train-newcomer-job")

    # Evaluate: the project's only version and its CSV are picked already.
    evaluate.click()
    page.wait_for_selector("[data-evaluation-form]")
    assert page.locator("#file").input_value() == "points.csv"
    page.fill("#target", "label")
    page.get_by_role("button", name="Show the API request", exact=True).click()
    assert '"type": "train.evaluate"' in page.locator("[data-request-json]").inner_text()
    page.get_by_role("button", name="Start the evaluation", exact=True).click()
    page.wait_for_url(re.compile(r".*/ui/jobs/\w+\?.*"))
    evaluation_job = page.url

    # Meanwhile, a sweep of alpha from the same training job.
    page.goto(training_page)
    page.locator("[data-sweep-link]").click()
    page.wait_for_selector("[data-sweep-form]")
    assert page.locator("#metric").input_value() == "accuracy"  # the first the run logged
    page.fill("#space_name_0", "alpha")
    page.select_option("#space_kind_0", "log-float")
    page.fill("#space_low_0", "0.0001")
    page.fill("#space_high_0", "0.1")
    page.select_option("#direction", "maximize")
    page.select_option("#sampler", "random")
    page.fill("#trials", "2")
    page.fill("#parallelism", "2")
    page.fill("#seed", "1")
    page.get_by_role("button", name="Show the API request", exact=True).click()
    request = page.locator("[data-request-json]").inner_text()
    assert '"type": "train.sweep"' in request and '"log": true' in request
    pages.shot(page, "26-train-newcomer-sweep-form")
    page.get_by_role("button", name="Start the sweep", exact=True).click()
    page.wait_for_url(re.compile(r".*/ui/train/sweeps/\w+\?.*"))

    # The sweep's page fills its trial table as the trials end.
    completed = page.locator("[data-trials] [data-state='completed']")
    pages.wait_until(lambda: completed.count() == 2, seconds=PATIENCE)
    page.reload()
    assert page.locator("tr[data-trial][data-best]").count() == 1
    assert page.locator("[data-sweep-best] code").inner_text() != "—"
    pages.shot(page, "27-train-newcomer-sweep")

    # The evaluation's job ends; its page, found from the training job, has the metrics.
    page.goto(evaluation_job)
    pages.wait_until(
        lambda: page.locator("#job-head .badge").inner_text() in ("succeeded", "failed"),
        seconds=PATIENCE,
    )
    assert page.locator("#job-head .badge").inner_text() == "succeeded"
    page.goto(training_page)
    page.locator("[data-evaluations-link]").click()
    page.locator("[data-evaluations] tbody tr a").first.click()
    page.wait_for_selector("[data-evaluation]")
    score = page.locator("tr[data-metric='accuracy_score'] td.num").inner_text()
    assert float(score) > 0.8
    assert page.locator("[data-charts] figure").count() > 0
    pages.shot(page, "28-train-newcomer-evaluation")
    assert not errors, errors
    context.close()
