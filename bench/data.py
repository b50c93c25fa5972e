"""The data plugin's speed targets: big uploads, the preview of a big CSV, quality reports.

One ``zhongtai serve`` (``ZHONGTAI_PLUGINS=data``, SQLite, the ``local`` storage driver,
embedded jobs) runs over a fresh data directory in a scratch directory, on the same disk
as the files generated here (its ``TMPDIR`` points there too). It is seeded in-process
with one developer in one project and an API key. The client speaks HTTP/1.1 over one
keep-alive raw socket and sends file bodies with ``sendfile`` (zero-copy), so it costs
the server's two-core neighbour as little as possible. Every figure is set against a
baseline measured in the same run:

1. **Upload** (``--size``, 2 GiB; ``--quick`` 256 MiB). A file of ``os.urandom`` (16 MiB,
   repeated with a counter in each block, so nothing dedupes; its SHA-256 is taken while
   it is written) is flushed to disk, then:

   * baseline: ``cp`` of it to another file in the same scratch directory (the copy is
     then removed); ``cp`` + ``sync`` of the copy is also shown, since the store fsyncs
     what it writes;
   * the **resumable upload API**: ``POST /api/v1/data/uploads``, every part ``PUT`` in
     order on one connection, ``POST …/complete``; time from the first request to the
     completed answer. Target: its throughput ≥ 0.5 x ``cp``'s;
   * the **single-request route** ``POST …/versions/{draft}/files`` (multipart), for
     the same file with 8 other bytes (so it is stored afresh, not deduplicated).

   The server's RSS (``VmRSS`` of it and any children, from /proc) is sampled every
   50 ms during each upload; the figure is the largest growth over the RSS just before
   the first request (after a small warm-up upload of each kind). Target: ≤ 100 MB
   (10^6 bytes).
2. **Preview** of a CSV of ``--csv-size`` (1 GiB; ``--quick`` 128 MiB, a block of varied
   rows written again and again): uploaded (resumable), committed, the ``data.quality``
   job the commit queues waited for (its duration is shown), then ``GET
   …/versions/1/preview/big.csv`` (the default page, 50 rows) timed five times after one
   warm-up; median. Baseline: the first 50 rows read with Python's ``csv`` module
   straight from the local file, same count. Target: ≤ 0.5 s.
3. **Quality report** of a Parquet file of ``--rows`` rows (10 million; ``--quick`` 1
   million) written with PyArrow in 1-million-row groups: ``id`` (int64), ``amount``
   (float64, 10 % nulls), ``category`` (12 values), ``key`` (about ``rows / 2`` distinct
   strings). Timed in this process, alternately, ``--repeat`` (3) times each, median:

   * baseline: ``SUMMARIZE SELECT * FROM read_parquet(?)`` on a DuckDB connection with
     the thread and memory settings ``zhongtai_data.tabular`` uses (connect and close
     included, as the report does both);
   * ``zhongtai_data.tabular.quality_report(path, "parquet")``, the function the
     ``data.quality`` job runs. Target: ≤ 1.5 x SUMMARIZE;
   * and, end to end, the ``data.quality`` job of a committed version holding the file
     (``GET /api/v1/jobs/{id}`` polled until it finished; its ``finished_at -
     started_at``, which also covers the schema and row count from the footer and the
     database writes): reported, without a target of its own.

Everything (scratch directory, server) is removed or stopped on the way out, also on
Ctrl-C or SIGTERM. Prints the figures, then PASS/FAIL lines; writes
bench/results/data.json; exits 0 whatever the verdicts.

Run: ``.venv/bin/python bench/data.py [--quick] [--size 2G] [--csv-size 1G]
[--rows 10000000] [--repeat 3] [--targets upload,preview,quality]``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    HOST,
    RESULTS,
    Server,
    machine,
    median,
    process_cpu_seconds,
    read_response,
    scratch_dir,
    verdict,
    zhongtai_server,
)

TARGET_UPLOAD_RATIO = 0.5  # upload throughput ÷ cp's
TARGET_UPLOAD_RSS_MB = 100.0
TARGET_PREVIEW_S = 0.5
TARGET_QUALITY_RATIO = 1.5  # quality_report ÷ SUMMARIZE
MiB = 2**20
GiB = 2**30
BLOCK = 16 * MiB
RSS_INTERVAL = 0.05
PREVIEW_ROWS = 50
PREVIEW_RUNS = 5
CP_RUNS = 3
FINISHED = ("succeeded", "failed", "cancelled")
TARGETS = ("upload", "preview", "quality")


def size_arg(text: str) -> int:
    """``2G``, ``256M``, ``512K`` or a plain number of bytes."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def human(size: int) -> str:
    if size >= GiB and size % GiB == 0:
        return f"{size // GiB} GiB"
    return f"{size / MiB:.0f} MiB"


# --------------------------------------------------------------------------- seeding


def seed(home: Path, url: str, secret: str) -> tuple[str, str]:
    """Schema (core + data), a developer in one project, an API key: (project id, key)."""
    from zhongtai.identity.apikeys import create_api_key
    from zhongtai.identity.models import Organization, Project, ProjectMember, User
    from zhongtai.identity.roles import Role
    from zhongtai.platform import bootstrap
    from zhongtai.settings import load_settings

    settings = load_settings(home=home, database_url=url, secret_key=secret, plugins=["data"])
    platform = bootstrap(settings, schema="upgrade")
    try:
        with platform.db.transaction() as session:
            user = User(email="bench@example.com")
            org = Organization(slug="bench", name="Bench")
            session.add_all([user, org])
            session.flush()
            project = Project(org_id=org.id, slug="data", name="Data")
            session.add(project)
            session.flush()
            session.add(
                ProjectMember(project_id=project.id, user_id=user.id, role=int(Role.developer))
            )
            project_id = project.id
            _row, key = create_api_key(
                session, user_id=user.id, name="bench", secret=platform.secret_key
            )
    finally:
        platform.close()
    return project_id, key


# --------------------------------------------------------------------------- HTTP client


class Client:
    """One keep-alive HTTP/1.1 connection (raw socket); file bodies go by ``sendfile``."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.auth = f"Authorization: Bearer {key}\r\n"
        self.sock: socket.socket | None = None
        self.buf = bytearray()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            self.buf.clear()

    def _connect(self) -> socket.socket:
        if self.sock is None:
            self.sock = socket.create_connection((HOST, self.port), timeout=600)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.sock

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content_type: str = "application/json",
        head: bytes = b"",
        file: Any = None,
        offset: int = 0,
        count: int = 0,
        tail: bytes = b"",
    ) -> tuple[int, Any]:
        """Send ``head``, ``count`` bytes of ``file`` from ``offset``, ``tail`` (or a JSON
        body); return (status, parsed JSON or raw bytes). A connection the server closed
        while idle is reopened once."""
        if json_body is not None:
            head = json.dumps(json_body).encode()
        length = len(head) + (count if file is not None else 0) + len(tail)
        start = (
            f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n{self.auth}"
            f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
        ).encode()
        for attempt in (1, 2):
            try:
                sock = self._connect()
                sock.sendall(start + head)
                if file is not None and count:
                    sent = sock.sendfile(file, offset, count)
                    if sent != count:
                        raise ConnectionError(f"sent {sent} of {count} bytes")
                if tail:
                    sock.sendall(tail)
                status, body = read_response(sock, self.buf)
                break
            except (ConnectionError, BrokenPipeError):
                self.close()
                if attempt == 2:
                    raise
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            return status, body

    def expect(self, status: int, method: str, path: str, **kwargs: Any) -> Any:
        got, body = self.request(method, path, **kwargs)
        if got != status:
            raise RuntimeError(f"{method} {path}: {got} (expected {status}): {body!r:.500}")
        return body


# --------------------------------------------------------------------------- server memory


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.scandir(f"/proc/{current}/task"):
                with open(f"{task.path}/children") as fh:
                    todo.extend(int(child) for child in fh.read().split())
        except OSError:
            continue
    return found


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` and its descendants, in bytes (0 for what is gone)."""
    total = 0
    for member in _tree(pid):
        try:
            with open(f"/proc/{member}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


class RssSampler:
    """Samples the server's RSS every ``RSS_INTERVAL`` seconds in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = rss_bytes(pid)
        self.peak = self.before
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self.samples += 1
            self._stop.wait(RSS_INTERVAL)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))

    @property
    def growth(self) -> int:
        return self.peak - self.before


# --------------------------------------------------------------------------- files


def make_random_file(path: Path, size: int) -> str:
    """``size`` bytes: one random 16 MiB block, its first 8 bytes a block counter;
    flushed to disk. Returns the SHA-256."""
    block = bytearray(os.urandom(BLOCK))
    view = memoryview(block)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        written, index = 0, 0
        while written < size:
            block[:8] = index.to_bytes(8, "little")
            piece = view[: min(BLOCK, size - written)]
            out.write(piece)
            digest.update(piece)
            written += len(piece)
            index += 1
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def make_csv(path: Path, size: int) -> str:
    """A CSV of at least ``size`` bytes: a header, then one block of 10,000 varied rows
    written again and again. Returns the SHA-256."""
    cities = ["Beijing", "Shanghai", "Shenzhen", "Hangzhou", "Chengdu", "Wuhan", "Xi'an"]
    lines = []
    for i in range(10_000):
        lines.append(
            f"{i},user_{i * 7919 % 100_003},{cities[i % len(cities)]},"
            f"{(i * 37 % 100_000) / 100:.2f},2024-{1 + i % 12:02d}-{1 + i % 28:02d},"
            f"{'true' if i % 3 else 'false'}\n"
        )
    block = "".join(lines).encode()
    header = b"id,name,city,amount,day,flag\n"
    digest = hashlib.sha256(header)
    with path.open("wb") as out:
        out.write(header)
        written = len(header)
        while written < size:
            out.write(block)
            digest.update(block)
            written += len(block)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def make_parquet(path: Path, rows: int) -> None:
    """``rows`` rows in 1-million-row groups: id, amount (10 % null), category (12
    values), key (about rows / 2 distinct strings)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("amount", pa.float64()),
            ("category", pa.string()),
            ("key", pa.string()),
        ]
    )
    categories = pa.array([f"category-{i:02d}" for i in range(12)])
    distinct_keys = max(1, rows // 2)
    group = 1_000_000
    with pq.ParquetWriter(path, schema) as writer:
        for first in range(0, rows, group):
            ids = pa.array(range(first, min(rows, first + group)), type=pa.int64())
            mixed = pc.bit_wise_and(pc.multiply(ids, 2_654_435_761), 0xFFFFFFFF)
            amount = pc.divide(pc.cast(mixed, pa.float64()), 4_294_967.296)
            amount = pc.if_else(pc.equal(pc.remainder(mixed, 10), 0), None, amount)
            category = categories.take(pc.remainder(mixed, 12))
            key = pc.binary_join_element_wise(
                "key-", pc.cast(pc.remainder(mixed, distinct_keys), pa.string()), ""
            )
            writer.write_table(
                pa.table([ids, amount, category, key], schema=schema), row_group_size=group
            )


# --------------------------------------------------------------------------- API steps


def new_draft(client: Client, project: str, name: str) -> tuple[str, str]:
    """A new dataset and an empty draft in it: (dataset id, draft id)."""
    dataset = client.expect(
        201, "POST", "/api/v1/data/datasets", json_body={"project": project, "name": name}
    )
    draft = client.expect(
        201, "POST", f"/api/v1/data/datasets/{dataset['id']}/versions", json_body={}
    )
    return dataset["id"], draft["id"]


def upload_resumable(
    client: Client, dataset: str, draft: str, name: str, path: Path, sha256: str
) -> tuple[float, float, int]:
    """The resumable upload API, parts in order: (seconds in all, seconds until the last
    part was stored, part size)."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        started = time.perf_counter()
        upload = client.expect(
            201,
            "POST",
            "/api/v1/data/uploads",
            json_body={
                "dataset": dataset,
                "version": draft,
                "path": name,
                "size": size,
                "sha256": sha256,
            },
        )
        part_size = int(upload["part_size"])
        for number in range(1, int(upload["parts"]) + 1):
            offset = (number - 1) * part_size
            client.expect(
                200,
                "PUT",
                f"/api/v1/data/uploads/{upload['id']}/parts/{number}",
                content_type="application/octet-stream",
                file=fh,
                offset=offset,
                count=min(part_size, size - offset),
            )
        parts_done = time.perf_counter() - started
        done = client.expect(201, "POST", f"/api/v1/data/uploads/{upload['id']}/complete")
        seconds = time.perf_counter() - started
    if done["sha256"] != sha256 or done["size"] != size:
        raise RuntimeError(f"the server stored {done!r}")
    return seconds, parts_done, part_size


def upload_multipart(client: Client, dataset: str, draft: str, name: str, path: Path) -> float:
    """``POST …/files`` with the whole file in one multipart body; seconds."""
    boundary = secrets.token_hex(16)
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="path"\r\n\r\n{name}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"'
        "\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = path.stat().st_size
    with path.open("rb") as fh:
        started = time.perf_counter()
        done = client.expect(
            201,
            "POST",
            f"/api/v1/data/datasets/{dataset}/versions/{draft}/files",
            content_type=f"multipart/form-data; boundary={boundary}",
            head=head,
            file=fh,
            count=size,
            tail=tail,
        )
        seconds = time.perf_counter() - started
    if done["size"] != size:
        raise RuntimeError(f"the server stored {done!r}")
    return seconds


def commit(client: Client, dataset: str, draft: str) -> dict[str, Any]:
    return client.expect(
        200,
        "POST",
        f"/api/v1/data/datasets/{dataset}/versions/{draft}/commit",
        json_body={"message": "bench"},
    )


def wait_job(client: Client, job_id: str, timeout: float) -> dict[str, Any]:
    """Poll ``GET /api/v1/jobs/{id}`` every 0.2 s until the job finished."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.expect(200, "GET", f"/api/v1/jobs/{job_id}")
        if job["status"] in FINISHED:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:.0f} s")
        time.sleep(0.2)


def job_seconds(job: dict[str, Any]) -> float:
    started = datetime.fromisoformat(job["started_at"])
    return (datetime.fromisoformat(job["finished_at"]) - started).total_seconds()


# --------------------------------------------------------------------------- targets


def bench_upload(
    client: Client, server: Server, project: str, work: Path, size: int
) -> dict[str, Any]:
    assert server.proc is not None
    pid = server.proc.pid
    source = work / "upload.bin"
    print(f"upload: writing {human(size)} of random bytes …", flush=True)
    sha256 = make_random_file(source, size)

    copy = work / "upload.copy"
    cp_runs, cp_sync_runs = [], []
    for _ in range(CP_RUNS):
        started = time.perf_counter()
        subprocess.run(["cp", str(source), str(copy)], check=True)
        cp_runs.append(time.perf_counter() - started)
        subprocess.run(["sync", str(copy)], check=True)
        cp_sync_runs.append(time.perf_counter() - started)
        copy.unlink()
    cp_s, cp_sync_s = median(cp_runs), median(cp_sync_runs)

    # Warm-up: one small upload of each kind, so first-use imports are not counted.
    warm = work / "warm.bin"
    warm_sha = make_random_file(warm, 3 * MiB)
    dataset, draft = new_draft(client, project, "warm-up")
    upload_resumable(client, dataset, draft, "warm.bin", warm, warm_sha)
    upload_multipart(client, dataset, draft, "warm-2.bin", warm)
    warm.unlink()

    figures: dict[str, Any] = {
        "bytes": size,
        "cp_s": cp_s,
        "cp_s_all": cp_runs,
        "cp_sync_s": cp_sync_s,
        "cp_mib_s": size / MiB / cp_s,
        "cp_sync_mib_s": size / MiB / cp_sync_s,
    }
    dataset, draft = new_draft(client, project, "upload")
    print("upload: resumable API …", flush=True)
    cpu = process_cpu_seconds(pid)
    with RssSampler(pid) as rss:
        seconds, parts_s, part_size = upload_resumable(
            client, dataset, draft, "big.bin", source, sha256
        )
    figures["resumable"] = {
        "seconds": seconds,
        "mib_s": size / MiB / seconds,
        "ratio_cp": cp_s / seconds,
        "ratio_cp_sync": cp_sync_s / seconds,
        "parts_s": parts_s,
        "complete_s": seconds - parts_s,
        "part_size": part_size,
        "parts": -(-size // part_size),
        "rss_before_mb": rss.before / 1e6,
        "rss_growth_mb": rss.growth / 1e6,
        "rss_samples": rss.samples,
        "server_cpu_s": process_cpu_seconds(pid) - cpu,
    }

    # Other bytes, so the single-request route stores its own blob.
    with source.open("r+b") as fh:
        os.pwrite(fh.fileno(), os.urandom(8), 8)
        os.fsync(fh.fileno())
    print("upload: single-request multipart route …", flush=True)
    cpu = process_cpu_seconds(pid)
    with RssSampler(pid) as rss:
        seconds = upload_multipart(client, dataset, draft, "big-2.bin", source)
    figures["multipart"] = {
        "seconds": seconds,
        "mib_s": size / MiB / seconds,
        "ratio_cp": cp_s / seconds,
        "ratio_cp_sync": cp_sync_s / seconds,
        "rss_before_mb": rss.before / 1e6,
        "rss_growth_mb": rss.growth / 1e6,
        "rss_samples": rss.samples,
        "server_cpu_s": process_cpu_seconds(pid) - cpu,
    }
    source.unlink()
    return figures


def read_head(path: Path, rows: int) -> list[list[str]]:
    """The baseline: the first ``rows`` rows after the header, with the csv module."""
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        return [row for _, row in zip(range(rows), reader, strict=False)]


def bench_preview(client: Client, project: str, work: Path, size: int) -> dict[str, Any]:
    source = work / "big.csv"
    print(f"preview: writing a {human(size)} CSV …", flush=True)
    sha256 = make_csv(source, size)
    dataset, draft = new_draft(client, project, "preview")
    upload_resumable(client, dataset, draft, "big.csv", source, sha256)
    version = commit(client, dataset, draft)
    figures: dict[str, Any] = {"bytes": source.stat().st_size}
    if version.get("quality_job"):
        print("preview: waiting for the commit's data.quality job …", flush=True)
        job = wait_job(client, version["quality_job"], timeout=1800)
        figures["quality_job_status"] = job["status"]
        figures["quality_job_s"] = job_seconds(job) if job["finished_at"] else None

    url = f"/api/v1/data/datasets/{dataset}/versions/1/preview/big.csv"
    times = []
    for run in range(PREVIEW_RUNS + 1):
        started = time.perf_counter()
        body = client.expect(200, "GET", url)
        if run:
            times.append(time.perf_counter() - started)
    if body.get("kind") != "table" or len(body["rows"]) != PREVIEW_ROWS:
        raise RuntimeError(f"unexpected preview: {json.dumps(body)[:500]}")
    base = []
    for run in range(PREVIEW_RUNS + 1):
        started = time.perf_counter()
        rows = read_head(source, PREVIEW_ROWS)
        if run:
            base.append(time.perf_counter() - started)
    assert len(rows) == PREVIEW_ROWS
    source.unlink()
    figures.update(
        {
            "preview_s_median": median(times),
            "preview_s_all": times,
            "csv_module_s_median": median(base),
            "ratio": median(times) / median(base),
            "problems": body.get("problems", []),
        }
    )
    return figures


def summarize_directly(path: Path) -> int:
    """The baseline: DuckDB's SUMMARIZE with the settings zhongtai_data.tabular uses."""
    import duckdb

    from zhongtai_data import tabular

    config = {"threads": tabular._THREADS, "memory_limit": tabular._MEMORY_LIMIT}
    con = duckdb.connect(config=config)
    try:
        con.execute("SET enable_progress_bar = false")
        found = con.execute("SUMMARIZE SELECT * FROM read_parquet(?)", [str(path)]).fetchall()
    finally:
        con.close()
    return len(found)


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def bench_quality(
    client: Client, project: str, work: Path, rows: int, repeat: int
) -> dict[str, Any]:
    from zhongtai_data.tabular import quality_report

    source = work / "big.parquet"
    print(f"quality: writing {rows:,} rows of Parquet …", flush=True)
    make_parquet(source, rows)
    summarize, report = [], []
    print(f"quality: SUMMARIZE and quality_report, {repeat} times each …", flush=True)
    for _ in range(repeat):
        seconds, columns = timed(summarize_directly, source)
        summarize.append(seconds)
        seconds, found = timed(quality_report, source, "parquet")
        report.append(seconds)
    if found["rows"] != rows or columns != 4 or found["problems"]:
        raise RuntimeError(f"unexpected report: {json.dumps(found)[:500]}")
    figures: dict[str, Any] = {
        "rows": rows,
        "bytes": source.stat().st_size,
        "summarize_s_median": median(summarize),
        "summarize_s_all": summarize,
        "quality_report_s_median": median(report),
        "quality_report_s_all": report,
        "ratio": median(report) / median(summarize),
    }
    print("quality: the data.quality job through the API …", flush=True)
    dataset, draft = new_draft(client, project, "quality")
    sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
    upload_resumable(client, dataset, draft, "big.parquet", source, sha256)
    started = time.perf_counter()
    version = commit(client, dataset, draft)
    job = wait_job(client, version["quality_job"], timeout=3600)
    figures["job_status"] = job["status"]
    figures["job_commit_to_seen_s"] = time.perf_counter() - started
    figures["job_s"] = job_seconds(job)
    figures["job_ratio"] = figures["job_s"] / median(summarize)
    stored = client.expect(
        200, "GET", f"/api/v1/data/datasets/{dataset}/versions/1/quality/big.parquet"
    )
    figures["job_report_status"] = stored["status"]
    source.unlink()
    return figures


# --------------------------------------------------------------------------- main


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so the server is stopped and the files removed."""
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=size_arg, default=2 * GiB, help="upload size (2G)")
    parser.add_argument("--csv-size", type=size_arg, default=1 * GiB, help="CSV size (1G)")
    parser.add_argument("--rows", type=int, default=10_000_000, help="Parquet rows (10M)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each quality timing")
    parser.add_argument(
        "--targets",
        type=lambda text: [t for t in text.split(",") if t],
        default=list(TARGETS),
        help="comma-separated: upload,preview,quality (default: all)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="--size 256M --csv-size 128M --rows 1000000"
    )
    args = parser.parse_args()
    if args.quick:
        args.size, args.csv_size, args.rows = 256 * MiB, 128 * MiB, 1_000_000
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    for name in [k for k in os.environ if k.startswith("ZHONGTAI_")]:
        del os.environ[name]  # the seeding reads settings; the shell must not leak in
    signal.signal(signal.SIGTERM, _interrupt)

    secret = secrets.token_urlsafe(48)
    summary: dict[str, Any] = {"machine": machine(), "database": "sqlite", "storage": "local"}
    started = time.monotonic()
    with scratch_dir("zt-bench-data-") as work:
        home, tmp = work / "home", work / "tmp"
        tmp.mkdir()
        url = f"sqlite:///{home / 'zhongtai.db'}"
        print(f"seeding {home} …", flush=True)
        project, key = seed(home, url, secret)
        server = zhongtai_server(
            home,
            work / "server.log",
            bytecode_cache=True,
            access_log=False,
            env={
                "ZHONGTAI_DATABASE_URL": url,
                "ZHONGTAI_SECRET_KEY": secret,
                "ZHONGTAI_PLUGINS": "data",
                "TMPDIR": str(tmp),
            },
        )
        client = None
        try:
            server.start()
            server.wait_ready()
            client = Client(server.port, key)
            if "upload" in args.targets:
                summary["upload"] = bench_upload(client, server, project, work, args.size)
                client.close()
            if "preview" in args.targets:
                summary["preview"] = bench_preview(client, project, work, args.csv_size)
                client.close()
            if "quality" in args.targets:
                summary["quality"] = bench_quality(client, project, work, args.rows, args.repeat)
        except BaseException:
            print(f"server log tail:\n{server.tail()}", file=sys.stderr)
            raise
        finally:
            if client is not None:
                client.close()
            server.stop()
    summary["seconds"] = time.monotonic() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "data.json").write_text(json.dumps(summary, indent=2, default=str))
    report(summary)


def report(summary: dict[str, Any]) -> None:
    """The figures, then the verdict lines."""
    print()
    print(f"== data ({summary['machine']}; sqlite; local storage; {summary['seconds']:.0f} s) ==")
    up = summary.get("upload")
    if up:
        print(
            f"upload {human(up['bytes'])}: cp {up['cp_s']:.2f} s ({up['cp_mib_s']:.0f} MiB/s); "
            f"cp + sync {up['cp_sync_s']:.2f} s ({up['cp_sync_mib_s']:.0f} MiB/s); "
            f"medians of {CP_RUNS}"
        )
        for name, label in (("resumable", "resumable API"), ("multipart", "one request")):
            fig = up[name]
            parts = ""
            if "parts" in fig:
                parts = (
                    f", {fig['parts']} parts of {human(fig['part_size'])} in "
                    f"{fig['parts_s']:.2f} s, complete {fig['complete_s']:.2f} s"
                )
            print(
                f"  {label:<14} {fig['seconds']:6.2f} s ({fig['mib_s']:4.0f} MiB/s{parts}): "
                f"{fig['ratio_cp']:.2f}x cp, {fig['ratio_cp_sync']:.2f}x cp+sync; server RSS "
                f"+{fig['rss_growth_mb']:.1f} MB over {fig['rss_before_mb']:.0f} MB "
                f"({fig['rss_samples']} samples); server CPU {fig['server_cpu_s']:.1f} s"
            )
    pre = summary.get("preview")
    if pre:
        job = (
            f"; the commit's data.quality job: {pre['quality_job_s']:.1f} s "
            f"({pre['quality_job_status']})"
            if pre.get("quality_job_s") is not None
            else ""
        )
        print(
            f"preview of a {human(pre['bytes'])} CSV (first {PREVIEW_ROWS} rows): median "
            f"{pre['preview_s_median'] * 1000:.1f} ms of {PREVIEW_RUNS} (max "
            f"{max(pre['preview_s_all']) * 1000:.1f}); csv module "
            f"{pre['csv_module_s_median'] * 1000:.3f} ms ({pre['ratio']:.0f}x){job}"
        )
    qual = summary.get("quality")
    if qual:
        print(
            f"quality of {qual['rows']:,} Parquet rows ({qual['bytes'] / MiB:.0f} MiB): "
            f"SUMMARIZE {qual['summarize_s_median']:.2f} s, quality_report "
            f"{qual['quality_report_s_median']:.2f} s ({qual['ratio']:.2f}x), medians of "
            f"{len(qual['summarize_s_all'])}"
        )
        if "job_s" in qual:
            print(
                f"  data.quality job through the API: {qual['job_s']:.2f} s started→finished "
                f"({qual['job_ratio']:.2f}x SUMMARIZE; {qual['job_status']}, report "
                f"{qual['job_report_status']}); commit→seen finished "
                f"{qual['job_commit_to_seen_s']:.2f} s"
            )
    print()
    if up:
        for name, label in (("resumable", "resumable API"), ("multipart", "one-request route")):
            fig = up[name]
            ratio, growth = fig["ratio_cp"], fig["rss_growth_mb"]
            print(
                f"upload throughput, {label}: {ratio:.2f}x cp (target ≥ {TARGET_UPLOAD_RATIO}) "
                f"{verdict(ratio >= TARGET_UPLOAD_RATIO)}"
            )
            print(
                f"server memory growth, {label}: {growth:.1f} MB (target ≤ "
                f"{TARGET_UPLOAD_RSS_MB:.0f} MB) {verdict(growth <= TARGET_UPLOAD_RSS_MB)}"
            )
    if pre:
        value = pre["preview_s_median"]
        print(
            f"preview, first page of a {human(pre['bytes'])} CSV: {value:.3f} s (target ≤ "
            f"{TARGET_PREVIEW_S} s) {verdict(value <= TARGET_PREVIEW_S)}"
        )
    if qual:
        value = qual["ratio"]
        print(
            f"quality_report ÷ SUMMARIZE, {qual['rows']:,} rows: {value:.2f} (target ≤ "
            f"{TARGET_QUALITY_RATIO}) {verdict(value <= TARGET_QUALITY_RATIO)}"
        )


if __name__ == "__main__":
    main()
