"""MLflow through the platform against plain ``mlflow server`` on the same store.

One data directory is seeded with a developer in one project and an API key scoped
to it. ``zhongtai serve`` (the train plugin; embedded SQLite unless ``--database
postgres``) runs its MLflow server; next to it a plain ``mlflow server`` runs on the
*same* backend store and artifact folder, with the same number of workers
(``--workers``: 2, the platform's default; issue 7 states the ``log_metric`` target
against one, ``--workers 1``) and workspaces enabled (the store is workspace-aware
once the platform has used it), and the client names the project's workspace itself.
The ``mlflow`` client, in this process, then drives both in rounds (4; the side that
goes first alternates), so that drift on a shared machine falls on both sides:

* ``log_batch`` of 1,000 metric points per call, 15 calls a side a round: points per
  second through ``/mlflow`` (auth + project check + proxy) ÷ plain. Target ≥ 0.9.
* ``search_runs`` over an experiment of 1,000 runs (``max_results=1000``), 8 calls a
  side a round, the sides alternating call by call: searches per second through the
  platform ÷ plain (total plain time ÷ total platform time). Target ≥ 0.9. A
  throughput, not a median: a plain MLflow worker answers about every second search
  some 200 ms late (a full garbage collection over its start-up heap, which the
  platform's MLflow server freezes: ``zhongtai_train/mlflow_app.py``), so medians
  of a few calls flip between the two speeds.
* one ``log_metric`` per call, 150 calls a side a round, in runs of 30 calls in a
  row (as a training script makes them), the sides taking turns run by run: p50
  through the platform ÷ p50 plain, over all calls. Target ≤ 1.2. Each call
  commits a transaction, and on these machines the time a commit takes drifts
  (the p50 of 150 calls in a row ranges from 6 to 11 ms within one run): short
  runs in turn spread that drift over both sides alike.
* one metric series of 1,000,000 points (bulk-inserted into MLflow's ``metrics``
  table for the setup): ``GET /api/v1/train/runs/{id}/metrics/{key}?max_points=2000``
  through the platform (median of 5) against MLflow's ``get_metric_history`` of the
  same series from the plain server (once). Targets: ≥ 10x faster and ≤ 300 ms.

``bench/tracking_series.py`` measures the module behind that endpoint on its own.
Exits 0 whatever the verdicts.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PYTHON,
    RESULTS,
    Server,
    child_env,
    free_port,
    machine,
    scratch_dir,
    verdict,
    zhongtai_server,
)

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
METRIC_RUN = 30  # log_metric calls in a row before the other side's turn


def seed(home: Path, url: str, secret: str) -> tuple[str, str]:
    """Schema (core + train), a developer in one project, a key scoped to it."""
    from zhongtai.identity.apikeys import create_api_key
    from zhongtai.identity.models import Organization, Project, ProjectMember, User
    from zhongtai.identity.roles import Role
    from zhongtai.platform import bootstrap
    from zhongtai.settings import load_settings

    settings = load_settings(home=home, database_url=url, secret_key=secret, plugins=["train"])
    platform = bootstrap(settings, schema="upgrade")
    try:
        with platform.db.transaction() as session:
            user = User(email="bench@example.com")
            org = Organization(slug="bench", name="Bench")
            session.add_all([user, org])
            session.flush()
            project = Project(org_id=org.id, slug="tracking", name="Tracking")
            session.add(project)
            session.flush()
            session.add(
                ProjectMember(project_id=project.id, user_id=user.id, role=int(Role.developer))
            )
            project_id = project.id
            _row, key = create_api_key(
                session,
                user_id=user.id,
                name="bench",
                project_id=project_id,
                secret=platform.secret_key,
            )
    finally:
        platform.close()
    return project_id, key


class Target:
    """One tracking URI and the environment the client needs for it.

    The client reads ``MLFLOW_TRACKING_TOKEN`` and ``MLFLOW_WORKSPACE`` on every
    request, so :meth:`client` sets them for this target before handing out its client
    (made once: both targets keep their connections warm between alternating calls).
    """

    def __init__(self, name: str, uri: str, env: dict[str, str]) -> None:
        self.name, self.uri, self.env = name, uri, env
        self._client: Any = None

    def client(self) -> Any:
        from mlflow import MlflowClient

        for key in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_WORKSPACE"):
            os.environ.pop(key, None)
        os.environ.update(self.env)
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client


def log_batch_rate(target: Target, run_id: str, calls: int, offset: int) -> float:
    from mlflow.entities import Metric

    client = target.client()
    now = int(time.time() * 1000)
    batches = [
        [Metric(f"m{j % 10}", float(j), now, offset + i * 1000 + j) for j in range(1000)]
        for i in range(calls)
    ]
    start = time.perf_counter()
    for batch in batches:
        client.log_batch(run_id, metrics=batch)
    return calls * 1000 / (time.perf_counter() - start)


def search_seconds(target: Target, experiment: str) -> float:
    client = target.client()
    start = time.perf_counter()
    runs = client.search_runs([experiment], max_results=1000)
    elapsed = time.perf_counter() - start
    assert len(runs) == 1000, len(runs)
    return elapsed


def log_metric_seconds(target: Target, run_id: str, step: int) -> float:
    client = target.client()
    start = time.perf_counter()
    client.log_metric(run_id, "single", float(step), step=step)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--workers", type=int, default=2, help="MLflow server workers, both")
    parser.add_argument("--rounds", type=int, default=0, help="alternating rounds (default 4)")
    parser.add_argument(
        "--points", type=int, default=0, help="metric series length (1,000,000; quick 200,000)"
    )
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 4)
    args.points = args.points or (200_000 if args.quick else 1_000_000)
    batch_calls = 5 if args.quick else 15
    search_calls = 2 if args.quick else 8
    metric_calls = 50 if args.quick else 150

    with scratch_dir("zt-bench-tracking-") as work:
        home = work / "home"
        home.mkdir()
        secret = secrets.token_urlsafe(48)
        database = None
        if args.database == "postgres":
            import psycopg

            database = f"zt_bench_{secrets.token_hex(4)}"
            with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{database}"')
            url = POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{database}"
        else:
            url = f"sqlite:///{home / 'zhongtai.db'}"
        try:
            project, key = seed(home, url, secret)
            figures = run(
                work,
                home,
                url,
                secret,
                project,
                key,
                args,
                rounds,
                (batch_calls, search_calls, metric_calls),
            )
        finally:
            if database:
                import psycopg

                with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"tracking-{args.database}.json"
    out.write_text(json.dumps(figures, indent=2))
    print(f"\nfigures written to {out}")


def run(
    work: Path,
    home: Path,
    url: str,
    secret: str,
    project: str,
    key: str,
    args: argparse.Namespace,
    rounds: int,
    calls: tuple[int, int, int],
) -> dict[str, Any]:
    batch_calls, search_calls, metric_calls = calls
    platform = zhongtai_server(
        home,
        work / "zhongtai.log",
        bytecode_cache=True,
        access_log=False,
        env={
            "ZHONGTAI_DATABASE_URL": url,
            "ZHONGTAI_SECRET_KEY": secret,
            "ZHONGTAI_PLUGINS": "train",
            "ZHONGTAI_TRAIN__TRACKING_WORKERS": str(args.workers),
            "ZHONGTAI_LOG_LEVEL": "WARNING",
        },
    )
    with platform:
        platform.wait_ready(timeout=120)
        through = Target(
            "platform",
            f"http://127.0.0.1:{platform.port}/mlflow",
            {"MLFLOW_TRACKING_TOKEN": key},
        )
        client = through.client()
        started = time.perf_counter()
        experiment = client.create_experiment("bench-search")
        print(f"platform's MLflow server started in {time.perf_counter() - started:.1f} s")
        # The store the platform's MLflow server uses, for the plain server next to it.
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        store = _store_uri(home, url)
        port = free_port()
        plain = Server(
            "plain mlflow",
            [
                str(PYTHON),
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                store,
                "--serve-artifacts",
                "--artifacts-destination",
                (home / "train" / "artifacts").as_uri(),
                "--enable-workspaces",
                "--workers",
                str(args.workers),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            port,
            "/health",
            child_env(bytecode_cache=True, extra={"MLFLOW_ENABLE_WORKSPACES": "true"}),
            work / "mlflow.log",
        )
        with plain:
            plain.wait_ready(timeout=180)
            direct = Target(
                "plain",
                f"http://127.0.0.1:{port}",
                {"MLFLOW_WORKSPACE": f"p{project.lower()}"},
            )
            print(f"seeding 1,000 runs ({machine()}) …")
            seeder = direct.client()
            for i in range(1000):
                seeder.create_run(experiment, run_name=f"r{i}")
            run_platform = through.client().create_run(experiment, run_name="batch-p").info.run_id
            run_plain = direct.client().create_run(experiment, run_name="batch-d").info.run_id
            # Warm both (connections, caches) before measuring.
            log_batch_rate(through, run_platform, 1, 10**9)
            log_batch_rate(direct, run_plain, 1, 10**9)
            search_seconds(through, experiment)
            search_seconds(direct, experiment)

            rates: dict[str, list[float]] = {"platform": [], "plain": []}
            searches: dict[str, list[float]] = {"platform": [], "plain": []}
            singles: dict[str, list[float]] = {"platform": [], "plain": []}
            runs = {"platform": run_platform, "plain": run_plain}
            for r in range(rounds):
                order = (through, direct) if r % 2 == 0 else (direct, through)
                for target in order:
                    rates[target.name].append(
                        log_batch_rate(target, runs[target.name], batch_calls, r * 10**6)
                    )
                # Searches (a third of a second each) alternate call by call, so that a
                # slower moment of the shared machine falls on both sides alike.
                for i in range(search_calls):
                    for target in order if i % 2 == 0 else order[::-1]:
                        searches[target.name].append(search_seconds(target, experiment))
                # Runs of one side's calls in a row, as a training script makes them
                # (alternating call by call, each server would wake from idle for every
                # call), short enough that the drift of commit times falls on both.
                for start in range(0, metric_calls, METRIC_RUN):
                    for target in order if start // METRIC_RUN % 2 == 0 else order[::-1]:
                        singles[target.name].extend(
                            log_metric_seconds(target, runs[target.name], r * 10**6 + i)
                            for i in range(start, min(start + METRIC_RUN, metric_calls))
                        )

            series = endpoint_figures(
                platform.port, key, through, direct, experiment, store, args.points
            )

    rate_p, rate_d = statistics.median(rates["platform"]), statistics.median(rates["plain"])
    search_p = statistics.fmean(searches["platform"])
    search_d = statistics.fmean(searches["plain"])
    p50_p = statistics.median(singles["platform"]) * 1000
    p50_d = statistics.median(singles["plain"]) * 1000
    batch_ratio = rate_p / rate_d
    search_ratio = search_d / search_p
    single_ratio = p50_p / p50_d
    print(f"\n{args.database}, {args.workers} MLflow workers, {rounds} alternating rounds")
    print(
        f"log_batch:   {rate_p:,.0f} points/s through /mlflow, {rate_d:,.0f} plain: "
        f"{batch_ratio:.2f}x  (≥ 0.9) {verdict(batch_ratio >= 0.9)}"
    )
    print(
        f"search_runs: {search_p * 1000:.0f} ms through /mlflow, {search_d * 1000:.0f} ms plain "
        f"(1,000 runs, mean of {len(searches['plain'])} a side): {search_ratio:.2f}x  (≥ 0.9) "
        f"{verdict(search_ratio >= 0.9)}"
    )
    print(
        f"log_metric:  p50 {p50_p:.2f} ms through /mlflow, {p50_d:.2f} ms plain: "
        f"{single_ratio:.2f}x  (≤ 1.2) {verdict(single_ratio <= 1.2)}"
    )
    endpoint_ms, history_s = series["endpoint_ms"], series["history_s"]
    speedup = history_s * 1000 / endpoint_ms
    print(
        f"metric series: {args.points:,} points downsampled to 2,000 by "
        f"GET /api/v1/train/runs/{{id}}/metrics/{{key}} in {endpoint_ms:.0f} ms (median of 5), "
        f"MLflow get_metric_history {history_s:.1f} s: {speedup:.0f}x (>= 10x) "
        f"{verdict(speedup >= 10)}, <= 300 ms {verdict(endpoint_ms <= 300)}"
    )
    return {
        "series": {"points": args.points, **series, "speedup": speedup},
        "database": args.database,
        "machine": machine(),
        "log_batch_points_per_s": {"platform": rate_p, "plain": rate_d, "ratio": batch_ratio},
        "search_runs_mean_s": {"platform": search_p, "plain": search_d, "ratio": search_ratio},
        "search_runs_samples_s": searches,
        "log_metric_p50_ms": {"platform": p50_p, "plain": p50_d, "ratio": single_ratio},
        "log_metric_samples_s": singles,
    }


def endpoint_figures(
    port: int,
    key: str,
    through: Target,
    direct: Target,
    experiment: str,
    store: str,
    points: int,
) -> dict[str, float]:
    """The downsampled series endpoint against MLflow's get_metric_history (plain)."""
    import http.client

    from sqlalchemy import create_engine
    from tracking_series import KEY, bulk_insert, make_series

    run_id = through.client().create_run(experiment, run_name="long-curve").info.run_id
    engine = create_engine(store)
    try:
        bulk_insert(engine, run_id, make_series(points))
    finally:
        engine.dispose()
    times = []
    for _ in range(6):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        start = time.perf_counter()
        conn.request(
            "GET",
            f"/api/v1/train/runs/{run_id}/metrics/{KEY}?max_points=2000",
            headers={"Authorization": f"Bearer {key}"},
        )
        answer = conn.getresponse()
        body = json.loads(answer.read())
        times.append(time.perf_counter() - start)
        conn.close()
        assert answer.status == 200 and body["total"] == points, (answer.status, body)
    start = time.perf_counter()
    history = direct.client().get_metric_history(run_id, KEY)
    history_s = time.perf_counter() - start
    assert len(history) == points, len(history)
    return {"endpoint_ms": statistics.median(times[1:]) * 1000, "history_s": history_s}


def _store_uri(home: Path, url: str) -> str:
    if url.startswith("sqlite"):
        return f"sqlite:///{home / 'train' / 'mlflow.db'}"
    from sqlalchemy.engine import make_url

    store = make_url(url).set(drivername="postgresql+psycopg")
    store = store.update_query_dict({"options": "-csearch_path=mlflow"})
    return store.render_as_string(hide_password=False)


if __name__ == "__main__":
    main()
