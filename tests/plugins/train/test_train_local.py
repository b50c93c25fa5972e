"""The local backend's logs, read directly from the backend (the API tests run it too)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from zhongtai_train.backends import Distributed, Launch, LogChunk, Requirements
from zhongtai_train.backends.local import LocalBackend, LocalOptions

# Each rank prints numbered lines as fast as it can, unbuffered: each print is two
# writes (the text, then the newline), which is what spliced two ranks' lines together
# when they shared one file.
CHATTY = """\
import os
rank = os.environ.get("RANK", "0")
for i in range(3000):
    print(f"rank {rank} line {i:05d} " + "x" * 40)
print(f"rank {rank} no newline at the end", end="")
"""


def _launch(workdir: Path, procs: int) -> Launch:
    return Launch(
        job_id=uuid.uuid4().hex,
        project_id="p1",
        attempt=1,
        name=f"zt-{uuid.uuid4().hex[:12]}",
        argv=("python3", "chatty.py"),
        env={},
        secret_env=frozenset(),
        workdir=workdir,
        image=None,
        requirements=Requirements(cpu=1, memory_mb=512),
        distributed=Distributed(procs_per_node=procs),
        inputs=(),
        timeout=120,
        options=LocalOptions(),
    )


def _run(tmp_path: Path, procs: int) -> tuple[list[str], list[str], LogChunk]:
    """Everything the run printed, as whole lines read while it ran, then its rest."""
    workdir = tmp_path / "run" / "code"
    workdir.mkdir(parents=True)
    (workdir / "chatty.py").write_text(CHATTY)
    backend = LocalBackend()
    handle = backend.submit(_launch(workdir, procs))
    try:
        lines: list[str] = []
        cursor: str | None = None
        deadline = time.monotonic() + 60
        while not backend.poll(handle).final:
            assert time.monotonic() < deadline, "the run did not end"
            chunk = backend.read_logs(handle, cursor)
            lines += chunk.lines
            cursor = chunk.cursor
            time.sleep(0.01)
        assert backend.poll(handle).state == "succeeded"
        while chunk := backend.read_logs(handle, cursor):
            if not chunk.lines:
                break
            lines += chunk.lines
            cursor = chunk.cursor
        rest = backend.read_rest(handle, cursor)
        return lines, rest.lines, backend.read_rest(handle, rest.cursor)
    finally:
        backend.cleanup(handle)


def test_ranks_printing_at_once_never_splice_their_lines(tmp_path):
    lines, rest, after = _run(tmp_path, procs=2)
    for rank in ("0", "1"):
        mine = [line for line in lines if line.startswith(f"rank {rank} line")]
        assert mine == [f"rank {rank} line {i:05d} " + "x" * 40 for i in range(3000)]
    assert len(lines) == 6000, [line for line in lines if len(line) != 58][:3]
    # The unterminated last line of each rank comes once the run has ended, and once.
    assert sorted(rest) == ["rank 0 no newline at the end", "rank 1 no newline at the end"]
    assert after.lines == []


def test_one_process_keeps_one_log_and_a_plain_offset(tmp_path):
    lines, rest, after = _run(tmp_path, procs=1)
    assert lines == [f"rank 0 line {i:05d} " + "x" * 40 for i in range(3000)]
    assert rest == ["rank 0 no newline at the end"]
    assert after.lines == []
    assert sorted(p.name for p in (tmp_path / "run").glob("*.log")) == ["output.log"]
    assert after.cursor == str((tmp_path / "run" / "output.log").stat().st_size)


def test_a_handle_from_before_the_per_rank_logs_still_reads_its_one_log(tmp_path):
    log = tmp_path / "output.log"
    log.write_bytes(b"first\nsecond\nthird, unfinished")
    handle = json.dumps({"pid": 1, "log": str(log), "status": [], "memory": 1, "grace": 1})
    backend = LocalBackend()
    chunk = backend.read_logs(handle, None)
    assert chunk == LogChunk(["first", "second"], "13")
    assert backend.read_logs(handle, "6") == LogChunk(["second"], "13")
    assert backend.read_rest(handle, "13") == LogChunk(
        ["third, unfinished"], str(log.stat().st_size)
    )
