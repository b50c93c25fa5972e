"""Metric series of MLflow runs, read straight from MLflow's store and downsampled for charts.

MLflow's ``get_metric_history`` builds an ORM object and an entity for every point (tens
of microseconds each), so a series of a million points takes most of a minute. This
module reads MLflow's ``metrics`` table itself, through an engine on MLflow's store
(``TrackingServer.engine``), and gives a chart at most ``max_points`` points that keep the
curve's shape:

* ``minmax``: the x range (steps or timestamps) is cut into equal buckets, and each bucket
  keeps the point with its smallest and the one with its largest value, in x order, so
  spikes survive at any zoom.
* ``lttb``: Largest-Triangle-Three-Buckets (Steinarsson, 2013), which picks in each of
  ``max_points - 2`` equal-count buckets the point spanning the largest triangle with its
  neighbours: a smoother likeness of the curve.

Both always keep the first and the last point and the global minimum and maximum (given
``max_points >= 4``); NaN values are never picked.

Where the work happens. A series of up to :data:`FETCH_LIMIT` points is read whole, by the
driver's cheapest path into numpy, and downsampled here. A longer one never leaves the
database whole: the database finds each bucket's extremes and only those rows come back
(:func:`read_minmax`), the answer itself for ``minmax``; for ``lttb`` with four times as
many buckets, which LTTB then reduces in numpy (MinMaxLTTB, Van Der Donckt et al., 2023:
LTTB over a min/max preselection picks almost the same points, at a cost independent of
the series' length). On SQLite that is two range scans of MLflow's (run, key, step) index
per bucket, on PostgreSQL one hash aggregation; a few threads share the buckets. Any
other database is read whole.

Values are what MLflow's own API returns: NaN where MLflow recorded NaN (it stores 0 and
``is_nan``), and for ±infinity the largest double, ±1.7976931348623157e308, which is what
MLflow stores in its place.
"""

from __future__ import annotations

import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import numpy as np
import numpy.typing as npt
from sqlalchemy import text

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from sqlalchemy import Connection, Engine

Method = Literal["lttb", "minmax"]
Axis = Literal["step", "timestamp"]
Strategy = Literal["auto", "fetch", "database"]

METHODS: tuple[Method, ...] = ("lttb", "minmax")
AXES: tuple[Axis, ...] = ("step", "timestamp")
STRATEGIES: tuple[Strategy, ...] = ("auto", "fetch", "database")

#: A series of at most this many points is read whole and downsampled in Python; a longer
#: one is reduced inside the database first (see the module's documentation).
FETCH_LIMIT = 50_000
#: Threads, each with a connection of its own, that share the database's pass over a long
#: series: the pass is bound by one core.
WORKERS = max(1, min(2, os.cpu_count() or 1))
#: Candidates per output point that the database preselects for LTTB (MinMaxLTTB's ratio).
MINMAX_RATIO = 4

T = TypeVar("T")
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]

_ROW = np.dtype([("step", "<i8"), ("timestamp", "<i8"), ("value", "<f8"), ("is_nan", "?")])
# Bucket arithmetic runs on 64-bit integers in the database: (x - x0) * buckets < 2**63.
_INT64_LIMIT = 2**63
# Integers up to this magnitude survive a round trip through float8.
_FLOAT8_EXACT = 2.0**53
# Rowids per ``IN (...)`` list (SQLite allows 999 parameters in old builds).
_SQLITE_CHUNK = 500
# SQLite reads the store's pages through a memory map rather than a read() call per page:
# a fifth less CPU for a long series. (Address space only; the pages are the OS's cache.)
_SQLITE_MMAP = 2**30


@dataclass(frozen=True, eq=False)
class Series:
    """One metric of one run: three arrays of the same length, in x order."""

    steps: IntArray
    timestamps: IntArray
    values: FloatArray  # NaN where MLflow recorded NaN

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def axis(self, x: Axis) -> IntArray:
        """The x coordinates: ``steps`` or ``timestamps``."""
        return self.steps if x == "step" else self.timestamps

    def take(self, indices: IndexArray) -> Series:
        """The points at ``indices``, in that order."""
        return Series(self.steps[indices], self.timestamps[indices], self.values[indices])

    @classmethod
    def from_rows(cls, rows: npt.NDArray[Any], x: Axis = "step") -> Series:
        """A series from a structured array of (step, timestamp, value, is_nan) rows in any
        order; sorted by x, then by the other of step and timestamp, then by value (the
        order of MLflow's own sampled histories)."""
        steps = np.ascontiguousarray(rows["step"], dtype=np.int64)
        timestamps = np.ascontiguousarray(rows["timestamp"], dtype=np.int64)
        values = np.array(rows["value"], dtype=np.float64)
        values[np.asarray(rows["is_nan"], dtype=bool)] = np.nan
        first, second = (steps, timestamps) if x == "step" else (timestamps, steps)
        if not _is_sorted(first, second, values):
            order = np.lexsort((values, second, first))  # NaN after the numbers
            steps, timestamps, values = steps[order], timestamps[order], values[order]
        return cls(steps, timestamps, values)


def _is_sorted(first: IntArray, second: IntArray, values: FloatArray) -> bool:
    """Whether rows are in (first, second, value) order, checked in a few vector passes:
    the databases mostly hand them over in order already (an index walk)."""
    if first.shape[0] < 2:
        return True
    d1 = np.diff(first)
    if bool((d1 < 0).any()):
        return False
    tied = d1 == 0
    if not bool(tied.any()):
        return True
    d2 = np.diff(second)
    if bool((tied & (d2 < 0)).any()):
        return False
    tied &= d2 == 0
    if not bool(tied.any()):
        return True
    later, earlier = values[1:][tied], values[:-1][tied]
    return not bool(((later < earlier) | (np.isnan(earlier) & ~np.isnan(later))).any())


def _check(x: str, method: str | None = None, max_points: int | None = None) -> None:
    if x not in AXES:
        raise ValueError(f"x must be one of {', '.join(AXES)}, not {x!r}")
    if method is not None and method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if max_points is not None and max_points < 1:
        raise ValueError(f"max_points must be at least 1, not {max_points}")


# --------------------------------------------------------------------------- reading


def _backend(engine: Engine) -> str:
    """``sqlite``, ``psycopg`` (PostgreSQL through psycopg 3), ``postgresql`` or ``other``."""
    name = engine.dialect.name
    if name == "postgresql":
        return "psycopg" if engine.dialect.driver == "psycopg" else "postgresql"
    return name if name == "sqlite" else "other"


def _order(x: Axis) -> tuple[str, str]:
    return ("step", '"timestamp"') if x == "step" else ('"timestamp"', "step")


def read_series(engine: Engine, run_id: str, key: str, *, x: Axis = "step") -> Series:
    """Every point of one metric of one run, ordered by ``x`` then by the other coordinate.

    Several values logged at the same step are all kept. An unknown run or key gives an
    empty series.
    """
    _check(x)
    backend = _backend(engine)
    with engine.connect() as conn:
        if backend == "sqlite":
            rows = _sqlite_rows(conn, run_id, key)
        elif backend == "psycopg":
            rows = _psycopg_rows(conn, run_id, key)
        else:
            result = conn.execute(
                text(
                    'SELECT step, "timestamp", value, is_nan FROM metrics '
                    'WHERE run_uuid = :run AND "key" = :key'
                ),
                {"run": run_id, "key": key},
            )
            rows = np.array([tuple(r) for r in result], dtype=_ROW)
    return Series.from_rows(rows, x)


def _driver_connection(conn: Connection) -> Any:
    return conn.connection.driver_connection


def _sqlite_cursor(conn: Connection) -> Any:
    cursor = _driver_connection(conn).cursor()
    cursor.execute(f"PRAGMA mmap_size = {_SQLITE_MMAP}").fetchall()
    return cursor


def _sqlite_rows(conn: Connection, run_id: str, key: str) -> npt.NDArray[Any]:
    # ORDER BY step walks the (run_uuid, key, step) index: no sort, and only this run's
    # rows (by timestamp, SQLite would walk MLflow's primary key, which starts with the
    # key and so holds every run's points of it). numpy puts ties and timestamps in order.
    cursor = _sqlite_cursor(conn)
    try:
        cursor.execute(
            'SELECT step, "timestamp", value, is_nan FROM metrics '
            'WHERE run_uuid = ? AND "key" = ? ORDER BY step',
            (run_id, key),
        )
        return np.fromiter(cursor, dtype=_ROW)
    finally:
        cursor.close()


def _psycopg_rows(conn: Connection, run_id: str, key: str) -> npt.NDArray[Any]:
    # One row of four byte strings: each column's values in PostgreSQL's binary form
    # (big-endian), concatenated by the server, fetched in binary and read by numpy without
    # a Python object per point. Twice as fast as COPY ... (FORMAT BINARY), whose rows
    # psycopg hands over one by one, and than fetchall. (A byte string holds up to 1 GB:
    # 134 million points.)
    cursor = _driver_connection(conn).cursor(binary=True)
    try:
        cursor.execute(
            "SELECT count(*), string_agg(int8send(step), ''::bytea), "
            "string_agg(int8send(\"timestamp\"), ''::bytea), "
            "string_agg(float8send(value), ''::bytea), string_agg(boolsend(is_nan), ''::bytea) "
            'FROM metrics WHERE run_uuid = %s AND "key" = %s',
            (run_id, key),
        )
        count, steps, timestamps, values, nan = cursor.fetchone()
    finally:
        cursor.close()
    rows = np.empty(count, dtype=_ROW)
    if count:
        rows["step"] = np.frombuffer(steps, dtype=">i8")
        rows["timestamp"] = np.frombuffer(timestamps, dtype=">i8")
        rows["value"] = np.frombuffer(values, dtype=">f8")
        rows["is_nan"] = np.frombuffer(nan, dtype="?")
    return rows


def count_points(engine: Engine, run_id: str, key: str, *, limit: int | None = None) -> int:
    """How many points the metric has, counting at most ``limit`` (then it is cheap)."""
    where = 'FROM metrics WHERE run_uuid = :run AND "key" = :key'
    params: dict[str, Any] = {"run": run_id, "key": key}
    if limit is None:
        query = f"SELECT count(*) {where}"
    else:
        query = f"SELECT count(*) FROM (SELECT 1 {where} LIMIT :limit) AS head"  # noqa: S608
        params["limit"] = limit
    with engine.connect() as conn:
        return int(conn.execute(text(query), params).scalar_one())


# --------------------------------------------------------------------------- in the database


@dataclass(frozen=True)
class _Buckets:
    """``count`` equal buckets over the integers ``x0 .. x1``: a point at x is in bucket
    ``(x - x0) * count // (x1 - x0 + 1)``, the same arithmetic as :func:`_bucket_ids`."""

    x0: int
    x1: int
    count: int

    @property
    def span(self) -> int:
        return self.x1 - self.x0 + 1

    def lower(self, index: int) -> int:
        """The smallest x in bucket ``index`` (``index == count``: just past the last)."""
        return self.x0 + -(-index * self.span // self.count)

    def parts(self, workers: int) -> list[tuple[int, int]]:
        """Up to ``workers`` contiguous ranges of bucket numbers, ``[start, stop)``."""
        workers = max(1, min(workers, self.count))
        cuts = [self.count * i // workers for i in range(workers + 1)]
        return list(itertools.pairwise(cuts))


def read_minmax(
    engine: Engine, run_id: str, key: str, *, buckets: int, x: Axis = "step", workers: int = 0
) -> tuple[Series, int] | None:
    """Min/max buckets computed by the database: the points a chart needs, and the total.

    The x range of the series is cut into ``buckets`` equal buckets, as
    :func:`downsample` does with ``method="minmax"`` and ``max_points = 2 * buckets + 2``,
    and the same points come back: the first and the last point that are not NaN, and in
    each bucket the one with the smallest and the one with the largest value (the earliest
    where several tie). The total counts every point, NaN included.

    ``workers`` threads, each with a connection of its own, share the buckets (0: one per
    core, at most :data:`WORKERS`).

    Returns None where the database cannot do it (neither SQLite nor PostgreSQL, or x
    values so far apart that the bucket arithmetic would overflow 64 bits); the caller then
    reads the series whole.
    """
    _check(x)
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, not {buckets}")
    backend = _backend(engine)
    if backend not in ("sqlite", "psycopg", "postgresql"):
        return None
    first, _second = _order(x)
    where = 'FROM metrics WHERE run_uuid = :run AND "key" = :key'
    with engine.connect() as conn:
        # Each bound its own subquery, so that both are index lookups (for steps).
        low, high = conn.execute(
            text(f"SELECT (SELECT min({first}) {where}), (SELECT max({first}) {where})"),
            {"run": run_id, "key": key},
        ).one()
    if low is None:
        return Series.from_rows(np.empty(0, dtype=_ROW), x), 0
    plan = _Buckets(int(low), int(high), buckets)
    if plan.span * (buckets + 1) >= _INT64_LIMIT:
        return None
    if workers < 1:
        workers = WORKERS
    if backend == "sqlite" and not _sqlite_file(engine):
        workers = 1  # every connection to an in-memory database sees a database of its own
    parts = plan.parts(workers)
    if backend == "sqlite":
        scans = _in_parallel(lambda part: _sqlite_scan(engine, run_id, key, x, plan, part), parts)
        rows, total = _sqlite_points(engine, run_id, key, x, scans)
    else:
        found = _in_parallel(lambda part: _postgres_scan(engine, run_id, key, x, plan, part), parts)
        points: set[tuple[float, float, float]] = set()
        for part_points, _count in found:
            points |= part_points
        total = sum(count for _points, count in found)
        reduced = _postgres_points(engine, run_id, key, x, points)
        if reduced is None:
            return None
        rows = reduced
    return Series.from_rows(rows, x), total


def _in_parallel(work: Callable[[tuple[int, int]], T], parts: list[tuple[int, int]]) -> list[T]:
    if len(parts) == 1:
        return [work(parts[0])]
    with ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="zt-series") as pool:
        return list(pool.map(work, parts))


def _sqlite_file(engine: Engine) -> bool:
    database = engine.url.database or ""
    return database not in ("", ":memory:") and "mode=memory" not in str(engine.url)


@dataclass
class _SqliteScan:
    rowids: list[int]
    total: int
    filled: list[tuple[int, int]]  # (lo, hi) of the buckets holding a non-NaN point


def _sqlite_scan(
    engine: Engine, run_id: str, key: str, x: Axis, plan: _Buckets, part: tuple[int, int]
) -> _SqliteScan:
    """Buckets ``part`` of the series: each one's extremes (rowids) and its count.

    For every bucket, one range scan of the index finds the minimum and another the
    maximum. SQLite hands back, next to a lone ``min()`` or ``max()``, the other columns of
    the row that holds it ("bare columns"), so each scan names its extreme's rowid. (A
    GROUP BY over the bucket number would sort every row first; these scans follow the
    index and never leave SQLite's C code.)
    """
    first, _second = _order(x)
    bucket = f'run_uuid = :run AND "key" = :key AND {first} >= b.lo AND {first} < b.hi'
    query = (
        "WITH RECURSIVE b(i, lo, hi) AS ("  # noqa: S608 - constants
        " SELECT :start, :x0 + (:start * :span + :nb - 1) / :nb,"
        " :x0 + ((:start + 1) * :span + :nb - 1) / :nb"
        " UNION ALL SELECT i + 1, hi, :x0 + ((i + 2) * :span + :nb - 1) / :nb"
        " FROM b WHERE i + 1 < :stop) "
        "SELECT lo, hi, "
        " (SELECT printf('%d %d %d', v IS NOT NULL, rowid, n) FROM"
        "  (SELECT min(CASE WHEN is_nan THEN NULL ELSE value END) AS v, rowid, count(*) AS n"
        f"   FROM metrics WHERE {bucket})),"
        " (SELECT rowid FROM"
        f"  (SELECT max(value), rowid FROM metrics WHERE {bucket} AND NOT is_nan)) "
        "FROM b"
    )
    params = {
        "run": run_id,
        "key": key,
        "x0": plan.x0,
        "span": plan.span,
        "nb": plan.count,
        "start": part[0],
        "stop": part[1],
    }
    scan = _SqliteScan([], 0, [])
    with engine.connect() as conn:
        cursor = _sqlite_cursor(conn)
        try:
            for lo, hi, lowest, highest in cursor.execute(query, params):
                found, rowid, count = lowest.split()
                scan.total += int(count)
                if found == "1":
                    scan.rowids += (int(rowid), highest)
                    scan.filled.append((lo, hi))
        finally:
            cursor.close()
    return scan


def _sqlite_points(
    engine: Engine, run_id: str, key: str, x: Axis, scans: list[_SqliteScan]
) -> tuple[npt.NDArray[Any], int]:
    """The rows the scans picked, plus the first and the last non-NaN point."""
    first, second = _order(x)
    edge = (
        'SELECT rowid FROM metrics WHERE run_uuid = ? AND "key" = ? '  # noqa: S608 - constants
        f"AND {first} >= ? AND {first} < ? AND NOT is_nan ORDER BY {{}} LIMIT 1"
    )
    rowids = {rowid for scan in scans for rowid in scan.rowids}
    filled = [bounds for scan in scans for bounds in scan.filled]
    rows: list[tuple[Any, ...]] = []
    with engine.connect() as conn:
        cursor = _sqlite_cursor(conn)
        try:
            if filled:
                # Only the first and the last bucket holding a number need searching.
                for order, bounds in (
                    (f"{first}, {second}", filled[0]),
                    (f"{first} DESC, {second} DESC", filled[-1]),
                ):
                    cursor.execute(edge.format(order), (run_id, key, *bounds))
                    rowids.add(cursor.fetchone()[0])
            unique = sorted(rowids)
            for start in range(0, len(unique), _SQLITE_CHUNK):
                chunk = unique[start : start + _SQLITE_CHUNK]
                marks = ", ".join("?" * len(chunk))
                cursor.execute(
                    'SELECT step, "timestamp", value, is_nan FROM metrics '  # noqa: S608
                    f"WHERE rowid IN ({marks})",
                    chunk,
                )
                rows += cursor.fetchall()
        finally:
            cursor.close()
    return np.array(rows, dtype=_ROW), sum(scan.total for scan in scans)


def _postgres_scan(
    engine: Engine, run_id: str, key: str, x: Axis, plan: _Buckets, part: tuple[int, int]
) -> tuple[set[tuple[float, float, float]], int]:
    """Buckets ``part`` of the series in one hash aggregation: their extremes and count.

    ``min(ARRAY[value, x, other])`` is the row with the smallest value (the earliest among
    ties) in one pass; for the maximum, x is negated so that ties again go to the earliest.
    The arrays are float8: exact for coordinates below 2**53 in magnitude, which
    :func:`_postgres_points` checks. Returns {(x, other, value)} and the count.
    """
    first, second = _order(x)
    bucket = f"({first} - CAST(:x0 AS BIGINT)) * CAST(:nb AS BIGINT) / CAST(:span AS BIGINT)"
    query = text(
        "SELECT count(*), "  # noqa: S608 - constants
        f"min(ARRAY[value, {first}, {second}]) FILTER (WHERE NOT is_nan), "
        f"max(ARRAY[value, -{first}, -{second}]) FILTER (WHERE NOT is_nan) "
        'FROM metrics WHERE run_uuid = :run AND "key" = :key '
        f"AND {first} >= :lo AND {first} < :hi GROUP BY {bucket}"
    )
    params = {
        "run": run_id,
        "key": key,
        "x0": plan.x0,
        "nb": plan.count,
        "span": plan.span,
        "lo": plan.lower(part[0]),
        "hi": plan.lower(part[1]),
    }
    points: set[tuple[float, float, float]] = set()
    total = 0
    with engine.connect() as conn:
        for count, low, high in conn.execute(query, params):
            total += int(count)
            if low is not None:
                points.add((low[1], low[2], low[0]))
                points.add((-high[1], -high[2], high[0]))
    return points, total


def _postgres_points(
    engine: Engine, run_id: str, key: str, x: Axis, points: set[tuple[float, float, float]]
) -> npt.NDArray[Any] | None:
    """Rows for the scans' points plus the first and the last non-NaN point; None if a
    coordinate was too large for float8 to hold exactly."""
    if not points:
        return np.empty(0, dtype=_ROW)
    first, second = _order(x)
    edge = (
        f"SELECT {first}, {second}, value FROM metrics "  # noqa: S608 - constants
        'WHERE run_uuid = :run AND "key" = :key AND NOT is_nan ORDER BY {} LIMIT 1'
    )
    with engine.connect() as conn:
        for order in (f"{first}, {second}", f"{first} DESC, {second} DESC"):
            row = conn.execute(text(edge.format(order)), {"run": run_id, "key": key}).one()
            points.add((float(row[0]), float(row[1]), float(row[2])))
    if any(abs(p[0]) >= _FLOAT8_EXACT or abs(p[1]) >= _FLOAT8_EXACT for p in points):
        return None
    table = np.array(sorted(points), dtype=np.float64)
    rows = np.empty(table.shape[0], dtype=_ROW)
    rows["step" if x == "step" else "timestamp"] = table[:, 0].astype(np.int64)
    rows["timestamp" if x == "step" else "step"] = table[:, 1].astype(np.int64)
    rows["value"] = table[:, 2]
    rows["is_nan"] = False
    return rows


# --------------------------------------------------------------------------- downsampling


def downsample(
    x: npt.ArrayLike, y: npt.ArrayLike, max_points: int, method: Method = "lttb"
) -> tuple[npt.NDArray[Any], FloatArray]:
    """At most ``max_points`` points of the series (x, y) that keep its shape.

    See :func:`downsample_indices`; this returns ``(x[picked], y[picked])``.
    """
    xs = np.asarray(x)
    ys = np.asarray(y, dtype=np.float64)
    picked = downsample_indices(xs, ys, max_points, method)
    return xs[picked], ys[picked]


def downsample_indices(
    x: npt.ArrayLike, y: npt.ArrayLike, max_points: int, method: Method = "lttb"
) -> IndexArray:
    """Positions of at most ``max_points`` points of (x, y) that keep the curve's shape.

    Args:
        x: ascending x coordinates (equal neighbours allowed), integers or floats.
        y: the values; NaN marks a missing value and is never picked.
        max_points: the most points to keep, at least 1.
        method: ``"lttb"`` (Largest-Triangle-Three-Buckets over equal-count buckets) or
            ``"minmax"`` (equal x-width buckets, each keeping its lowest and highest point).

    Returns:
        Ascending positions into x and y. A series of at most ``max_points`` points comes
        back whole (NaN included); otherwise the first and last non-NaN points and the
        global minimum and maximum are always among them. Below 4 points there is not room
        for all four; they are kept in that order of priority (first, last, max, min).

    Raises:
        ValueError: unknown method, ``max_points < 1``, x and y of different lengths, or
            x not ascending.
    """
    _check("step", method, max_points)
    xs = np.asarray(x)
    ys = np.asarray(y, dtype=np.float64)
    if xs.ndim != 1 or xs.shape != ys.shape:
        raise ValueError("x and y must be one-dimensional and of the same length")
    n = ys.shape[0]
    if n <= max_points:
        return np.arange(n, dtype=np.intp)
    if bool((xs[1:] < xs[:-1]).any()):
        raise ValueError("x must be in ascending order")
    valid = np.flatnonzero(~np.isnan(ys))
    if valid.shape[0] <= max_points:
        return valid
    if max_points < 4:
        return _essentials(ys, valid, max_points)
    if method == "minmax":
        return _minmax(xs, ys, valid, (max_points - 2) // 2)
    return valid[_lttb(xs[valid], ys[valid], max_points)]


def _essentials(y: FloatArray, valid: IndexArray, max_points: int) -> IndexArray:
    values = y[valid]
    ranked = [
        int(valid[0]),
        int(valid[-1]),
        int(valid[int(np.argmax(values))]),
        int(valid[int(np.argmin(values))]),
    ]
    kept = list(dict.fromkeys(ranked))[:max_points]
    return np.array(sorted(kept), dtype=np.intp)


def _bucket_ids(x: npt.NDArray[Any], buckets: int) -> npt.NDArray[np.int64]:
    """Bucket of each x among ``buckets`` equal buckets over x[0] .. x[-1]."""
    n = x.shape[0]
    if buckets <= 1 or n == 0:
        return np.zeros(n, dtype=np.int64)
    if np.issubdtype(x.dtype, np.integer):
        x0 = int(x[0])
        span = int(x[-1]) - x0 + 1
        if span * buckets < _INT64_LIMIT:
            # Exactly the integer arithmetic the database does (see read_minmax).
            offsets = x.astype(np.int64) - np.int64(x0)
            return cast(npt.NDArray[np.int64], offsets * np.int64(buckets) // np.int64(span))
    xf = x.astype(np.float64)
    lo, hi = float(xf[0]), float(xf[-1])
    if not hi > lo:
        return np.zeros(n, dtype=np.int64)
    ids = np.floor((xf - lo) / (hi - lo) * buckets).astype(np.int64)
    return cast(npt.NDArray[np.int64], np.clip(ids, 0, buckets - 1))


def _first_in_segment(positions: IndexArray, segment: npt.NDArray[np.int64]) -> IndexArray:
    """For positions ascending, the first position of each segment they fall in."""
    seg = segment[positions]
    first = np.empty(seg.shape[0], dtype=bool)
    first[:1] = True
    np.not_equal(seg[1:], seg[:-1], out=first[1:])
    return positions[first]


def _minmax(x: npt.NDArray[Any], y: FloatArray, valid: IndexArray, buckets: int) -> IndexArray:
    ids = _bucket_ids(x, buckets)[valid]
    values = y[valid]
    # x ascends, so each bucket's points are one contiguous run of ``valid``.
    change = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    starts = np.concatenate(([0], change))
    lengths = np.diff(np.concatenate((starts, [values.shape[0]])))
    segment = np.repeat(np.arange(starts.shape[0], dtype=np.int64), lengths)
    lows = np.minimum.reduceat(values, starts)[segment]
    highs = np.maximum.reduceat(values, starts)[segment]
    picked = np.concatenate(
        (
            [0, values.shape[0] - 1],
            _first_in_segment(np.flatnonzero(values == lows), segment),
            _first_in_segment(np.flatnonzero(values == highs), segment),
        )
    )
    return cast(IndexArray, valid[np.unique(picked)])


def _lttb(x: npt.NDArray[Any], y: FloatArray, threshold: int) -> IndexArray:
    """Largest-Triangle-Three-Buckets over n > threshold >= 4 points without NaN, plus the
    global minimum and maximum: positions of ``threshold`` points, ascending."""
    n = y.shape[0]
    xf = x.astype(np.float64) - float(x[0])  # relative, for precision with timestamps
    middle = threshold - 2
    every = (n - 2) / middle
    # Bucket j (0 .. middle-1) holds points edges[j] .. edges[j+1]-1; edges[middle] = n-1,
    # and the last "bucket" (the last point alone) closes the list.
    edges = (np.arange(middle + 1) * every).astype(np.int64) + 1
    edges[-1] = n - 1
    sizes = np.diff(np.concatenate((edges, [n])))
    with np.errstate(over="ignore", invalid="ignore"):
        mean_x = (np.add.reduceat(xf, edges) / sizes).tolist()
        mean_y = (np.add.reduceat(y, edges) / sizes).tolist()
    bounds = edges.tolist()
    picked = np.empty(threshold, dtype=np.intp)
    picked[0], picked[-1] = 0, n - 1
    ax, ay = float(xf[0]), float(y[0])
    with np.errstate(over="ignore", invalid="ignore"):
        for j in range(middle):
            lo, hi = bounds[j], bounds[j + 1]
            # Twice the triangle (a, b, mean of the next bucket) for every b in bucket j:
            # |(ax - cx)(by - ay) - (ax - bx)(cy - ay)| = |A by + B bx - C|.
            a_coef = ax - mean_x[j + 1]
            b_coef = mean_y[j + 1] - ay
            c_coef = a_coef * ay + b_coef * ax
            area = np.abs(a_coef * y[lo:hi] + b_coef * xf[lo:hi] - c_coef)
            best = lo + int(np.argmax(area))  # a NaN area (infinite values) wins
            picked[j + 1] = best
            ax, ay = float(xf[best]), float(y[best])
    _force_extremes(picked, edges, y)
    return picked


def _force_extremes(picked: IndexArray, edges: npt.NDArray[np.int64], y: FloatArray) -> None:
    """Put the global maximum and minimum in ``picked`` (in place), each in place of its
    bucket's pick, or of a neighbour's when the other extreme already took that one."""
    forced: set[int] = set()
    chosen = set(picked.tolist())
    middle = edges.shape[0] - 1
    for extreme in (int(np.argmax(y)), int(np.argmin(y))):
        if extreme in chosen:
            forced.add(extreme)
            continue
        slot = int(np.searchsorted(edges, extreme, side="right"))  # 1 .. middle
        if int(picked[slot]) in forced:
            slot = slot + 1 if slot < middle else slot - 1
        chosen.discard(int(picked[slot]))
        picked[slot] = extreme
        chosen.add(extreme)
        forced.add(extreme)
    picked.sort()


# --------------------------------------------------------------------------- for the API


def series_for(
    engine: Engine,
    run_id: str,
    key: str,
    *,
    max_points: int,
    method: str = "lttb",
    x: str = "step",
    strategy: Strategy = "auto",
) -> dict[str, Any]:
    """One metric of one run, downsampled to at most ``max_points`` points, ready for JSON.

    Args:
        engine: an engine on MLflow's store (``TrackingServer.engine``).
        run_id: the MLflow run; the caller has checked that the user may read it.
        key: the metric's name.
        max_points: the most points to return (at least 1).
        method: ``"lttb"`` or ``"minmax"`` (see the module's documentation).
        x: ``"step"`` or ``"timestamp"``: the axis the buckets are cut along, and the order.
        strategy: ``"auto"`` reads series longer than :data:`FETCH_LIMIT` through the
            database's min/max buckets; ``"fetch"`` always reads the series whole;
            ``"database"`` uses the buckets whenever the series is longer than
            ``max_points``. Benchmarks and tests compare them; callers keep ``"auto"``.

    Returns:
        ``{"run_id", "key", "x", "method", "points", "total", "steps", "timestamps",
        "values"}``: ``points`` returned out of ``total`` recorded (NaN included), in x
        order; ``values`` are floats with NaN (and infinities, which MLflow does not
        store) as None.

    Raises:
        ValueError: unknown ``method``, ``x`` or ``strategy``, or ``max_points < 1``.
    """
    _check(x, method, max_points)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    axis = cast(Axis, x)
    how = cast(Method, method)
    chosen: Series | None = None
    total = 0
    limit = max_points if strategy == "database" else max(max_points, FETCH_LIMIT)
    if strategy != "fetch" and count_points(engine, run_id, key, limit=limit + 1) > limit:
        buckets = (max_points - 2) // 2 if how == "minmax" else MINMAX_RATIO * max_points // 2
        reduced = read_minmax(engine, run_id, key, buckets=max(buckets, 1), x=axis)
        if reduced is not None:
            candidates, total = reduced
            if how == "minmax" and max_points >= 4:
                chosen = candidates
            else:
                picked = downsample_indices(
                    candidates.axis(axis), candidates.values, max_points, how
                )
                chosen = candidates.take(picked)
    if chosen is None:
        series = read_series(engine, run_id, key, x=axis)
        total = len(series)
        chosen = series.take(downsample_indices(series.axis(axis), series.values, max_points, how))
    return {
        "run_id": run_id,
        "key": key,
        "x": axis,
        "method": how,
        "points": len(chosen),
        "total": total,
        "steps": chosen.steps.tolist(),
        "timestamps": chosen.timestamps.tolist(),
        "values": _json_floats(chosen.values.tolist()),
    }


def _json_floats(values: Sequence[float]) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in values]
