"""Training jobs (issue 8): what the ``train.run`` machinery costs over running the
code directly, and a sweep's against plain Optuna.

One data directory is seeded with a developer in one project and a key scoped to it
(``bench/tracking.py``'s ``seed``), and ``zhongtai serve`` starts with the train plugin on
the embedded defaults (SQLite, the embedded queue with its default 4 worker threads),
``file://`` git code allowed. A git repository holds ``train.py``, which prints a line,
then (per its arguments) works for a while and logs one metric to MLflow. Measured, each
against a baseline taken in the same run:

* **submit to first line**: ``POST /api/v1/jobs`` of a trivial job until the script's
  own first line is in ``GET /api/v1/jobs/{id}/logs`` (median of ``--repeat``). The
  baseline printed for reference is the interpreter's start: ``python train.py`` until
  its first line. Target ≤ 1 s.
* **local backend overhead**: a job whose script works ``--seconds`` (30; quick 10)
  seconds, submit to ``succeeded``, against the same script run directly with the same
  interpreter and environment (``MLFLOW_TRACKING_URI`` pointed at the platform, so it
  logs the same metric the same way). Target ≤ 1.10x.
* **sweep**: ``train.sweep`` of ``--trials`` (50; quick 12) trials of the trivial
  script with parallelism 2 (random sampler), submit to ``succeeded``, against the same
  trials run directly: ``optuna.create_study().optimize(objective, n_trials, n_jobs=2)``
  in this process, where each objective starts ``python train.py --x=…`` as a
  subprocess that logs its metric to the platform's MLflow, and reads the metric from
  the process's output. Target ≤ 1.3x.

Run: ``.venv/bin/python bench/training.py [--quick] [--repeat 5] [--seconds 30]
[--trials 50]``. Prints the figures and PASS/FAIL, writes
``bench/results/training.json``; exits 0 whatever the verdicts.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PYTHON, RESULTS, machine, scratch_dir, verdict, zhongtai_server
from tracking import seed

TARGET_FIRST_LINE = 1.0
TARGET_OVERHEAD = 1.10
TARGET_SWEEP = 1.3

TRAIN_PY = r"""
import os, sys, time
print("first line", flush=True)
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
work = float(args.get("work", "0"))
deadline = time.monotonic() + work
n = 0
while time.monotonic() < deadline:
    n += 1
x = float(args.get("x", "0"))
loss = (x - 2.0) ** 2
import mlflow
with mlflow.start_run():
    mlflow.log_metric("loss", loss, step=0)
print(f"loss {loss}", flush=True)
"""


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.com",
    }
    done = subprocess.run(
        ["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def make_repo(folder: Path) -> tuple[str, str]:
    folder.mkdir()
    git(folder, "init", "--quiet")
    (folder / "train.py").write_text(TRAIN_PY)
    git(folder, "add", ".")
    git(folder, "commit", "--quiet", "-m", "bench")
    return f"file://{folder}", git(folder, "rev-parse", "HEAD")


class Api:
    def __init__(self, base: str, key: str, project: str) -> None:
        self.base, self.project = base, project
        self.client = httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )

    def submit(self, job_type: str, params: dict[str, Any]) -> str:
        answer = self.client.post(
            "/api/v1/jobs", json={"type": job_type, "project": self.project, "params": params}
        )
        answer.raise_for_status()
        return str(answer.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.client.get(f"/api/v1/jobs/{job_id}").json()
        return found

    def lines(self, job_id: str) -> list[str]:
        body = self.client.get(f"/api/v1/jobs/{job_id}/logs", params={"limit": 500}).json()
        return [item["line"] for item in body["items"]]

    def wait(self, job_id: str, poll: float = 0.05, timeout: float = 3600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(poll)
        raise TimeoutError(job_id)


def first_line(api: Api, code: dict[str, str]) -> float:
    start = time.perf_counter()
    job_id = api.submit("train.run", {"code": code, "experiment": "bench-first-line"})
    while "first line" not in api.lines(job_id):
        if time.perf_counter() - start > 120:
            raise TimeoutError(api.job(job_id))
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    job = api.wait(job_id)
    assert job["status"] == "succeeded", job
    return elapsed


def direct_env(base: str, key: str) -> dict[str, str]:
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"{base}/mlflow",
        "MLFLOW_TRACKING_TOKEN": key,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "PYTHONUNBUFFERED": "1",
    }


def direct_experiment(base: str, key: str) -> str:
    """An experiment of the project for the directly run script (the job makes its own)."""
    answer = httpx.post(
        f"{base}/mlflow/api/2.0/mlflow/experiments/create",
        json={"name": "bench-direct"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=180,
    )
    answer.raise_for_status()
    return str(answer.json()["experiment_id"])


def interpreter_first_line(repo: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(PYTHON), "train.py"], cwd=repo, env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    elapsed = time.perf_counter() - start
    proc.communicate()
    return elapsed


def direct_run(repo: Path, env: dict[str, str], *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(
        [str(PYTHON), "train.py", *args],
        cwd=repo,
        env=env,
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"train.py {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0)
    parser.add_argument("--trials", type=int, default=0)
    args = parser.parse_args()
    seconds = args.seconds or (10.0 if args.quick else 30.0)
    trials = args.trials or (12 if args.quick else 50)
    figures: dict[str, Any] = {"machine": machine()}
    with scratch_dir("zt-bench-training-") as work:
        home = work / "home"
        home.mkdir()
        secret = secrets.token_urlsafe(48)
        url = f"sqlite:///{home / 'zhongtai.db'}"
        project, key = seed(home, url, secret)
        repo_url, commit = make_repo(work / "code")
        code = {"kind": "git", "url": repo_url, "commit": commit}
        server = zhongtai_server(
            home,
            work / "zhongtai.log",
            bytecode_cache=True,
            access_log=False,
            env={
                "ZHONGTAI_DATABASE_URL": url,
                "ZHONGTAI_SECRET_KEY": secret,
                "ZHONGTAI_PLUGINS": "train",
                "ZHONGTAI_TRAIN__ALLOW_FILE_GIT": "true",
                "ZHONGTAI_LOG_LEVEL": "WARNING",
            },
        )
        with server:
            server.wait_ready(timeout=120)
            base = f"http://127.0.0.1:{server.port}"
            api = Api(base, key, project)
            env = direct_env(base, key)
            print(f"{machine()}; warming up (MLflow's server starts on first use) …")
            env["MLFLOW_EXPERIMENT_ID"] = direct_experiment(base, key)
            direct_run(work / "code", env)  # starts MLflow's server, warms the caches
            first_line(api, code)

            # 1. submit -> first line
            samples = [first_line(api, code) for _ in range(args.repeat)]
            start_line = statistics.median(
                interpreter_first_line(work / "code", env) for _ in range(args.repeat)
            )
            first = statistics.median(samples)
            figures["first_line_s"] = first
            figures["interpreter_first_line_s"] = start_line
            print(
                f"submit to first log line: {first * 1000:.0f} ms (median of {args.repeat}; "
                f"python itself prints its first line after {start_line * 1000:.0f} ms) "
                f"(<= {TARGET_FIRST_LINE:.0f} s) {verdict(first <= TARGET_FIRST_LINE)}"
            )

            # 2. local backend overhead on a long script (alternating, one each)
            direct_s, _out = direct_run(work / "code", env, f"--work={seconds}")
            start = time.perf_counter()
            job_id = api.submit(
                "train.run",
                {"code": code, "args": [f"--work={seconds}"], "experiment": "bench-overhead"},
            )
            job = api.wait(job_id)
            job_s = time.perf_counter() - start
            assert job["status"] == "succeeded", job
            ratio = job_s / direct_s
            figures["overhead"] = {"seconds": seconds, "job_s": job_s, "direct_s": direct_s}
            print(
                f"a {seconds:.0f}-second script: {job_s:.2f} s as a job, {direct_s:.2f} s "
                f"run directly: {ratio:.3f}x (<= {TARGET_OVERHEAD}) "
                f"{verdict(ratio <= TARGET_OVERHEAD)}"
            )

            # 3. a sweep against plain Optuna with 2 parallel trials
            start = time.perf_counter()
            sweep_id = api.submit(
                "train.sweep",
                {
                    "trial": {"code": code, "experiment": "bench-sweep"},
                    "space": {"x": {"type": "float", "low": -5.0, "high": 5.0}},
                    "metric": "loss",
                    "direction": "minimize",
                    "sampler": "random",
                    "trials": trials,
                    "parallelism": 2,
                    "seed": 1,
                },
            )
            sweep = api.wait(sweep_id, poll=0.2)
            sweep_s = time.perf_counter() - start
            assert sweep["status"] == "succeeded", sweep
            plain_s = plain_optuna(work / "code", env, trials)
            ratio = sweep_s / plain_s
            figures["sweep"] = {"trials": trials, "sweep_s": sweep_s, "optuna_s": plain_s}
            print(
                f"sweep of {trials} trials, parallelism 2: {sweep_s:.1f} s; plain Optuna with "
                f"2 parallel subprocess trials: {plain_s:.1f} s: {ratio:.2f}x "
                f"(<= {TARGET_SWEEP}) {verdict(ratio <= TARGET_SWEEP)}"
            )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "training.json"
    out.write_text(json.dumps(figures, indent=2))
    print(f"\nfigures written to {out}")


def plain_optuna(repo: Path, env: dict[str, str], trials: int) -> float:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial: Any) -> float:
        x = trial.suggest_float("x", -5.0, 5.0)
        _elapsed, out = direct_run(repo, env, f"--x={x}")
        return float(out.strip().splitlines()[-1].split()[-1])

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(1))
    start = time.perf_counter()
    study.optimize(objective, n_trials=trials, n_jobs=2)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
