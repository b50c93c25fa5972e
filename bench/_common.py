"""Shared helpers for the benchmarks: starting servers, raw-socket HTTP, statistics.

Everything here talks HTTP over plain sockets (no httpx, no requests) so that the
client costs as little as possible and never hides the server's cost.

Bytecode: this sandbox exports ``PYTHONDONTWRITEBYTECODE=1`` and the virtual
environment holds no ``.pyc`` files, so every interpreter start would compile every
imported module from source — something no real install does (pip compiles at install
time; otherwise Python caches on first import). By default the servers under test run
with ``PYTHONPYCACHEPREFIX`` pointing at a private cache directory (``.venv`` is never
written), warmed by one unmeasured start. ``--no-bytecode-cache`` measures the
environment as it is instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"  # git-ignored
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = VENV_BIN / "python"
ZHONGTAI = VENV_BIN / "zhongtai"
BARE_APP = BENCH / "bare_app.py"
PYCACHE = Path(tempfile.gettempdir()) / "zhongtai-bench-pycache"
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def child_env(*, bytecode_cache: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a server under test (see the module docstring on bytecode)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZHONGTAI_")}
    if bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env.update(extra or {})
    return env


# --------------------------------------------------------------------------- raw HTTP


def request_bytes(path: str, *, close: bool = False) -> bytes:
    """A minimal HTTP/1.1 GET request (keep-alive unless ``close``)."""
    conn = b"Connection: close\r\n" if close else b""
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n".encode() + conn + b"\r\n"


def read_response(sock: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    """Read one HTTP/1.1 response (Content-Length framed) from ``sock``.

    ``buf`` carries bytes already received past the previous response.
    Returns (status, body).
    """
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the response headers")
        buf += chunk
    head = bytes(buf[:end]).decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    total = end + 4 + length
    while len(buf) < total:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed inside the response body")
        buf += chunk
    body = bytes(buf[end + 4 : total])
    del buf[:total]
    return status, body


def get_status(port: int, path: str, timeout: float = 2.0) -> int | None:
    """Status of one ``GET path`` on a fresh connection, or None if nothing listens."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(request_bytes(path, close=True))
            status, _ = read_response(sock, bytearray())
            return status
    except (ConnectionError, OSError):
        return None


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    """A server process under test, with its port and the path that means "ready"."""

    name: str
    argv: list[str]
    port: int
    ready_path: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    _log: object | None = field(default=None, repr=False)

    def start(self) -> None:
        """Spawn the process; ``started_at`` is taken just before the fork."""
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )

    def wait_ready(self, *, poll: float = 0.005, timeout: float = 120.0) -> float:
        """Poll ``ready_path`` every ``poll`` seconds; return seconds from start to first 200."""
        assert self.proc is not None
        deadline = time.perf_counter() + timeout
        while True:
            status = get_status(self.port, self.ready_path)
            if status == 200:
                return time.perf_counter() - self.started_at
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RuntimeError(f"{self.name} exited with {code}:\n{self.tail()}")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout} s:\n{self.tail()}")
            time.sleep(poll)

    def stop(self) -> None:
        """Ask the process to shut down (SIGTERM), then kill it if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None

    def tail(self, n: int = 20) -> str:
        """The last ``n`` lines of the server's output."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def zhongtai_server(
    home: Path,
    log_path: Path,
    *,
    bytecode_cache: bool,
    access_log: bool = True,
    name: str = "zhongtai",
    env: dict[str, str] | None = None,
) -> Server:
    """``zhongtai serve`` on a free port with ``home`` as its data directory."""
    port = free_port()
    env = child_env(
        bytecode_cache=bytecode_cache,
        extra={
            "ZHONGTAI_HOME": str(home),
            "ZHONGTAI_ACCESS_LOG": str(access_log).lower(),
            **(env or {}),
        },
    )
    argv = [str(ZHONGTAI), "serve", "--host", HOST, "--port", str(port)]
    return Server(name, argv, port, "/readyz", env, log_path)


def bare_server(log_path: Path, *, bytecode_cache: bool) -> Server:
    """The baseline: a one-route Litestar app under uvicorn (see bare_app.py)."""
    port = free_port()
    argv = [str(PYTHON), str(BARE_APP), "--host", HOST, "--port", str(port)]
    env = child_env(bytecode_cache=bytecode_cache)
    return Server("bare litestar", argv, port, "/", env, log_path)


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (Linux; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of already sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def machine() -> str:
    """A one-line description of where the figures were taken."""
    return f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, {sys.platform}"


def enqueue_as_platform(queue: Any, function: str, job_id: str, timeout: int, ttl: int) -> None:
    """Enqueue ``function(job_id)`` on an RQ ``queue`` with the call and the arguments
    the platform's rq driver uses for one job (zhongtai.jobs.queue.rq.RQQueue.dispatch:
    ``enqueue_many``, one round trip): what the baselines of bench/jobs.py do per job,
    so that RQ's share of the work is the same. (The driver sends the jobs of
    concurrent requests together; the baselines enqueue one at a time.)"""
    queue.enqueue_many(
        [
            queue.prepare_data(
                function,
                args=(job_id,),
                job_id=job_id,
                timeout=timeout,
                result_ttl=ttl,
                failure_ttl=ttl,
                description=f"bench job {job_id}",
            )
        ]
    )
