"""Previews, schemas, row counts and quality reports for tabular dataset files.

Dataset files are uploaded by users, so everything here treats them as untrusted input:

* Every call opens its own in-memory DuckDB database and closes it afterwards, so nothing read
  from one file can leak into the next call.
* That database may touch only the one file it was asked about (``allowed_paths`` plus
  ``enable_external_access = false``), cannot install or load extensions, and its configuration
  is locked. The path always travels as a query parameter, never spliced into SQL, so odd
  names (quotes, brackets) are harmless.
* Threads and memory are capped because the server runs other work next to these reports.
* SQL text is only ever assembled from this module's own constants and from column names
  quoted by ``_quote`` (hence the ``noqa: S608`` markers); paths and values are parameters.
* Nothing is ever executed or unpickled: only CSV/TSV, Parquet and JSON Lines readers run.
* Bad input (ragged rows, broken encodings, malformed JSON, damaged Parquet) never raises.
  Callers get what could be read plus human-readable ``problems``.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

Format = Literal["csv", "tsv", "parquet", "jsonl"]

T = TypeVar("T")

#: The most rows one preview page may hold; bigger requests are cut down to this.
MAX_PREVIEW_ROWS = 1000
# Text columns with more distinct values than this share of the rows get no top values.
_TOP_MAX_DISTINCT_SHARE = 0.1

# DuckDB runs inside the web server process next to other work, so keep it modest.
_THREADS = 2
_MEMORY_LIMIT = "1GB"
# The quality report may spill big GROUP BYs to a private temporary directory; cap the disk too.
_MAX_SPILL = "4GB"

# How many rejected CSV lines DuckDB records per scan. A file that is broken everywhere
# should not fill memory with error rows; the report then says "at least".
_REJECTS_LIMIT = 10_000
# How many individual problem lines to list before summarising the rest.
_MAX_LISTED_PROBLEMS = 20

# Mixed types: a text column is suspicious when at least this share, but not all, of its
# non-null values look like numbers.
_MIXED_MIN_SHARE = 0.2
_HIGH_NULL_SHARE = 0.5
# What "looks like a number" means. A regular expression rather than TRY_CAST(... AS DOUBLE),
# because DuckDB's cast also accepts words such as "nan", "inf" or "infinity", which in a text
# column are far more likely to be names than numbers.
_NUMBER_PATTERN = r"[+-]?([0-9]+([.][0-9]*)?|[.][0-9]+)([eE][+-]?[0-9]+)?"

_EXTENSIONS: dict[str, Format] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}

_MEDIA_TYPES: dict[str, Format] = {
    "text/csv": "csv",
    "application/csv": "csv",
    "text/tab-separated-values": "tsv",
    "application/vnd.apache.parquet": "parquet",
    "application/parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/jsonl": "jsonl",
    "application/x-jsonlines": "jsonl",
    "application/jsonlines": "jsonl",
    "application/x-ndjson": "jsonl",
    "application/ndjson": "jsonl",
}

_NUMERIC_TYPES = frozenset(
    {
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "BIGINT",
        "HUGEINT",
        "UTINYINT",
        "USMALLINT",
        "UINTEGER",
        "UBIGINT",
        "UHUGEINT",
        "FLOAT",
        "DOUBLE",
    }
)
_INTEGER_TYPES = _NUMERIC_TYPES - {"FLOAT", "DOUBLE"}


def tabular_format(path: str, media_type: str | None = None) -> Format | None:
    """Say which tabular reader fits a file, or None when it is not a tabular file.

    The extension (.csv, .tsv, .tab, .parquet, .pq, .jsonl, .ndjson; case-insensitive) decides
    first because it is what the uploader chose for the file; the media type is only consulted
    when the extension says nothing, e.g. for files stored under an opaque key. Anything else,
    say a ``.pkl``, is not tabular: we never try to interpret such files.
    """
    by_extension = _EXTENSIONS.get(PurePath(path).suffix.lower())
    if by_extension is not None:
        return by_extension
    if media_type:
        essence = media_type.split(";", 1)[0].strip().lower()
        return _MEDIA_TYPES.get(essence)
    return None


@dataclass(frozen=True)
class Column:
    """One column as DuckDB reads it; ``type`` is DuckDB's type name, e.g. "BIGINT"."""

    name: str
    type: str


@dataclass
class Preview:
    """One page of rows; ``rows`` hold JSON-safe values so the page can go straight to a client."""

    columns: list[Column]
    rows: list[list[Any]]
    offset: int
    limit: int
    problems: list[str]


@dataclass
class Summary:
    """Schema and exact row count; ``rows`` is None when it could not be counted."""

    columns: list[Column]
    rows: int | None
    problems: list[str]


def preview(path: Path, fmt: Format, *, offset: int = 0, limit: int = 50) -> Preview:
    """Return one page of rows, reading only as much of the file as the page needs.

    DuckDB stops scanning once LIMIT/OFFSET is satisfied and sniffs CSV dialect and types from
    a bounded sample, so the first page of a huge CSV costs about the same as that of a small
    one. ``limit`` is capped at ``MAX_PREVIEW_ROWS`` so one request cannot ask for the whole
    file. Ragged CSV rows and invalid UTF-8 are skipped and listed in ``problems``; they never
    raise (a CSV that is mostly not UTF-8 is read as Latin-1 instead, also noted in
    ``problems``). Offsets count rows that could be read, not physical lines.
    """
    offset = max(0, offset)
    limit = max(0, min(limit, MAX_PREVIEW_ROWS))

    def page(con: duckdb.DuckDBPyConnection, source: str, target: str) -> Preview:
        cursor = con.execute(f"SELECT * FROM {source} LIMIT ? OFFSET ?", [target, limit, offset])  # noqa: S608
        columns = _columns_of(cursor)
        json_columns = {i for i, column in enumerate(columns) if column.type == "JSON"}
        rows = [
            [
                _json_value(value) if i in json_columns else _json_safe(value)
                for i, value in enumerate(row)
            ]
            for row in cursor.fetchall()
        ]
        return Preview(columns=columns, rows=rows, offset=offset, limit=limit, problems=[])

    result, problems = _read(path, fmt, page)
    if result is None:
        return Preview(columns=[], rows=[], offset=offset, limit=limit, problems=problems)
    result.problems = problems
    return result


def summarize_file(path: Path, fmt: Format) -> Summary:
    """Return the schema and the exact number of rows.

    For Parquet both come from the footer, so no data pages are read however large the file
    is. Other formats need one full scan to count; rows DuckDB rejects (ragged, not UTF-8) are
    not counted and are listed in ``problems`` instead.
    """
    if fmt == "parquet":
        return _summarize_parquet(path)

    def count(con: duckdb.DuckDBPyConnection, source: str, target: str) -> Summary:
        cursor = con.execute(f"SELECT * FROM {source} LIMIT 0", [target])  # noqa: S608
        columns = _columns_of(cursor)
        cursor.fetchall()
        # count(*) alone lets DuckDB skip decoding the values, and then rows with invalid
        # UTF-8 would be counted although no other call can read them. Counting every
        # column as well forces each value to be decoded, so the count matches previews.
        count_sql = f"SELECT count(*), count(COLUMNS(*)) FROM {source}"  # noqa: S608
        return Summary(columns=columns, rows=int(_one_row(con, count_sql, target)[0]), problems=[])

    result, problems = _read(path, fmt, count)
    if result is None:
        return Summary(columns=[], rows=None, problems=problems)
    result.problems = problems
    return result


def quality_report(path: Path, fmt: Format, *, top: int = 5) -> dict[str, Any]:
    """Return a JSON-safe quality report for a tabular file.

    Per-column statistics are SUMMARIZE's, computed by DuckDB in one scan with the row
    count and the duplicate count (:func:`_statistics`): ``null_fraction``, ``distinct``
    (approximate: HyperLogLog, as ``distinct_is_approximate`` says), and ``min``, ``max``,
    ``mean`` and ``std`` for numeric columns (None otherwise). Text columns with few enough
    distinct values also get their ``top`` most frequent values with exact counts (None for
    near-unique columns). ``duplicate_rows`` counts rows that repeat an earlier row.

    Warnings flag columns worth a look: ``all_null``; ``high_null_rate`` (at least half
    null); ``constant`` (one distinct non-null value, i.e. SUMMARIZE's min equals its max);
    and, for CSV/TSV/JSON Lines, ``mixed_types``: a column DuckDB had to read as text (VARCHAR,
    or JSON when values differ in JSON type) where at least 20% but not all non-null values
    look like numbers (see ``_NUMBER_PATTERN``), which usually means a numeric column with
    stray text in it.

    Never raises for bad input: broken encodings, ragged rows or unreadable files show up in
    ``problems``, and statistics then describe only the rows that could be read.
    """

    def report(con: duckdb.DuckDBPyConnection, source: str, target: str) -> dict[str, Any]:
        summary, rows, distinct_rows = _statistics(con, source, target)
        duplicate_rows = rows - distinct_rows

        columns = [_column_report(entry, rows) for entry in summary]
        constant = {entry[0] for entry in summary if entry[2] is not None and entry[2] == entry[3]}
        # Top values say something about categories, not about identifiers: a column
        # whose values are nearly all different gets none (and costs no GROUP BY).
        text_columns = [
            c["name"]
            for c in columns
            if c["type"] == "VARCHAR"
            and (c["distinct"] or 0) <= max(_TOP_MAX_DISTINCT_SHARE * rows, 1000)
        ]
        top_values = _top_values(con, source, target, text_columns, top)
        for column in columns:
            if column["type"] == "VARCHAR":
                column["top_values"] = (
                    top_values.get(column["name"], []) if column["name"] in text_columns else None
                )

        warnings: list[dict[str, str]] = []
        for column in columns:
            warnings.extend(_column_warnings(column, rows, column["name"] in constant))
        if fmt != "parquet":
            warnings.extend(_mixed_type_warnings(con, source, target, columns))
        return {
            "rows": rows,
            "duplicate_rows": duplicate_rows,
            "distinct_is_approximate": True,
            "columns": columns,
            "warnings": warnings,
            "problems": [],
        }

    result, problems = _read(path, fmt, report, spill=True)
    if result is None:
        return {
            "rows": 0,
            "duplicate_rows": 0,
            "distinct_is_approximate": True,
            "columns": [],
            "warnings": [],
            "problems": problems,
        }
    result["problems"] = problems
    return result


# -- reading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Attempt:
    """One way of reading a file: the DuckDB table function to use and when to move on."""

    source: str
    # When this attempt fails with an error this predicate accepts, the next attempt is tried.
    retry_if: Callable[[str], bool] | None = None
    # Told to the user when a later attempt had to be used because this one failed.
    fallback_note: str = ""


def _attempts(fmt: Format) -> list[_Attempt]:
    """The readers to try for a format, most faithful first.

    CSV: ``store_rejects`` makes bad lines (ragged rows, invalid UTF-8, values that do not fit
    the sniffed type) skipped and recorded instead of fatal. When the sniffer fails on the
    encoding, or most lines are not UTF-8 (typically a legacy Latin-1 export), the file is read
    again as Latin-1 so the rows can at least be seen; DuckDB's Latin-1 decoder refuses bytes
    0x80-0x9F, and then the UTF-8 result, with its skipped lines, is kept.
    JSON Lines: a malformed line or invalid UTF-8 aborts the strict reader, so the file is read
    again with ``ignore_errors`` (bad lines become empty rows) and the first error is reported.
    """
    if fmt in ("csv", "tsv"):
        delimiter = ", delim = '\t'" if fmt == "tsv" else ""
        options = f"store_rejects = true, rejects_limit = {_REJECTS_LIMIT}{delimiter}"
        return [
            _Attempt(
                f"read_csv(?, {options})",
                retry_if=_is_encoding_error,
                fallback_note="the file is not valid UTF-8, so it was read as Latin-1 and "
                "some characters may look wrong",
            ),
            _Attempt(f"read_csv(?, {options}, encoding = 'latin-1')"),
        ]
    if fmt == "jsonl":
        return [
            _Attempt(
                "read_json(?, format = 'newline_delimited')",
                retry_if=_is_input_error,
                fallback_note="some lines could not be read and were left empty",
            ),
            _Attempt("read_json(?, format = 'newline_delimited', ignore_errors = true)"),
        ]
    return [_Attempt("read_parquet(?)")]


def _is_input_error(message: str) -> bool:
    """Bad file content, as opposed to e.g. a missing file or running out of memory."""
    return message.startswith("Invalid Input Error")


def _is_encoding_error(message: str) -> bool:
    lowered = message.lower()
    return _is_input_error(message) and ("unicode" in lowered or "utf-8" in lowered)


def _read(
    path: Path,
    fmt: Format,
    work: Callable[[duckdb.DuckDBPyConnection, str, str], T],
    *,
    spill: bool = False,
) -> tuple[T | None, list[str]]:
    """Run ``work`` against the file, falling back to more tolerant readers on bad input.

    ``work`` gets a locked-down connection, the SQL of a table function with one ``?`` for the
    path, and the path to bind to it. Returns its result (None when no reader could cope) and
    the problems seen on the way; never raises for bad input.
    """
    if not os.path.isfile(path):
        # Checked up front: DuckDB would take a missing path for a directory to search.
        return None, ["could not read the file: it does not exist or is not a regular file"]
    is_csv = fmt in ("csv", "tsv")
    first_error = ""
    notes: list[str] = []
    # A result a later, more tolerant attempt may improve on; kept in case that one fails.
    usable: tuple[T, list[str]] | None = None
    attempts = _attempts(fmt)
    for index, attempt in enumerate(attempts):
        is_last = index == len(attempts) - 1
        try:
            # A fresh database per attempt so rejects from a failed attempt do not linger.
            with _connect(path, spill=spill) as (con, target):
                result = work(con, attempt.source, target)
                problems = _rejected_lines(con) if is_csv else []
                reason = None if is_last or not is_csv else _mostly_not_utf8(con)
            if reason is None:
                return result, notes + problems
            unimproved = f"the file is mostly not valid UTF-8 ({reason}); re-save it as UTF-8"
            usable = (result, [unimproved, *problems])
            notes.append(f"{attempt.fallback_note} ({reason})")
        except duckdb.Error as exc:
            message = _error_summary(exc)
            first_error = first_error or message
            if is_last or attempt.retry_if is None or not attempt.retry_if(str(exc)):
                break
            notes.append(f"{attempt.fallback_note} ({message})")
    if usable is not None:
        return usable
    # The first error describes the file best; later ones come from guesses that also failed.
    return None, [f"could not read the file: {first_error}"]


def _mostly_not_utf8(con: duckdb.DuckDBPyConnection) -> str | None:
    """Say why the file looks like it is not UTF-8 at all, or None when it mostly is.

    A stray bad byte in a UTF-8 file should only cost its own line, but when most lines the
    reader got to are rejected as invalid UTF-8 the file is in another encoding, and skipping
    them would hide nearly all the data. "Got to" is approximated by the last rejected line.
    """
    try:
        bad, last = con.execute(
            "SELECT count(DISTINCT line) FILTER (WHERE error_type = 'INVALID ENCODING'), max(line)"
            " FROM reject_errors"
        ).fetchall()[0]
    except duckdb.Error:
        return None
    if not bad or bad * 2 <= last:
        return None
    return f"{bad} of the first {last} lines are not valid UTF-8"


@contextmanager
def _connect(path: Path, *, spill: bool = False) -> Iterator[tuple[duckdb.DuckDBPyConnection, str]]:
    """Open a private in-memory DuckDB that can read only ``path``, and close it afterwards.

    The settings are locked once made so that nothing later in the session can widen them.
    With ``spill`` the database gets its own temporary directory (removed afterwards) for
    aggregations that outgrow the memory limit; otherwise spilling is off.
    """
    target = os.path.abspath(path)
    with tempfile.TemporaryDirectory(prefix="zhongtai-duckdb-") if spill else _no_dir() as tmp:
        con = duckdb.connect(
            config={
                "threads": _THREADS,
                "memory_limit": _MEMORY_LIMIT,
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
            }
        )
        try:
            con.execute("SET allowed_paths = ?", [[target]])
            if tmp:
                con.execute("SET allowed_directories = ?", [[tmp]])
                con.execute("SET temp_directory = ?", [tmp])
                con.execute(f"SET max_temp_directory_size = '{_MAX_SPILL}'")
            else:
                con.execute("SET temp_directory = ''")
            # Long scans would otherwise draw a progress bar on the server's stderr.
            con.execute("SET enable_progress_bar = false")
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            yield con, target
        finally:
            con.close()


@contextmanager
def _no_dir() -> Iterator[str]:
    yield ""


def _rejected_lines(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Describe the lines DuckDB's CSV reader skipped, one problem per line, capped.

    DuckDB records one reject per offending cell, so a line with too many fields appears once
    per extra field: group by line and keep the largest field count seen. Repeated scans of
    the same file in one connection record the same lines again, which the grouping absorbs.
    """
    try:
        found = con.execute(
            r"""
            SELECT line, error_type, any_value(error_message),
                   max(TRY_CAST(regexp_extract(error_message,
                       'Expected Number of Columns: (\d+)', 1) AS BIGINT)),
                   max(TRY_CAST(regexp_extract(error_message, 'Found: (\d+)', 1) AS BIGINT))
            FROM reject_errors
            GROUP BY line, error_type
            ORDER BY line, error_type
            LIMIT ?
            """,
            [_MAX_LISTED_PROBLEMS],
        ).fetchall()
        total = int(con.execute("SELECT count(DISTINCT line) FROM reject_errors").fetchall()[0][0])
    except duckdb.Error:
        return []  # nothing was scanned, so there is no rejects table
    problems = [_describe_reject(*entry) for entry in found]
    listed = len({entry[0] for entry in found})
    if total > listed:
        more = "at least " if total >= _REJECTS_LIMIT else ""
        problems.append(f"... and {more}{total - listed} more lines were skipped")
    return problems


def _describe_reject(
    line: int, kind: str, message: str, expected: int | None, found: int | None
) -> str:
    if kind in ("TOO MANY COLUMNS", "MISSING COLUMNS") and expected is not None:
        return f"line {line}: expected {expected} fields, found {found}; the row was skipped"
    if kind == "INVALID ENCODING":
        return f"line {line}: not valid UTF-8; the row was skipped"
    return f"line {line}: {message}; the row was skipped"


def _one_row(con: duckdb.DuckDBPyConnection, sql: str, target: str) -> tuple[Any, ...]:
    """Run a one-row aggregate over the file to completion and return that row.

    Deliberately fetchall() rather than fetchone(): DuckDB writes the CSV rejects tables only
    when a scan finishes, and fetchone() can leave it unfinished.
    """
    return tuple(con.execute(sql, [target]).fetchall()[0])


def _error_summary(exc: BaseException) -> str:
    """The useful part of a DuckDB error, short enough to show to a user.

    CSV errors put the location on the first line and the reason two lines further down
    (after the offending line's text, which we leave out), so both are kept.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    summary = lines[0]
    if summary.startswith("Invalid Input Error: CSV Error") and len(lines) > 1:
        reason = next((line for line in lines[1:] if not line.startswith("Original Line")), "")
        summary = f"{summary}: {reason}" if reason else summary
    return summary[:300]


def _columns_of(cursor: duckdb.DuckDBPyConnection) -> list[Column]:
    return [Column(name=str(d[0]), type=str(d[1])) for d in cursor.description or []]


def _summarize_parquet(path: Path) -> Summary:
    """Schema through DuckDB (for its type names) and rows from the Parquet footer via PyArrow.

    Both read only the footer, so the cost does not grow with the file.
    """

    def describe(con: duckdb.DuckDBPyConnection, source: str, target: str) -> list[Column]:
        cursor = con.execute(f"SELECT * FROM {source} LIMIT 0", [target])  # noqa: S608
        columns = _columns_of(cursor)
        cursor.fetchall()
        return columns

    columns, problems = _read(path, "parquet", describe)
    rows: int | None
    try:
        rows = int(pq.read_metadata(path).num_rows)
    except (pa.ArrowException, OSError, ValueError) as exc:
        rows = None
        problems.append(f"could not count rows from the Parquet footer: {_error_summary(exc)}")
    return Summary(columns=columns or [], rows=rows, problems=problems)


# -- quality report pieces -----------------------------------------------------------------


_ORDERED_TYPES = frozenset({"VARCHAR", "BOOLEAN", "DATE", "TIME", "UUID"})


def _statistics(
    con: duckdb.DuckDBPyConnection, source: str, target: str
) -> tuple[list[tuple[Any, ...]], int, int]:
    """Per-column statistics, the row count and the number of distinct rows, in ONE scan.

    The statistics are SUMMARIZE's, less its quantiles (which the report does not use
    and which cost most of SUMMARIZE's time): min, max, mean, standard deviation for
    numbers, min and max for other ordered types, approximate distinct counts
    (HyperLogLog, as SUMMARIZE's) and null percentages, shaped like SUMMARIZE's rows.
    Distinct rows are counted exactly by a 64-bit hash of each row, in the same scan.
    """
    described = con.execute(f"DESCRIBE SELECT * FROM {source}", [target]).fetchall()  # noqa: S608
    columns = [(str(row[0]), str(row[1])) for row in described]
    selects = ["count(*)"]
    if columns:
        selects.append(f"count(DISTINCT hash({', '.join(_quote(n) for n, _t in columns)}))")
    for name, type_name in columns:
        quoted = _quote(name)
        ordered = type_name in _ORDERED_TYPES or type_name.startswith("TIMESTAMP")
        if _is_numeric(type_name):
            stats = [
                f"min({quoted})::VARCHAR",
                f"max({quoted})::VARCHAR",
                f"avg({quoted})::VARCHAR",
                f"stddev_samp({quoted})::VARCHAR",
            ]
        elif ordered:
            stats = [f"min({quoted})::VARCHAR", f"max({quoted})::VARCHAR", "NULL", "NULL"]
        else:
            stats = ["NULL", "NULL", "NULL", "NULL"]
        distinct = (
            f"approx_count_distinct({quoted})"
            if ordered or _is_numeric(type_name)
            else f"approx_count_distinct(hash({quoted}))"
        )
        selects += [*stats, distinct, f"count({quoted})"]
    values = _one_row(con, f"SELECT {', '.join(selects)} FROM {source}", target)  # noqa: S608
    rows = int(values[0] or 0)
    distinct_rows = int(values[1] or 0) if columns else rows
    summary: list[tuple[Any, ...]] = []
    for i, (name, type_name) in enumerate(columns):
        low, high, avg, std, approx, non_null = values[2 + 6 * i : 8 + 6 * i]
        nulls = 100.0 * (rows - int(non_null or 0)) / rows if rows else None
        # SUMMARIZE's layout: name, type, min, max, approx_unique, avg, std, q25, q50,
        # q75, count, null_percentage.
        summary.append(
            (name, type_name, low, high, approx, avg, std, None, None, None, rows, nulls)
        )
    return summary, rows, distinct_rows


def _column_report(entry: Sequence[Any], rows: int) -> dict[str, Any]:
    """Turn one SUMMARIZE row into the report's column entry.

    SUMMARIZE returns min/max/avg/std as text whatever the column type; they are converted to
    numbers for numeric columns and dropped for the rest.
    """
    name, type_name, low, high, approx_unique, avg, std = entry[:7]
    null_percentage = entry[11]
    numeric = _is_numeric(type_name)
    null_fraction = float(null_percentage) / 100 if null_percentage is not None and rows else None
    return {
        "name": name,
        "type": type_name,
        "null_fraction": null_fraction,
        "distinct": int(approx_unique) if approx_unique is not None else None,
        "min": _number(low, type_name) if numeric else None,
        "max": _number(high, type_name) if numeric else None,
        "mean": _number(avg, "DOUBLE") if numeric else None,
        "std": _number(std, "DOUBLE") if numeric else None,
        "top_values": [],
    }


def _is_numeric(type_name: str) -> bool:
    return type_name in _NUMERIC_TYPES or type_name.startswith("DECIMAL")


def _number(text: str | None, type_name: str) -> int | float | None:
    """Parse one of SUMMARIZE's textual statistics; NaN and infinities become None (not JSON)."""
    if text is None:
        return None
    try:
        if type_name in _INTEGER_TYPES:
            return int(text)
        value = float(Decimal(text)) if type_name.startswith("DECIMAL") else float(text)
    except (ValueError, ArithmeticError):
        return None
    return value if math.isfinite(value) else None


def _column_warnings(column: dict[str, Any], rows: int, same_min_max: bool) -> list[dict[str, str]]:
    """Null-rate and constant warnings for one column.

    ``same_min_max`` says SUMMARIZE's minimum equals its maximum, which (for every type it can
    order) means there is exactly one distinct non-null value; it is exact, unlike ``distinct``.
    """
    name = column["name"]
    null_fraction = column["null_fraction"]
    if not rows or null_fraction is None:
        return []
    if null_fraction >= 1:
        return [_warning(name, "all_null", "every value is null")]
    warnings = []
    if null_fraction >= _HIGH_NULL_SHARE:
        warnings.append(
            _warning(name, "high_null_rate", f"{null_fraction:.0%} of the values are null")
        )
    if same_min_max and rows > 1:
        warnings.append(_warning(name, "constant", "every non-null value is the same"))
    return warnings


def _warning(column: str, kind: str, message: str) -> dict[str, str]:
    return {"column": column, "kind": kind, "message": message}


def _quote(name: str) -> str:
    """Quote a column name (from an untrusted header) as a SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _top_values(
    con: duckdb.DuckDBPyConnection, source: str, target: str, names: list[str], top: int
) -> dict[str, list[dict[str, Any]]]:
    """Exact most frequent values of the given text columns (ties broken by value, so
    reports are reproducible): one GROUP BY per column, which reads only that column of
    a Parquet file and is faster than one UNPIVOT of them all."""
    if not names or top <= 0:
        return {}
    result: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        quoted = _quote(name)
        found = con.execute(
            f"SELECT {quoted} AS val, count(*) AS n FROM {source} "  # noqa: S608
            f"WHERE {quoted} IS NOT NULL GROUP BY 1 ORDER BY n DESC, val LIMIT ?",
            [target, top],
        ).fetchall()
        result[name] = [{"value": value, "count": int(count)} for value, count in found]
    return result


def _mixed_type_warnings(
    con: duckdb.DuckDBPyConnection, source: str, target: str, columns: list[dict[str, Any]]
) -> list[dict[str, str]]:
    """Flag text columns in which a good share, but not all, of the values look numeric.

    DuckDB falls back to VARCHAR (CSV) or JSON (JSON Lines, when values differ in JSON type)
    as soon as a column's sample holds something non-numeric. One scan counts, per such
    column, the non-null values and those matching ``_NUMBER_PATTERN`` (for JSON, the scalar
    value's text, so both 3 and "3" count).
    """
    candidates = [c for c in columns if c["type"] in ("VARCHAR", "JSON") and c["distinct"]]
    if not candidates:
        return []
    pattern = "'" + _NUMBER_PATTERN + "'"
    selects = []
    for column in candidates:
        quoted = _quote(column["name"])
        text = f"json_extract_string({quoted}, '$')" if column["type"] == "JSON" else quoted
        selects.append(f"count({quoted})")
        selects.append(f"count_if(regexp_full_match(trim({text}), {pattern}))")
    counts = _one_row(con, f"SELECT {', '.join(selects)} FROM {source}", target)  # noqa: S608
    warnings = []
    for i, column in enumerate(candidates):
        non_null, numeric = int(counts[2 * i] or 0), int(counts[2 * i + 1] or 0)
        if non_null and _MIXED_MIN_SHARE <= numeric / non_null < 1:
            warnings.append(
                _warning(
                    column["name"],
                    "mixed_types",
                    f"{numeric / non_null:.0%} of the non-null values look like numbers but "
                    f"the others do not, so the column is read as {column['type']}",
                )
            )
    return warnings


# -- JSON-safe values ----------------------------------------------------------------------


def _json_safe(value: object) -> Any:
    """Convert a DuckDB value to something ``json.dumps(allow_nan=False)`` accepts.

    Dates, times, decimals (to keep their precision), UUIDs and intervals become strings; bytes
    become ``\\x``-prefixed hex; NaN and infinities become "NaN", "Infinity", "-Infinity".
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if math.isnan(value):
            return "NaN"
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return str(value)


def _json_value(value: object) -> Any:
    """Decode a JSON column's text so clients see 3 and "x" rather than "3" and "\\"x\\""."""
    if not isinstance(value, str):
        return _json_safe(value)
    try:
        return _json_safe(json.loads(value))
    except (ValueError, RecursionError):
        return value
