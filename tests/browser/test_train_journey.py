"""The train plugin in a real browser: a training script that uses nothing but ``mlflow``
logs a loss while its run page is open, and the loss curve grows on the page until the
run finishes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

from zhongtai.testing import (
    ZtIdentity,
    database_server_for_tests,
    serve_in_thread,
    throwaway_postgres,
)

SCRIPT = """
import time

import mlflow

mlflow.set_experiment("live-mnist")
with mlflow.start_run(run_name="live-run") as run:
    mlflow.log_param("lr", 0.1)
    print("RUN", run.info.run_id, flush=True)
    for step in range(34):  # about 10 s
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        # Named as MLflow's system metrics monitor names them (it needs psutil).
        mlflow.log_metric("system/cpu_utilization_percentage", 40.0 + step % 5, step=step)
        time.sleep(0.3)
print("DONE", flush=True)
"""


@pytest.fixture(scope="module")
def platform_url(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Any, ZtIdentity]]:
    """A platform with the train plugin and its MLflow server, served on a port (as
    ``tests/plugins/train/conftest.py``'s ``tracked``), and one maker of identities."""
    from contextlib import nullcontext

    from zhongtai.settings import load_settings
    from zhongtai.web.app import create_app
    from zhongtai_train.tracking import tracking

    folder = tmp_path_factory.mktemp("train-browser")
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
            app = create_app(settings, plugins=["train"], schema="upgrade")
            platform = app.state["platform"]
            with serve_in_thread(app) as url:
                tracking(platform).ensure()
                yield url, platform, ZtIdentity(platform)
            platform.close()
    finally:
        os.environ.update(saved)


def test_a_live_loss_curve_while_the_script_runs(platform_url, browser, pages, tmp_path):
    url, _platform, identity = platform_url
    user, project = identity.project_with("developer")
    key = identity.api_key(user, project=project)
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        "MLFLOW_TRACKING_URI": f"{url}/mlflow",
        "MLFLOW_TRACKING_TOKEN": key,
    }

    context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    errors = pages.watch_errors(page)
    page.goto(f"{url}/ui/login")
    page.fill("#email", user.email)
    page.fill("#password", ZtIdentity.DEFAULT_PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(f"{url}/ui")

    log = tmp_path / "stderr.txt"
    training = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    try:
        line = training.stdout.readline()
        assert line.startswith("RUN "), line + log.read_text()[-3000:]
        run_id = line.split()[1]

        # From the navigation to the experiment, then to the run, while it runs.
        page.click("[data-panel='train.experiments']")
        page.wait_for_selector("[data-experiments] [data-run-count]")
        pages.shot(page, "19-train-experiments")
        page.get_by_role("link", name="live-mnist", exact=True).click()
        page.wait_for_selector(f"tr[data-run='{run_id}']")
        assert page.locator(f"tr[data-run='{run_id}'] .badge").inner_text() == "running"
        pages.shot(page, "20-train-experiment")
        page.get_by_role("link", name="live-run", exact=True).click()
        page.wait_for_url(f"{url}/ui/train/runs/{run_id}*")
        root = page.locator("[data-run-live]")
        assert root.get_attribute("data-run-live") == "true"
        assert page.locator("[data-run-status]").inner_text() == "running"

        loss = page.locator("figure[data-key='loss']")

        def total() -> int:
            if loss.count() == 0:
                return 0
            return int(loss.get_attribute("data-total") or 0)

        pages.wait_until(lambda: total() > 0)
        first = total()
        assert training.poll() is None, "the script ended before the page read its points"
        pages.wait_until(lambda: total() > first, seconds=20)  # the curve grew on the page
        second = total()
        assert first < second < 34
        assert loss.locator("canvas").count() == 1  # drawn by uPlot
        system = page.locator("[data-chart-group='system'] figure[data-key^='system/']")
        pages.wait_until(lambda: system.count() == 1)
        pages.shot(page, "21-train-run-live")

        assert training.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if training.poll() is None:
            training.kill()
            training.wait()

    # The script ended: the page sees the run finished, with every point, and stops.
    badge = page.locator("[data-run-status]")
    pages.wait_until(lambda: badge.get_attribute("data-status") == "FINISHED", seconds=20)
    assert badge.inner_text() == "finished"
    assert root.get_attribute("data-run-live") == "false"
    assert total() == 34
    assert page.locator("tr[data-latest='loss'] [data-value]").inner_text() == str(
        float(f"{1 / 34:.6g}")
    )
    refreshed = int(root.get_attribute("data-refreshed") or 0)
    time.sleep(4)  # longer than the page's refresh interval: no more requests
    assert int(root.get_attribute("data-refreshed") or 0) == refreshed
    pages.shot(page, "22-train-run-finished")
    assert not errors, errors
    context.close()


def test_compare_runs_with_overlaid_curves(platform_url, browser, pages, monkeypatch, tmp_path):
    """Three runs picked on the experiment's page; the comparison highlights the
    parameter that differs and draws one curve per run. A hostile run name stays text."""
    from mlflow import MlflowClient

    url, _platform, identity = platform_url
    user, project = identity.project_with("developer")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", identity.api_key(user, project=project))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client = MlflowClient(tracking_uri=f"{url}/mlflow")
    experiment = client.create_experiment("sweep")
    names = ["lr-0.1", "lr-0.01", "<img src=x onerror=alert(1)>"]
    for i, name in enumerate(names):
        run = client.create_run(experiment, run_name=name).info.run_id
        client.log_param(run, "lr", ["0.1", "0.01", "0.001"][i])
        client.log_param(run, "batch", "64")
        for step in range(0, 50, 1 + i):  # different steps per run: joined on one axis
            client.log_metric(run, "loss", (1 + i) / (step + 1), step=step)
        client.set_terminated(run)

    context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    errors = pages.watch_errors(page)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{url}/ui/login")
    page.fill("#email", user.email)
    page.fill("#password", ZtIdentity.DEFAULT_PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(f"{url}/ui")
    page.goto(f"{url}/ui/train/experiments/{experiment}?project={project.id}")
    compare = page.get_by_role("button", name="Compare", exact=True)
    assert compare.is_disabled()  # nothing picked yet
    for box in page.locator("[data-pick]").all():
        box.check()
    assert page.locator("[data-compare-form]").get_attribute("data-picked") == "3"
    pages.shot(page, "23-train-pick-runs")
    compare.click()
    page.wait_for_url(f"{url}/ui/train/compare*")
    figure = page.locator("figure[data-compare-chart][data-key='loss']")
    pages.wait_until(lambda: figure.get_attribute("data-series") == "3")
    assert figure.locator("canvas").count() == 1
    assert page.locator("tr[data-param='lr']").get_attribute("class") == "differs"
    assert page.locator("tr[data-param='batch']").get_attribute("class") is None
    legend = figure.locator(".u-legend").inner_text()
    assert names[2] in legend  # the name as text, not markup
    pages.shot(page, "24-train-compare")
    assert page.locator("img").count() == 0 and not dialogs
    assert not errors, errors
    context.close()
