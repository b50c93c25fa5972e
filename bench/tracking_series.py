"""The train plugin's metric charts (issue 7): a long series, downsampled on the server.

One MLflow store, made by MLflow itself (``SqlAlchemyStore``, which runs its migrations):
a SQLite file in a scratch directory, or with ``--database-url`` a throwaway database on
that PostgreSQL server with MLflow's tables in schema ``mlflow``, reached through psycopg
with ``options=-csearch_path=mlflow`` exactly as the plugin does. One run gets one metric
of ``--points`` points (1,000,000; ``--quick`` 200,000): a decaying, noisy loss curve with
spikes, a few NaN and seven steps logged twice. A second run logs 10,000 points under the
same key, so every query has to pick its run out.

Setup, not measured: the points go **straight into MLflow's ``metrics`` table** in bulk
(``executemany`` on SQLite, ``COPY`` on PostgreSQL), with the ``latest_metrics`` row MLflow
would keep, because logging a million points through ``log_batch`` (1,000 per call) would
take far longer than everything measured here. The rows are exactly the ones MLflow writes.

Measured in this process, on a warm database (one unmeasured call of each first):

* **baseline**: MLflow's ``SqlAlchemyStore.get_metric_history(run, key)`` of the whole
  series, once (``--mlflow-points N`` times it on a run holding only the first N points
  instead and scales the time linearly; the output then says "extrapolated");
* ``zhongtai_train.series.series_for(engine, run, key, max_points=2000, method=...)`` with
  ``lttb`` and with ``minmax``, the call ``GET /api/v1/train/runs/{id}/metrics/{key}``
  makes: ``--repeat`` (5) rounds, the two methods alternating; medians. Each sample also
  records the CPU time it used: this process's, plus on PostgreSQL that of the server's
  backends for the bench's database (from /proc). On a shared machine, wall
  time grows with other people's work and CPU time does not; the load average before and
  after is printed too;
* for reference, the same call reading the series whole and downsampling with numpy
  (``strategy="fetch"``, what a database without the min/max SQL gets): 3 rounds; and
  ``read_series`` alone. This shows why long series are reduced inside the database.

Before timing, the script checks that ``series_for``'s answer through the database is the
same as through the whole series for ``minmax``, and that the first and last points and the
global minimum and maximum are in both methods' answers.

Targets (issue 7), for 1,000,000 points: ``series_for`` ≥ 10x faster than
``get_metric_history`` for the same series, and ≤ 300 ms. Prints the figures, then
PASS/FAIL lines; writes ``bench/results/tracking_series_<database>.json``; exits 0
whatever the verdicts.

Run: ``.venv/bin/python bench/tracking_series.py [--quick] [--points 1000000]
[--repeat 5] [--max-points 2000] [--mlflow-points N]
[--database-url postgresql://postgres@127.0.0.1:5432/postgres]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, machine, median, process_cpu_seconds, scratch_dir, verdict

TARGET_SPEEDUP = 10.0  # get_metric_history ÷ series_for
TARGET_SECONDS = 0.3
KEY = "loss"
T0 = 1_700_000_000_000  # ms
OTHER_POINTS = 10_000
FETCH_ROUNDS = 3


# --------------------------------------------------------------------------- the store


@contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    """A fresh database on ``server_url`` with an empty schema ``mlflow``; dropped after.
    Yields the URL MLflow and the plugin use (psycopg, search_path=mlflow)."""
    import psycopg
    from sqlalchemy.engine import make_url

    server = make_url(server_url)
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"zt_bench_{secrets.token_hex(5)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = server.set(drivername="postgresql", database=name)
        with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
            conn.execute("CREATE SCHEMA mlflow")
        yield (
            url.set(drivername="postgresql+psycopg")
            .update_query_dict({"options": "-csearch_path=mlflow"})
            .render_as_string(hide_password=False)
        )
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_series(points: int) -> list[tuple[int, int, float, bool]]:
    """``points`` (step, timestamp, value, is_nan) rows: what MLflow stores for the curve.

    Seven steps are logged twice, the second time a little later (say, a resumed job)."""
    again = list(range(1000, points, max(points // 7, 1)))[:7]
    n = points - len(again)
    rng = np.random.default_rng(7)
    steps = np.arange(n, dtype=np.int64)
    values = 2.0 * np.exp(-steps / (n / 5)) + 0.05 * rng.standard_normal(n)
    spikes = rng.choice(n, size=max(n // 100_000, 3), replace=False)
    values[spikes] += rng.uniform(1.0, 5.0, size=spikes.size)
    nan = np.zeros(n, dtype=bool)
    nan[rng.choice(n, size=max(n // 100_000, 2), replace=False)] = True
    timestamps = T0 + steps * 7
    rows = [
        (int(s), int(t), 0.0 if is_nan else float(v), bool(is_nan))
        for s, t, v, is_nan in zip(steps, timestamps, values, nan, strict=True)
    ]
    rows += [(s, T0 + s * 7 + 3, 0.25, False) for s in again]
    return rows


def bulk_insert(engine: Any, run_id: str, rows: list[tuple[int, int, float, bool]]) -> None:
    """Rows straight into MLflow's metrics table, plus its latest_metrics row (setup only)."""
    last = max(rows, key=lambda r: (r[0], r[1]))
    with engine.begin() as conn:
        raw = conn.connection.driver_connection
        cursor = raw.cursor()
        insert = (KEY, *last[:2], 0.0 if last[3] else last[2], last[3], run_id)
        if engine.dialect.name == "sqlite":
            cursor.executemany(
                "INSERT INTO metrics (key, step, timestamp, value, is_nan, run_uuid) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                ((KEY, s, t, v, n, run_id) for s, t, v, n in rows),
            )
            cursor.execute(
                "INSERT INTO latest_metrics (key, step, timestamp, value, is_nan, run_uuid) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                insert,
            )
        else:
            with cursor.copy(
                "COPY metrics (key, step, timestamp, value, is_nan, run_uuid) FROM STDIN"
            ) as copy:
                for s, t, v, n in rows:
                    copy.write_row((KEY, s, t, v, n, run_id))
            cursor.execute(
                "INSERT INTO latest_metrics (key, step, timestamp, value, is_nan, run_uuid) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                insert,
            )
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.connection.driver_connection.autocommit = True
            conn.connection.driver_connection.execute("VACUUM ANALYZE metrics")
            conn.connection.driver_connection.autocommit = False


# --------------------------------------------------------------------------- timing


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


class CpuMeter:
    """CPU seconds this process and, on PostgreSQL, the server's backends for the bench's
    database have used so far. On a shared machine wall times swell with other people's
    work; CPU time shows what the work itself costs (with two workers, wall time on an
    idle machine is about half of it)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"

    def _backends(self) -> list[int]:
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            )
            return [int(r[0]) for r in rows]

    def now(self) -> float:
        used = time.process_time()
        if self.postgres:
            used += sum(process_cpu_seconds(pid) for pid in self._backends())
        return used

    def timed(self, fn: Callable[[], Any]) -> tuple[float, float]:
        """(wall seconds, CPU seconds) of one call."""
        cpu = self.now()
        start = time.perf_counter()
        fn()
        wall = time.perf_counter() - start
        return wall, self.now() - cpu


def check(answers: dict[str, dict[str, Any]], whole: Any) -> list[str]:
    """Problems with the answers (empty: all good)."""
    problems = []
    valid = np.flatnonzero(~np.isnan(whole.values))
    essentials = {
        (int(whole.steps[i]), float(whole.values[i]))
        for i in (
            valid[0],
            valid[-1],
            valid[np.argmax(whole.values[valid])],
            valid[np.argmin(whole.values[valid])],
        )
    }
    for name, answer in answers.items():
        points = set(zip(answer["steps"], answer["values"], strict=True))
        if not essentials <= points:
            problems.append(f"{name}: first/last/min/max missing")
        if answer["total"] != len(whole):
            problems.append(f"{name}: total {answer['total']} != {len(whole)}")
    if answers["minmax"] != answers["minmax (fetch)"]:
        problems.append("minmax through the database differs from minmax of the whole series")
    return problems


def run(args: argparse.Namespace, work: Path, uri: str, kind: str) -> dict[str, Any]:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from sqlalchemy import create_engine

    from zhongtai_train.series import read_series, series_for

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # after MLflow set up its logging
    print(f"creating the MLflow store ({kind}) …", flush=True)
    seconds, store = timed(lambda: SqlAlchemyStore(uri, (work / "artifacts").as_uri()))
    print(f"  SqlAlchemyStore (migrations): {seconds:.1f} s", flush=True)
    experiment = store.create_experiment("bench")
    run_id = store.create_run(experiment, "bench", 0, [], "long").info.run_id
    other = store.create_run(experiment, "bench", 0, [], "other").info.run_id
    engine = create_engine(uri)  # as TrackingServer.engine makes it
    rows = make_series(args.points)
    start = time.perf_counter()
    bulk_insert(engine, run_id, rows)
    seconds = time.perf_counter() - start
    print(f"  inserted {len(rows):,} points in {seconds:.1f} s", flush=True)
    bulk_insert(engine, other, make_series(OTHER_POINTS))
    mlflow_run, mlflow_points = run_id, len(rows)
    if args.mlflow_points and args.mlflow_points < args.points:
        mlflow_run = store.create_run(experiment, "bench", 0, [], "prefix").info.run_id
        prefix = make_series(args.mlflow_points)
        bulk_insert(engine, mlflow_run, prefix)
        mlflow_points = len(prefix)
        del prefix
    del rows

    def ours(method: str, strategy: str = "auto") -> Callable[[], dict[str, Any]]:
        return lambda: series_for(
            engine, run_id, KEY, max_points=args.max_points, method=method, strategy=strategy
        )

    load_before = " ".join(f"{v:.1f}" for v in os.getloadavg())
    # Warm-up (caches, the pool's connections), and the answers to check.
    answers = {m: ours(m)() for m in ("lttb", "minmax")}
    answers["minmax (fetch)"] = ours("minmax", "fetch")()
    whole = read_series(engine, run_id, KEY)
    problems = check(answers, whole)
    total = len(whole)
    del whole

    meter = CpuMeter(engine)
    samples: dict[str, list[float]] = {"lttb": [], "minmax": []}
    cpu: dict[str, list[float]] = {"lttb": [], "minmax": []}
    for round_ in range(args.repeat):
        for method in ("lttb", "minmax") if round_ % 2 == 0 else ("minmax", "lttb"):
            wall, used = meter.timed(ours(method))
            samples[method].append(wall)
            cpu[method].append(used)
        print(f"  round {round_ + 1}/{args.repeat} done", flush=True)
    fetch: dict[str, list[float]] = {"lttb": [], "minmax": [], "read_series": []}
    for _ in range(FETCH_ROUNDS):
        fetch["lttb"].append(timed(ours("lttb", "fetch"))[0])
        fetch["minmax"].append(timed(ours("minmax", "fetch"))[0])
        fetch["read_series"].append(timed(lambda: read_series(engine, run_id, KEY))[0])

    print(f"MLflow get_metric_history of {mlflow_points:,} points …", flush=True)
    store.get_metric_history(other, KEY)  # warm-up (a small run)
    mlflow_s, history = timed(lambda: store.get_metric_history(mlflow_run, KEY))
    got = len(history)
    del history
    if got != mlflow_points:
        problems.append(f"get_metric_history returned {got} points, not {mlflow_points}")
    mlflow_full_s = mlflow_s * total / mlflow_points
    engine.dispose()
    store.engine.dispose()

    return {
        "machine": machine(),
        "load_before": load_before,
        "load_after": " ".join(f"{v:.1f}" for v in os.getloadavg()),
        "database": kind,
        "points": total,
        "max_points": args.max_points,
        "repeat": args.repeat,
        "mlflow_s": mlflow_s,
        "mlflow_points": mlflow_points,
        "mlflow_full_s": mlflow_full_s,
        "mlflow_extrapolated": mlflow_points != total,
        "series_for": {
            m: {
                "median_s": median(v),
                "all_s": v,
                "cpu_median_s": median(cpu[m]),
                "points": answers[m]["points"],
                "speedup": mlflow_full_s / median(v),
            }
            for m, v in samples.items()
        },
        "fetch": {name: {"median_s": median(v), "all_s": v} for name, v in fetch.items()},
        "problems": problems,
    }


def report(summary: dict[str, Any]) -> None:
    total = summary["points"]
    note = (
        f"measured on {summary['mlflow_points']:,} points, extrapolated linearly"
        if summary["mlflow_extrapolated"]
        else "measured once"
    )
    print()
    print(f"== tracking_series ({summary['machine']}; {summary['database']}; {total:,} points) ==")
    print(f"load average before / after: {summary['load_before']} / {summary['load_after']}")
    print(
        f"MLflow get_metric_history: {summary['mlflow_full_s']:.2f} s for {total:,} points "
        f"({note}: {summary['mlflow_s']:.2f} s)"
    )
    for method, fig in summary["series_for"].items():
        samples = ", ".join(f"{s * 1000:.0f}" for s in fig["all_s"])
        print(
            f"series_for {method:<6} max_points={summary['max_points']}: median "
            f"{fig['median_s'] * 1000:.0f} ms ({samples} ms) → {fig['points']} points; "
            f"{fig['speedup']:.0f}x get_metric_history; CPU {fig['cpu_median_s'] * 1000:.0f} ms"
        )
    fetch = summary["fetch"]
    print(
        f"reference, reading the series whole (medians of {FETCH_ROUNDS}): read_series "
        f"{fetch['read_series']['median_s'] * 1000:.0f} ms; series_for strategy=fetch: lttb "
        f"{fetch['lttb']['median_s'] * 1000:.0f} ms, minmax "
        f"{fetch['minmax']['median_s'] * 1000:.0f} ms"
    )
    problems = summary["problems"]
    print(f"checks: {'all good' if not problems else '; '.join(problems)}")
    print()
    size = "" if total == 1_000_000 else f" (at {total:,} points, the issue's size is 1,000,000)"
    for method, fig in summary["series_for"].items():
        print(
            f"series_for {method} ÷ get_metric_history speed-up: {fig['speedup']:.0f}x "
            f"(target ≥ {TARGET_SPEEDUP:.0f}x){size} {verdict(fig['speedup'] >= TARGET_SPEEDUP)}"
        )
        print(
            f"series_for {method}, {total:,} points: {fig['median_s'] * 1000:.0f} ms "
            f"(target ≤ {TARGET_SECONDS * 1000:.0f} ms){size} "
            f"{verdict(fig['median_s'] <= TARGET_SECONDS)}"
        )
    print(
        f"answers consistent (first/last/min/max kept, minmax paths agree) {verdict(not problems)}"
    )


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so the scratch directory and database are removed."""
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=1_000_000, help="series length (1M)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds of series_for (5)")
    parser.add_argument("--max-points", type=int, default=2000, help="points per answer")
    parser.add_argument(
        "--mlflow-points",
        type=int,
        default=0,
        help="time get_metric_history on a run of this many points and scale linearly "
        "(default: the whole series)",
    )
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server to use (a throwaway database is made on it); default SQLite",
    )
    parser.add_argument("--quick", action="store_true", help="--points 200000 --repeat 3")
    args = parser.parse_args()
    if args.quick:
        args.points, args.repeat = 200_000, 3
    signal.signal(signal.SIGTERM, _interrupt)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="mlflow")

    started = time.monotonic()
    with scratch_dir("zt-bench-series-") as work:
        if args.database_url:
            with postgres_database(args.database_url) as uri:
                summary = run(args, work, uri, "postgresql")
        else:
            summary = run(args, work, f"sqlite:///{work / 'mlflow.db'}", "sqlite")
    summary["seconds"] = time.monotonic() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"tracking_series_{summary['database']}.json"
    out.write_text(json.dumps(summary, indent=2, default=str))
    report(summary)


if __name__ == "__main__":
    main()
