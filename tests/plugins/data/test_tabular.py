"""Tests for zhongtai_data.tabular: previews, summaries and quality reports of tabular files."""

from __future__ import annotations

import json
import math
import time
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zhongtai_data.tabular import (
    MAX_PREVIEW_ROWS,
    Column,
    Format,
    preview,
    quality_report,
    summarize_file,
    tabular_format,
)


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def warnings_of(report: dict[str, object], kind: str) -> set[str]:
    warnings = report["warnings"]
    assert isinstance(warnings, list)
    return {w["column"] for w in warnings if w["kind"] == kind}


def column(report: dict[str, object], name: str) -> dict[str, object]:
    columns = report["columns"]
    assert isinstance(columns, list)
    return next(c for c in columns if c["name"] == name)


# -- format detection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "media_type", "expected"),
    [
        ("data.csv", None, "csv"),
        ("DATA.CSV", None, "csv"),
        ("a/b/data.tsv", None, "tsv"),
        ("data.Tab", None, "tsv"),
        ("data.parquet", None, "parquet"),
        ("data.PQ", None, "parquet"),
        ("data.jsonl", None, "jsonl"),
        ("data.NDJSON", None, "jsonl"),
        ("blob", "text/csv; charset=utf-8", "csv"),
        ("blob", "TEXT/TAB-SEPARATED-VALUES", "tsv"),
        ("blob", "application/vnd.apache.parquet", "parquet"),
        ("blob", "application/x-ndjson", "jsonl"),
        # The extension wins over a media type that disagrees.
        ("data.parquet", "text/csv", "parquet"),
        ("data.json", None, None),
        ("data.csv.gz", None, None),
        ("blob", None, None),
        ("blob", "application/octet-stream", None),
        ("notes.txt", "text/plain", None),
    ],
)
def test_tabular_format(path: str, media_type: str | None, expected: str | None) -> None:
    assert tabular_format(path, media_type) == expected


def test_pickle_is_not_tabular() -> None:
    assert tabular_format("model.pkl") is None
    assert tabular_format("MODEL.PKL", "application/octet-stream") is None
    assert tabular_format("model.pickle") is None


# -- preview -------------------------------------------------------------------------------


def test_preview_csv_offset_limit_and_types(tmp_path: Path) -> None:
    lines = ["id,name,price,day"] + [f"{i},item {i},{i}.5,2024-01-{i:02d}" for i in range(1, 11)]
    path = write(tmp_path / "items.csv", "\n".join(lines) + "\n")

    page = preview(path, "csv", offset=3, limit=4)

    assert page.columns == [
        Column("id", "BIGINT"),
        Column("name", "VARCHAR"),
        Column("price", "DOUBLE"),
        Column("day", "DATE"),
    ]
    assert page.rows == [
        [4, "item 4", 4.5, "2024-01-04"],
        [5, "item 5", 5.5, "2024-01-05"],
        [6, "item 6", 6.5, "2024-01-06"],
        [7, "item 7", 7.5, "2024-01-07"],
    ]
    assert (page.offset, page.limit, page.problems) == (3, 4, [])


def test_preview_past_the_end_is_empty(tmp_path: Path) -> None:
    path = write(tmp_path / "small.csv", "a,b\n1,2\n")
    page = preview(path, "csv", offset=10)
    assert page.rows == []
    assert [c.name for c in page.columns] == ["a", "b"]


def test_preview_tsv(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tsv", "city\tpeople\nLyon, FR\t522000\nOslo\t709000\n")
    page = preview(path, "tsv", limit=1)
    assert page.columns == [Column("city", "VARCHAR"), Column("people", "BIGINT")]
    assert page.rows == [["Lyon, FR", 522000]]
    assert page.problems == []


def test_preview_parquet_values_are_json_safe(tmp_path: Path) -> None:
    table = pa.table(
        {
            "n": pa.array([1, 2, 3], pa.int64()),
            "x": pa.array([0.5, float("nan"), None]),
            "money": pa.array([Decimal("1.10"), None, Decimal("-2.00")], pa.decimal128(8, 2)),
            "day": pa.array([None, None, None], pa.date32()),
            "raw": pa.array([b"\x00\xff", None, b"ok"]),
            "tags": pa.array([["a"], [], None]),
        }
    )
    path = tmp_path / "values.parquet"
    pq.write_table(table, path)

    page = preview(path, "parquet", offset=0, limit=2)

    assert [(c.name, c.type) for c in page.columns] == [
        ("n", "BIGINT"),
        ("x", "DOUBLE"),
        ("money", "DECIMAL(8,2)"),
        ("day", "DATE"),
        ("raw", "BLOB"),
        ("tags", "VARCHAR[]"),
    ]
    assert page.rows == [
        [1, 0.5, "1.10", None, "\\x00ff", ["a"]],
        [2, "NaN", None, None, None, []],
    ]
    json.dumps(page.rows, allow_nan=False)  # must not raise

    dated = tmp_path / "dated.parquet"
    pq.write_table(pa.table({"d": pa.array([19000, 19001], pa.date32())}), dated)
    assert preview(dated, "parquet", offset=1).rows == [["2022-01-09"]]


def test_preview_jsonl(tmp_path: Path) -> None:
    path = write(
        tmp_path / "events.jsonl",
        '{"user": "ann", "clicks": 3, "at": "2024-05-01"}\n'
        '{"user": "bob", "clicks": 5, "at": "2024-05-02"}\n'
        '{"user": "cy", "clicks": 8, "at": "2024-05-03"}\n',
    )
    page = preview(path, "jsonl", offset=1, limit=5)
    assert page.columns == [
        Column("user", "VARCHAR"),
        Column("clicks", "BIGINT"),
        Column("at", "DATE"),
    ]
    assert page.rows == [["bob", 5, "2024-05-02"], ["cy", 8, "2024-05-03"]]
    assert page.problems == []


def test_preview_jsonl_mixed_values_are_decoded(tmp_path: Path) -> None:
    path = write(tmp_path / "mixed.jsonl", '{"v": 1}\n{"v": "two"}\n{"v": [3]}\n')
    page = preview(path, "jsonl")
    assert page.columns == [Column("v", "JSON")]
    assert page.rows == [[1], ["two"], [[3]]]


def test_preview_limit_is_capped(tmp_path: Path) -> None:
    path = write(tmp_path / "many.csv", "n\n" + "".join(f"{i}\n" for i in range(1500)))
    page = preview(path, "csv", limit=5000)
    assert page.limit == MAX_PREVIEW_ROWS
    assert len(page.rows) == MAX_PREVIEW_ROWS
    assert preview(path, "csv", offset=-5, limit=-1).rows == []


def test_preview_ragged_csv_reports_bad_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ragged.csv",
        "a,b,c\n1,x,2.5\n2,y,3.5\n3,z\n4,w,1,2,3\n5,v,6\n",
    )

    page = preview(path, "csv")

    assert page.columns == [Column("a", "BIGINT"), Column("b", "VARCHAR"), Column("c", "DOUBLE")]
    assert page.rows == [[1, "x", 2.5], [2, "y", 3.5], [5, "v", 6.0]]
    assert any(p.startswith("line 4: expected 3 fields, found 2") for p in page.problems)
    assert any(p.startswith("line 5: expected 3 fields, found 5") for p in page.problems)
    assert len(page.problems) == 2


def test_preview_invalid_utf8_reports_problem(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.csv", b"id,word\n1,ok\n2,caf\xe9\n3,fine\n4,good\n5,also\n")

    page = preview(path, "csv")

    assert page.rows == [[1, "ok"], [3, "fine"], [4, "good"], [5, "also"]]
    assert page.problems == ["line 3: not valid UTF-8; the row was skipped"]


def test_latin1_file_is_read_as_latin1(tmp_path: Path) -> None:
    path = write(tmp_path / "latin1.csv", b"name;city\nJos\xe9;M\xe1laga\nRen\xe9;N\xeemes\n")

    page = preview(path, "csv")

    assert page.rows == [["José", "Málaga"], ["René", "Nîmes"]]
    assert len(page.problems) == 1
    assert "not valid UTF-8" in page.problems[0]
    assert "Latin-1" in page.problems[0]


def test_undecodable_file_still_returns_problems(tmp_path: Path) -> None:
    # 0x92 (a Windows-1252 quote) is rejected by DuckDB's Latin-1 decoder too.
    path = write(tmp_path / "cp1252.csv", b"name;note\nJos\xe9;\x92hi\x92\nRen\xe9;x\n")

    page = preview(path, "csv")
    summary = summarize_file(path, "csv")
    report = quality_report(path, "csv")

    assert page.rows == []
    assert "mostly not valid UTF-8" in page.problems[0]
    assert "line 2: not valid UTF-8; the row was skipped" in page.problems
    assert summary.rows == 0
    assert summary.problems == page.problems
    assert report["rows"] == 0
    assert report["problems"] == page.problems


def test_invalid_utf8_jsonl_reports_problem(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.jsonl", b'{"a": "caf\xe9"}\n{"a": "ok"}\n')

    page = preview(path, "jsonl")

    assert page.rows == [[None], ["ok"]]
    assert len(page.problems) == 1
    assert "UTF-8" in page.problems[0]


def test_malformed_jsonl_reports_problem(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.jsonl", '{"a": 1}\n{"a": 2\n{"a": 3}\n')
    page = preview(path, "jsonl")
    assert page.rows[0] == [1]
    assert page.rows[-1] == [3]
    assert "Malformed JSON" in page.problems[0]
    assert summarize_file(path, "jsonl").problems == page.problems


@pytest.mark.parametrize("name", ["it's here/o'brien.csv", 'we"ird [1] *?.csv'])
def test_odd_characters_in_path(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, "a,b\n1,x\n2,y\n2,y\n")

    assert preview(path, "csv").rows == [[1, "x"], [2, "y"], [2, "y"]]
    assert summarize_file(path, "csv").rows == 3
    report = quality_report(path, "csv")
    assert report["rows"] == 3
    assert report["duplicate_rows"] == 1
    assert report["problems"] == []


def test_broken_and_missing_files_never_raise(tmp_path: Path) -> None:
    cases: list[tuple[Path, Format, bool]] = [
        (write(tmp_path / "fake.parquet", b"PAR1 definitely not parquet"), "parquet", False),
        (write(tmp_path / "noise.csv", bytes(range(256)) * 40), "csv", False),
        (tmp_path / "missing.csv", "csv", False),
        # The tolerant JSON reader turns what it cannot parse into empty rows, so they count.
        (write(tmp_path / "noise.jsonl", b"\x00\x01 not json at all {"), "jsonl", True),
    ]
    for path, fmt, countable in cases:
        page = preview(path, fmt)
        summary = summarize_file(path, fmt)
        report = quality_report(path, fmt)
        assert page.problems, path
        assert summary.problems, path
        assert report["problems"], path
        assert (summary.rows is not None) == countable, path
        assert (report["rows"] != 0) == countable, path
        json.dumps(report, allow_nan=False)


# -- summarize_file ------------------------------------------------------------------------


def test_summarize_csv(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", "a,b\n" + "".join(f"{i},v{i}\n" for i in range(2500)))
    summary = summarize_file(path, "csv")
    assert summary.columns == [Column("a", "BIGINT"), Column("b", "VARCHAR")]
    assert summary.rows == 2500
    assert summary.problems == []


def test_summarize_csv_does_not_count_rejected_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", b"a,b\n1,x\n3\n4,y\n6,\xff\n")
    summary = summarize_file(path, "csv")
    assert summary.rows == 2
    assert summary.problems == [
        "line 3: expected 2 fields, found 1; the row was skipped",
        "line 5: not valid UTF-8; the row was skipped",
    ]


def test_summarize_jsonl(tmp_path: Path) -> None:
    path = write(tmp_path / "s.jsonl", "".join(f'{{"i": {i}}}\n' for i in range(42)))
    summary = summarize_file(path, "jsonl")
    assert summary == summarize_file(path, "jsonl")
    assert summary.columns == [Column("i", "BIGINT")]
    assert summary.rows == 42


def test_summarize_parquet_reads_only_the_footer(tmp_path: Path) -> None:
    path = tmp_path / "big.parquet"
    table = pa.table({"n": pa.array(range(50_000), pa.int64()), "s": ["x" * 20] * 50_000})
    pq.write_table(table, path, row_group_size=10_000, compression="none")
    # Wreck every data page but keep the footer (its length sits in the last 8 bytes): the
    # schema and row count must still come back, which proves no data was read.
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    data[4 : len(data) - footer] = bytes(len(data) - footer - 4)
    path.write_bytes(bytes(data))

    summary = summarize_file(path, "parquet")

    assert summary.columns == [Column("n", "BIGINT"), Column("s", "VARCHAR")]
    assert summary.rows == 50_000
    assert summary.problems == []


# -- quality_report ------------------------------------------------------------------------


def test_quality_report_parquet(tmp_path: Path) -> None:
    table = pa.table(
        {
            "n": pa.array([1, 2, 3, 3, 4, 5], pa.int64()),
            "cat": ["a", "b", "a", "a", "c", "a"],
            "score": pa.array([10.0, 20.0, 30.0, 30.0, None, None]),
            "const": ["k"] * 6,
            "sparse": pa.array([None, None, None, None, 7, None], pa.int32()),
            "empty": pa.array([None] * 6, pa.string()),
        }
    )
    path = tmp_path / "q.parquet"
    pq.write_table(table, path)

    report = quality_report(path, "parquet", top=2)

    json.dumps(report, allow_nan=False)
    assert report["rows"] == 6
    assert report["duplicate_rows"] == 1  # the second (3, "a", 30.0, "k", None, None)
    assert report["problems"] == []
    assert report["distinct_is_approximate"] is True

    n = column(report, "n")
    assert n["type"] == "BIGINT"
    assert (n["null_fraction"], n["distinct"], n["min"], n["max"]) == (0.0, 5, 1, 5)
    assert n["mean"] == pytest.approx(3.0)
    assert n["std"] == pytest.approx(math.sqrt(2))
    assert n["top_values"] == []

    cat = column(report, "cat")
    assert cat["distinct"] == 3
    assert cat["top_values"] == [{"value": "a", "count": 4}, {"value": "b", "count": 1}]
    assert (cat["min"], cat["max"], cat["mean"], cat["std"]) == (None, None, None, None)

    score = column(report, "score")
    assert score["null_fraction"] == pytest.approx(2 / 6, abs=1e-3)
    assert (score["min"], score["max"], score["mean"]) == (10.0, 30.0, 22.5)

    assert column(report, "sparse")["null_fraction"] == pytest.approx(5 / 6, abs=1e-3)
    assert column(report, "empty")["null_fraction"] == 1.0
    assert column(report, "empty")["distinct"] == 0

    assert warnings_of(report, "constant") == {"const", "sparse"}
    assert warnings_of(report, "high_null_rate") == {"sparse"}
    assert warnings_of(report, "all_null") == {"empty"}
    assert warnings_of(report, "mixed_types") == set()


def test_quality_report_csv_mixed_types(tmp_path: Path) -> None:
    rows = [
        ("1", "10", "alpha", "x"),
        ("2", "12.5", "beta", "y"),
        ("3", "n/a", "gamma", "z"),
        ("4", "-3e2", "delta", "w"),
        ("5", "unknown", "nan", "v"),
        ("6", "", "inf", "7"),
    ]
    path = write(
        tmp_path / "m.csv", "id,amount,name,code\n" + "".join(",".join(r) + "\n" for r in rows)
    )

    report = quality_report(path, "csv")

    assert report["rows"] == 6
    assert column(report, "amount")["type"] == "VARCHAR"
    # amount: 3 of 5 non-null values are numbers; code: 1 of 6 (below 20%); name: "nan" and
    # "inf" are words, not numbers.
    assert warnings_of(report, "mixed_types") == {"amount"}
    message = next(w["message"] for w in report["warnings"] if w["kind"] == "mixed_types")
    assert "60%" in message
    assert column(report, "amount")["null_fraction"] == pytest.approx(1 / 6, abs=1e-3)
    assert report["problems"] == []


def test_quality_report_jsonl_mixed_types(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.jsonl",
        '{"v": 1, "w": "a"}\n{"v": 2, "w": "b"}\n{"v": "oops", "w": "c"}\n{"v": 4, "w": "d"}\n',
    )
    report = quality_report(path, "jsonl")
    assert column(report, "v")["type"] == "JSON"
    assert warnings_of(report, "mixed_types") == {"v"}


def test_quality_report_ragged_csv(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "a,b\n1,x\n1,x\n2\n3,y,z\n4,x\n")

    report = quality_report(path, "csv")

    assert report["rows"] == 3
    assert report["duplicate_rows"] == 1
    assert report["problems"] == [
        "line 4: expected 2 fields, found 1; the row was skipped",
        "line 5: expected 2 fields, found 3; the row was skipped",
    ]
    assert column(report, "b")["top_values"] == [{"value": "x", "count": 3}]
    assert warnings_of(report, "constant") == {"b"}


# -- speed: reads only the head ------------------------------------------------------------


def test_preview_of_a_large_csv_reads_only_the_head(tmp_path: Path) -> None:
    # Guards "reads only the head": the first page of a big CSV must not scan the whole file
    # (a 1 GiB file's first page takes well under 0.5 s; ~50 MB here keeps the test quick).
    block = "".join(
        f'{i},name_{i % 97},{i * 0.5},2024-01-{i % 28 + 1:02d},"note, {i}"\n' for i in range(10_000)
    ).encode()
    path = tmp_path / "big.csv"
    with path.open("wb") as out:
        out.write(b"id,name,value,day,note\n")
        for _ in range(50 * 2**20 // len(block) + 1):
            out.write(block)
    assert path.stat().st_size >= 50 * 2**20

    started = time.perf_counter()
    page = preview(path, "csv", offset=100, limit=50)
    elapsed = time.perf_counter() - started

    assert page.problems == []
    assert len(page.rows) == 50
    assert page.rows[0] == [100, "name_3", 50.0, "2024-01-17", "note, 100"]
    assert elapsed < 0.5, f"preview took {elapsed:.3f} s"
