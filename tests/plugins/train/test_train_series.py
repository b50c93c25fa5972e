"""Tests for zhongtai_train.series: downsampling, and reading metric series from MLflow's store.

The store tests run against a real MLflow store (``SqlAlchemyStore``, which runs MLflow's
migrations, so once per module): SQLite always, PostgreSQL too when
``ZHONGTAI_TEST_DATABASE_URL`` names a server (schema ``mlflow``, psycopg, as production).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from zhongtai.testing import database_server_for_tests, throwaway_postgres
from zhongtai_train import series as series_module
from zhongtai_train.series import (
    Series,
    count_points,
    downsample,
    downsample_indices,
    read_minmax,
    read_series,
    series_for,
)

METHODS = ("lttb", "minmax")
DBL_MAX = sys.float_info.max  # MLflow's stand-in for infinity


def walk(n: int, seed: int = 0) -> np.ndarray:
    return np.cumsum(np.random.default_rng(seed).normal(size=n))


def essentials(y: np.ndarray) -> set[int]:
    """First and last non-NaN positions and the global minimum and maximum."""
    valid = np.flatnonzero(~np.isnan(y))
    return {
        int(valid[0]),
        int(valid[-1]),
        int(valid[np.argmax(y[valid])]),
        int(valid[np.argmin(y[valid])]),
    }


def reference_lttb(x: np.ndarray, y: np.ndarray, threshold: int) -> list[int]:
    """Steinarsson's LTTB, written plainly."""
    n = len(y)
    every = (n - 2) / (threshold - 2)
    picked, a = [0], 0
    for i in range(threshold - 2):
        start, end = math.floor((i + 1) * every) + 1, min(math.floor((i + 2) * every) + 1, n)
        cx, cy = float(np.mean(x[start:end])), float(np.mean(y[start:end]))
        lo, hi = math.floor(i * every) + 1, math.floor((i + 1) * every) + 1
        best, best_area = lo, -1.0
        for b in range(lo, hi):
            area = abs((x[a] - cx) * (y[b] - y[a]) - (x[a] - x[b]) * (cy - y[a]))
            if area > best_area:
                best, best_area = b, area
        picked.append(best)
        a = best
    return [*picked, n - 1]


# -- downsampling ------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_short_series_come_back_whole(method: str) -> None:
    y = np.array([1.0, math.nan, 3.0, 2.0])
    assert downsample_indices(np.arange(4), y, 4, method).tolist() == [0, 1, 2, 3]
    x_out, y_out = downsample(np.arange(4), y, 10, method)
    assert x_out.tolist() == [0, 1, 2, 3]
    assert np.array_equal(y_out, y, equal_nan=True)
    assert downsample_indices([], [], 5, method).size == 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("max_points", [4, 5, 7, 100, 1001])
def test_keeps_first_last_and_extremes(method: str, max_points: int) -> None:
    y = walk(20_000, seed=max_points)
    x = np.arange(y.size) * 3
    picked = downsample_indices(x, y, max_points, method)
    assert 2 <= picked.size <= max_points
    assert np.all(np.diff(picked) > 0)  # ascending, no repeats: monotone x
    assert essentials(y) <= set(picked.tolist())


@pytest.mark.parametrize("method", METHODS)
def test_spikes_in_the_middle_survive(method: str) -> None:
    x = np.arange(100_000)
    y = np.sin(x / 5_000)
    y[50_000] = 40.0  # one point up
    y[50_003] = -25.0  # and one down, three steps later
    y[70_000] = 3.0  # a smaller spike, not a global extreme
    picked = set(downsample_indices(x, y, 200, method).tolist())
    assert {0, 50_000, 50_003, 70_000, 99_999} <= picked


@pytest.mark.parametrize("method", METHODS)
def test_nan_is_never_picked(method: str) -> None:
    y = walk(10_000, seed=3)
    y[:5] = math.nan
    y[-3:] = math.nan
    y[1000:1200] = math.nan
    picked = downsample_indices(np.arange(y.size), y, 300, method)
    assert not np.isnan(y[picked]).any()
    assert picked[0] == 5 and picked[-1] == y.size - 4
    assert essentials(y) <= set(picked.tolist())


@pytest.mark.parametrize("method", METHODS)
def test_all_nan_and_mostly_nan(method: str) -> None:
    nothing = np.full(50, math.nan)
    assert downsample_indices(np.arange(50), nothing, 10, method).size == 0
    few = np.full(50, math.nan)
    few[[3, 30, 31]] = [1.0, 2.0, 3.0]
    picked = downsample_indices(np.arange(50), few, 10, method)
    assert picked.tolist() == [3, 30, 31]  # the numbers all fit: all of them


@pytest.mark.parametrize("method", METHODS)
def test_fewer_than_four_points(method: str) -> None:
    y = np.array([5.0, 1.0, 9.0, 4.0, 7.0, 3.0])
    x = np.arange(6)
    assert downsample_indices(x, y, 1, method).tolist() == [0]
    assert downsample_indices(x, y, 2, method).tolist() == [0, 5]
    assert downsample_indices(x, y, 3, method).tolist() == [0, 2, 5]
    assert downsample_indices(x, y, 4, method).tolist() == [0, 1, 2, 5]


def test_bad_arguments() -> None:
    y = walk(10)
    with pytest.raises(ValueError, match="max_points"):
        downsample_indices(np.arange(10), y, 0)
    with pytest.raises(ValueError, match="method"):
        downsample_indices(np.arange(10), y, 5, "average")
    with pytest.raises(ValueError, match="same length"):
        downsample_indices(np.arange(9), y, 5)
    with pytest.raises(ValueError, match="ascending"):
        downsample_indices(np.arange(10)[::-1], y, 5)


def test_lttb_is_lttb() -> None:
    """Steinarsson's picks, but where a global extreme had to take a bucket's place."""
    y = walk(5_000, seed=7)
    x = np.arange(5_000) * 10 + 1_700_000_000_000  # timestamps: large x
    for threshold in (4, 50, 333):
        ours = set(downsample_indices(x, y, threshold, "lttb").tolist())
        theirs = set(reference_lttb(x.astype(float), y, threshold))
        assert len(ours) == threshold
        assert len(ours - theirs) <= 2
        assert ours - theirs <= essentials(y)


def test_minmax_is_each_buckets_extremes() -> None:
    rng = np.random.default_rng(11)
    x = np.sort(rng.integers(0, 10_000, size=20_000))  # uneven, with repeated x
    y = rng.normal(size=x.size)
    picked = downsample_indices(x, y, 42, "minmax")
    buckets = (x - x[0]) * 20 // (x[-1] - x[0] + 1)  # (42 - 2) // 2 equal-width buckets
    expected = {0, x.size - 1}
    for b in np.unique(buckets):
        members = np.flatnonzero(buckets == b)
        expected |= {int(members[np.argmin(y[members])]), int(members[np.argmax(y[members])])}
    assert set(picked.tolist()) == expected


@pytest.mark.parametrize("method", METHODS)
def test_float_x_and_several_values_per_x(method: str) -> None:
    x = np.repeat(np.linspace(0.0, 1.0, 2_000), 3)  # three values at every x
    y = walk(x.size, seed=5)
    picked = downsample_indices(x, y, 64, method)
    assert picked.size <= 64 and np.all(np.diff(picked) > 0)
    assert essentials(y) <= set(picked.tolist())


def test_infinities_do_not_break_it() -> None:
    y = walk(3_000, seed=2)
    y[100], y[2000] = math.inf, -math.inf
    y[1500] = DBL_MAX
    for method in METHODS:
        picked = set(downsample_indices(np.arange(y.size), y, 100, method).tolist())
        assert {100, 2000} <= picked and len(picked) <= 100


# -- MLflow's store --------------------------------------------------------------------------


@dataclass
class Store:
    """A migrated MLflow store with known runs, and an engine on it as the plugin makes."""

    engine: Engine
    mlflow: Any  # SqlAlchemyStore
    run: str  # run with the interesting series
    other: str  # another run logging the same keys


N_LOSS = 2_500
T0 = 1_700_000_000_000
BIG = 2**54 + 1


def _log(store: Any, run: str, points: list[tuple[str, float, int, int]]) -> None:
    from mlflow.entities import Metric

    metrics = [Metric(key, value, timestamp, step) for key, value, timestamp, step in points]
    for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 per batch
        store.log_batch(run, metrics[start : start + 1000], [], [])


def _loss_points() -> list[tuple[str, float, int, int]]:
    """``loss``: a noisy curve with NaN, infinities, a spike and repeated steps."""
    y = 1.0 / np.sqrt(np.arange(N_LOSS) + 1.0) + walk(N_LOSS, seed=1) * 0.01
    points = [("loss", float(v), 1_700_000_000_000 + 10 * i, i) for i, v in enumerate(y)]
    points[17] = ("loss", math.nan, points[17][2], 17)
    points[18] = ("loss", math.nan, points[18][2], 18)
    points[1200] = ("loss", math.inf, points[1200][2], 1200)
    points[1300] = ("loss", -math.inf, points[1300][2], 1300)
    points[900] = ("loss", 55.0, points[900][2], 900)
    # Logged again at steps already used, later in time (a resumed job), and one step
    # logged three times within the same millisecond.
    points += [("loss", 0.5 + i / 1000, 1_800_000_000_000 + i, 100 + i) for i in range(40)]
    points += [("loss", v, 1_700_000_000_000 + 10 * 2000, 2000) for v in (0.123, 0.456)]
    return points


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    folder = tmp_path_factory.mktemp(f"series-{request.param}")
    if request.param == "sqlite":
        with _made_store(f"sqlite:///{folder / 'mlflow.db'}", folder) as made:
            yield made
        return
    server = database_server_for_tests()
    if server is None:
        pytest.skip("needs PostgreSQL (set ZHONGTAI_TEST_DATABASE_URL)")
    with throwaway_postgres(server) as url:
        admin = create_engine(url)
        with admin.begin() as conn:
            conn.execute(text("CREATE SCHEMA mlflow"))
        admin.dispose()
        # Exactly the URL the plugin gives MLflow: psycopg, MLflow's tables in schema mlflow.
        uri = (
            make_url(url)
            .set(drivername="postgresql+psycopg")
            .update_query_dict({"options": "-csearch_path=mlflow"})
            .render_as_string(hide_password=False)
        )
        with _made_store(uri, folder) as made:
            yield made


@contextmanager
def _made_store(uri: str, folder: Path) -> Iterator[Store]:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    mlflow_store = SqlAlchemyStore(uri, (folder / "artifacts").as_uri())
    experiment = mlflow_store.create_experiment("series")
    run = mlflow_store.create_run(experiment, "tester", 0, [], "curves").info.run_id
    other = mlflow_store.create_run(experiment, "tester", 0, [], "other").info.run_id
    _log(mlflow_store, run, _loss_points())
    _log(mlflow_store, run, [("acc", i / 10, 1_700_000_000_000 + i, i) for i in range(10)])
    _log(mlflow_store, other, [("loss", 9.0 + i, 1_700_000_000_000 + i, i) for i in range(30)])
    # Steps beyond float8's exact integers, and steps too far apart for 64-bit buckets.
    _log(mlflow_store, run, [("big", float(i % 7), T0 + i, BIG + 3 * i) for i in range(300)])
    _log(mlflow_store, run, [("wide", float(i), T0 + i, i * 2**56) for i in range(120)])
    engine = create_engine(uri)  # as TrackingServer.engine makes it
    try:
        yield Store(engine, mlflow_store, run, other)
    finally:
        engine.dispose()
        mlflow_store.engine.dispose()


def history(store: Store, key: str, run: str | None = None) -> list[tuple[int, int, float]]:
    """MLflow's own answer, in (step, timestamp) order."""
    metrics = store.mlflow.get_metric_history(run or store.run, key)
    return sorted((m.step, m.timestamp, m.value) for m in metrics)


def as_tuples(series: Series) -> list[tuple[int, int, float]]:
    return list(
        zip(series.steps.tolist(), series.timestamps.tolist(), series.values.tolist(), strict=True)
    )


def same_points(a: list[tuple[int, int, float]], b: list[tuple[int, int, float]]) -> bool:
    def key(p: tuple[int, int, float]) -> tuple[int, int, float | str]:
        return (p[0], p[1], "nan" if math.isnan(p[2]) else p[2])

    return [key(p) for p in a] == [key(p) for p in b]


def test_read_series_matches_mlflow(store: Store) -> None:
    got = read_series(store.engine, store.run, "loss")
    expected = history(store, "loss")
    assert len(got) == len(expected) == N_LOSS + 42
    assert same_points(as_tuples(got), expected)
    # Ordered by step, then timestamp; every value at a repeated step is kept.
    assert np.all(np.diff(got.steps) >= 0)
    assert (got.steps == 2000).sum() == 3 and (got.steps == 105).sum() == 2
    assert math.isnan(got.values[17]) and got.values[got.steps == 1200].tolist() == [DBL_MAX]
    assert read_series(store.engine, store.run, "acc").values.tolist() == [
        i / 10 for i in range(10)
    ]
    assert as_tuples(read_series(store.engine, store.other, "loss")) == history(
        store, "loss", store.other
    )


def test_read_series_by_timestamp(store: Store) -> None:
    got = read_series(store.engine, store.run, "loss", x="timestamp")
    assert np.all(np.diff(got.timestamps) >= 0)
    assert got.steps[-40:].tolist() == list(range(100, 140))  # the late re-logged steps
    expected = sorted(history(store, "loss"), key=lambda p: (p[1], p[0]))
    assert [p[:2] for p in as_tuples(got)] == [p[:2] for p in expected]


def test_unknown_run_or_key(store: Store) -> None:
    assert len(read_series(store.engine, "0" * 32, "loss")) == 0
    assert len(read_series(store.engine, store.run, "nope")) == 0
    reduced = read_minmax(store.engine, store.run, "nope", buckets=10)
    assert reduced is not None and len(reduced[0]) == 0 and reduced[1] == 0
    empty = series_for(store.engine, store.run, "nope", max_points=10, strategy="database")
    assert empty["points"] == empty["total"] == 0 and empty["values"] == []


def test_count_points(store: Store) -> None:
    assert count_points(store.engine, store.run, "loss") == N_LOSS + 42
    assert count_points(store.engine, store.run, "loss", limit=100) == 100
    assert count_points(store.engine, store.other, "loss") == 30


@pytest.mark.parametrize("x", ["step", "timestamp"])
@pytest.mark.parametrize("buckets", [1, 7, 300])
@pytest.mark.parametrize("workers", [1, 2])
def test_database_minmax_is_numpy_minmax(store: Store, x: str, buckets: int, workers: int) -> None:
    whole = read_series(store.engine, store.run, "loss", x=x)
    picked = downsample_indices(whole.axis(x), whole.values, 2 * buckets + 2, "minmax")
    reduced = read_minmax(store.engine, store.run, "loss", buckets=buckets, x=x, workers=workers)
    assert reduced is not None
    candidates, total = reduced
    assert total == len(whole)
    assert same_points(as_tuples(candidates), as_tuples(whole.take(picked)))


@pytest.mark.parametrize("strategy", ["fetch", "database"])
@pytest.mark.parametrize("method", METHODS)
def test_series_for(store: Store, strategy: str, method: str) -> None:
    answer = series_for(
        store.engine, store.run, "loss", max_points=100, method=method, strategy=strategy
    )
    json.dumps(answer, allow_nan=False)  # plain JSON
    assert answer["run_id"] == store.run and answer["key"] == "loss"
    assert answer["x"] == "step" and answer["method"] == method
    assert answer["total"] == N_LOSS + 42
    assert 50 <= answer["points"] <= 100
    assert len(answer["steps"]) == len(answer["timestamps"]) == len(answer["values"])
    assert answer["points"] == len(answer["values"])
    assert answer["steps"] == sorted(answer["steps"])
    assert None not in answer["values"]  # NaN never picked
    points = set(zip(answer["steps"], answer["values"], strict=True))
    assert {(900, 55.0), (1200, DBL_MAX), (1300, -DBL_MAX)} <= points  # spike and extremes
    assert answer["steps"][0] == 0 and answer["steps"][-1] == N_LOSS - 1


def test_series_for_strategies_agree_on_minmax(store: Store) -> None:
    kinds = {
        strategy: series_for(
            store.engine, store.run, "loss", max_points=64, method="minmax", strategy=strategy
        )
        for strategy in ("fetch", "database")
    }
    assert kinds["fetch"] == kinds["database"]


def test_series_for_short_series_and_nan(store: Store) -> None:
    answer = series_for(store.engine, store.run, "loss", max_points=5_000, method="lttb")
    assert answer["points"] == answer["total"] == N_LOSS + 42
    by_step = dict(zip(answer["steps"], answer["values"], strict=False))
    assert by_step[17] is None and by_step[18] is None
    assert by_step[1200] == DBL_MAX and by_step[1300] == -DBL_MAX
    short = series_for(store.engine, store.run, "acc", max_points=10, strategy="database")
    assert short["steps"] == list(range(10)) and short["values"] == [i / 10 for i in range(10)]


def test_series_for_auto_uses_the_database_for_long_series(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(series_module, "FETCH_LIMIT", 200)
    called: list[int] = []
    real = series_module.read_minmax

    def spy(*args: object, **kwargs: object) -> object:
        called.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(series_module, "read_minmax", spy)
    answer = series_for(
        store.engine, store.run, "loss", max_points=100, method="lttb", x="timestamp"
    )
    assert called and answer["x"] == "timestamp" and answer["points"] <= 100
    assert answer["timestamps"] == sorted(answer["timestamps"])
    series_for(store.engine, store.run, "acc", max_points=100, method="lttb")
    assert len(called) == 1  # ten points: read whole


def test_huge_steps(store: Store) -> None:
    """Exact steps beyond 2**53 (PostgreSQL's float8 arrays cannot hold them: the series is
    read whole instead), and steps too far apart for the database's 64-bit bucket numbers."""
    whole = read_series(store.engine, store.run, "big")
    assert whole.steps.tolist() == [BIG + 3 * i for i in range(300)]
    for method in METHODS:
        answer = series_for(
            store.engine, store.run, "big", max_points=20, method=method, strategy="database"
        )
        assert answer["points"] <= 20 and answer["total"] == 300
        assert set(answer["steps"]) <= set(whole.steps.tolist())
        assert answer["steps"][0] == BIG and answer["steps"][-1] == BIG + 3 * 299
    assert read_minmax(store.engine, store.run, "wide", buckets=10) is None
    answer = series_for(store.engine, store.run, "wide", max_points=10, strategy="database")
    assert answer["steps"][0] == 0 and answer["steps"][-1] == 119 * 2**56
    assert answer["values"][-1] == 119.0 and answer["points"] <= 10


def test_in_memory_sqlite() -> None:
    """An in-memory database is one per connection: read_minmax keeps to one thread."""
    engine = create_engine("sqlite://")
    with engine.begin() as conn:
        conn.execute(
            text(
                'CREATE TABLE metrics ("key" VARCHAR(250) NOT NULL, value FLOAT NOT NULL, '
                "timestamp BIGINT NOT NULL, run_uuid VARCHAR(32) NOT NULL, step BIGINT NOT "
                "NULL, is_nan BOOLEAN NOT NULL)"
            )
        )
        conn.execute(
            text("INSERT INTO metrics VALUES ('m', :v, :t, 'r', :s, 0)"),
            [{"v": float(v), "t": T0 + i, "s": i} for i, v in enumerate(walk(1000))],
        )
    reduced = read_minmax(engine, "r", "m", buckets=20, workers=2)
    assert reduced is not None and reduced[1] == 1000
    whole = read_series(engine, "r", "m")
    picked = downsample_indices(whole.steps, whole.values, 42, "minmax")
    assert as_tuples(reduced[0]) == as_tuples(whole.take(picked))
    engine.dispose()


def test_series_for_bad_arguments(store: Store) -> None:
    with pytest.raises(ValueError, match="x must be"):
        series_for(store.engine, store.run, "loss", max_points=10, x="wall")
    with pytest.raises(ValueError, match="method"):
        series_for(store.engine, store.run, "loss", max_points=10, method="mean")
    with pytest.raises(ValueError, match="max_points"):
        series_for(store.engine, store.run, "loss", max_points=0)
    with pytest.raises(ValueError, match="strategy"):
        series_for(store.engine, store.run, "loss", max_points=10, strategy="guess")
