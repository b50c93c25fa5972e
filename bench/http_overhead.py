"""Per-request overhead: ``GET /healthz`` through zhongtai's full stack vs a bare Litestar app.

Three servers run side by side, one uvicorn worker each (uvloop + httptools), all
started the way a user starts them:

* ``zhongtai``         — ``zhongtai serve`` with its defaults, access log ON (a JSON line
  per request to stderr, which goes to a file as under a process manager);
* ``zhongtai (no log)``— the same with ``ZHONGTAI_ACCESS_LOG=false``, to show what the
  access log costs;
* ``bare litestar``    — ``bench/bare_app.py`` (``GET /`` -> ``ok``), the baseline.

Two measurements:

1. **Throughput under load** — the same load generator, concurrency and duration
   against each server, interleaved round by round (order rotating); per-round
   ratios zhongtai/bare are taken, then the median. Load generator: ``wrk`` if it is
   installed (``apt-get install -y wrk``), else a pure-Python asyncio keep-alive
   client (raw sockets) — the output says which. Target: ratio >= 0.7.
   While it runs, the server process's CPU time (user + system, from ``/proc``) is
   read before and after and divided by the requests answered: **CPU µs per
   request**, a diagnostic with no target. The server is CPU-bound under this load,
   so its throughput is about 1e6 / that figure; unlike throughput, the figure hardly
   moves when other processes take turns on the cores, which makes it the steadier
   way to compare two versions of the code on a shared machine.
2. **Keep-alive latency, sequential** — one persistent connection, one request at a
   time, ``--seq-requests`` (2000) requests per server per round; p50 and p99.
   Target: zhongtai p50 <= 5 ms.

Exits 0 whatever the verdict; the figures are on the last lines.

Run: ``.venv/bin/python bench/http_overhead.py [--rounds 5 --duration 4 --connections 16]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass

from _common import (
    HOST,
    RESULTS,
    Server,
    bare_server,
    machine,
    median,
    percentile,
    process_cpu_seconds,
    read_response,
    request_bytes,
    scratch_dir,
    verdict,
    zhongtai_server,
)

TARGET_RATIO = 0.7
TARGET_SEQ_P50_MS = 5.0
WRK_INSTALL_HINT = (
    "wrk not found; for the preferred load generator: apt-get update && apt-get install -y wrk"
)


@dataclass
class LoadResult:
    """One load run against one server."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0
    cpu_us_per_request: float = float("nan")


@dataclass
class Target:
    """A server under test and the path it is hit on."""

    label: str
    server: Server
    path: str

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server.port}{self.path}"


# --------------------------------------------------------------------------- wrk

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def run_wrk(url: str, connections: int, duration: float, threads: int) -> LoadResult:
    """One ``wrk --latency`` run; parse requests/sec, p50, p99 and errors."""
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    return LoadResult(rps, p50, p99, errors, requests)


# --------------------------------------------------------------------------- python fallback


async def _py_worker(
    port: int, path: str, stop_at: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = request_bytes(path)
    clock = time.perf_counter
    try:
        while clock() < stop_at:
            t0 = clock()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append(clock() - t0)
            if status != 200:
                errors[0] += 1
    finally:
        writer.close()


async def _py_load(port: int, path: str, connections: int, duration: float) -> LoadResult:
    latencies: list[float] = []
    errors = [0]
    start = time.perf_counter()
    stop_at = start + duration
    await asyncio.gather(
        *(_py_worker(port, path, stop_at, latencies, errors) for _ in range(connections))
    )
    elapsed = time.perf_counter() - start
    latencies.sort()
    return LoadResult(
        len(latencies) / elapsed,
        percentile(latencies, 50) * 1000,
        percentile(latencies, 99) * 1000,
        errors[0],
        len(latencies),
    )


def run_python_load(port: int, path: str, connections: int, duration: float) -> LoadResult:
    """The fallback load generator: asyncio (uvloop if present) keep-alive connections."""
    try:
        import uvloop

        return uvloop.run(_py_load(port, path, connections, duration))
    except ImportError:
        return asyncio.run(_py_load(port, path, connections, duration))


# --------------------------------------------------------------------------- sequential


def sequential_latencies(port: int, path: str, n: int, warmup: int = 200) -> list[float]:
    """Latencies (seconds, sorted) of ``n`` requests, one at a time, on one connection."""
    request = request_bytes(path)
    out: list[float] = []
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        clock = time.perf_counter
        for i in range(warmup + n):
            t0 = clock()
            sock.sendall(request)
            status, _ = read_response(sock, buf)
            elapsed = clock() - t0
            if status != 200:
                raise RuntimeError(f"GET {path} answered {status}")
            if i >= warmup:
                out.append(elapsed)
    out.sort()
    return out


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description="zhongtai HTTP overhead vs a bare Litestar app")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per load run")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--seq-requests", type=int, default=2000, help="sequential requests")
    parser.add_argument(
        "--loadgen",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="load generator (auto: wrk if installed, else python)",
    )
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="run the servers without a .pyc cache (affects start-up only)",
    )
    args = parser.parse_args()
    cache = not args.no_bytecode_cache

    loadgen = args.loadgen
    has_wrk = shutil.which("wrk") is not None
    if loadgen == "auto":
        loadgen = "wrk" if has_wrk else "python"
    if loadgen == "wrk" and not has_wrk:
        raise SystemExit(WRK_INSTALL_HINT)
    if not has_wrk:
        print(WRK_INSTALL_HINT)
    loadgen_desc = (
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s"
        if loadgen == "wrk"
        else f"python asyncio keep-alive client, {args.connections} connections, "
        f"{args.duration:g}s (may itself limit throughput on 2 cores)"
    )

    def load(target: Target) -> LoadResult:
        assert target.server.proc is not None
        pid = target.server.proc.pid
        cpu_before = process_cpu_seconds(pid)
        if loadgen == "wrk":
            res = run_wrk(target.url, args.connections, args.duration, args.threads)
        else:
            res = run_python_load(target.server.port, target.path, args.connections, args.duration)
        if res.requests:
            cpu = process_cpu_seconds(pid) - cpu_before
            res.cpu_us_per_request = cpu / res.requests * 1e6
        return res

    with scratch_dir("zt-bench-http-") as work:
        targets = [
            Target(
                "zhongtai",
                zhongtai_server(work / "home-log", work / "zt-log.log", bytecode_cache=cache),
                "/healthz",
            ),
            Target(
                "zhongtai (no log)",
                zhongtai_server(
                    work / "home-nolog",
                    work / "zt-nolog.log",
                    bytecode_cache=cache,
                    access_log=False,
                    name="zhongtai-nolog",
                ),
                "/healthz",
            ),
            Target("bare litestar", bare_server(work / "bare.log", bytecode_cache=cache), "/"),
        ]
        try:
            for t in targets:  # one at a time: they would otherwise slow each other's start
                t.server.start()
                t.server.wait_ready()
            print(f"servers up; load generator: {loadgen_desc}", flush=True)
            for t in targets:  # warm-up, unmeasured
                if loadgen == "wrk":
                    run_wrk(t.url, args.connections, 1, args.threads)
                else:
                    run_python_load(t.server.port, t.path, args.connections, 1)

            loads: dict[str, list[LoadResult]] = {t.label: [] for t in targets}
            seq_p50: dict[str, list[float]] = {t.label: [] for t in targets}
            seq_p99: dict[str, list[float]] = {t.label: [] for t in targets}
            for r in range(args.rounds):
                order = targets[r % 3 :] + targets[: r % 3]
                for t in order:
                    res = load(t)
                    loads[t.label].append(res)
                    print(
                        f"round {r + 1}/{args.rounds} load {t.label:<18} {res.rps:9.0f} rps  "
                        f"p50 {res.p50_ms:6.2f} ms  p99 {res.p99_ms:6.2f} ms  "
                        f"cpu {res.cpu_us_per_request:6.1f} µs/req"
                        + (f"  ERRORS {res.errors}" if res.errors else ""),
                        flush=True,
                    )
                for t in order:
                    lat = sequential_latencies(t.server.port, t.path, args.seq_requests)
                    seq_p50[t.label].append(percentile(lat, 50) * 1000)
                    seq_p99[t.label].append(percentile(lat, 99) * 1000)
                    print(
                        f"round {r + 1}/{args.rounds} seq  {t.label:<18} "
                        f"p50 {seq_p50[t.label][-1]:.3f} ms  p99 {seq_p99[t.label][-1]:.3f} ms",
                        flush=True,
                    )
        finally:
            for t in targets:
                t.server.stop()
        with open(work / "zt-log.log", "rb") as fh:
            log_lines = sum(1 for _ in fh)

    def med(label: str, attr: str) -> float:
        return median([getattr(x, attr) for x in loads[label]])

    def ratios(label: str, base: str = "bare litestar") -> list[float]:
        """Per-round throughput ratios label/base (the two ran seconds apart)."""
        return [a.rps / b.rps for a, b in zip(loads[label], loads[base], strict=True)]

    def ratio(label: str) -> float:
        return median(ratios(label))

    zt, nolog, bare = "zhongtai", "zhongtai (no log)", "bare litestar"
    r_log, r_nolog = ratio(zt), ratio(nolog)
    log_cost = 1 - median(ratios(zt, nolog))
    zt_seq = median(seq_p50[zt])

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "http_overhead.json").write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "machine": machine(),
                "loadgen": loadgen_desc,
                "load": {k: [vars(x) for x in v] for k, v in loads.items()},
                "sequential_p50_ms": seq_p50,
                "sequential_p99_ms": seq_p99,
                "ratio": {"access_log_on": r_log, "access_log_off": r_nolog},
                "cpu_us_per_request": {
                    label: med(label, "cpu_us_per_request") for label in (zt, nolog, bare)
                },
            },
            indent=2,
        )
    )

    print()
    print(
        f"machine: {machine()}; load generator: {loadgen}; {args.rounds} interleaved rounds, "
        f"medians; access log wrote {log_lines} lines"
    )
    for label in (zt, nolog, bare):
        print(
            f"  {label:<18} {med(label, 'rps'):9.0f} rps  p50 {med(label, 'p50_ms'):6.2f} ms  "
            f"p99 {med(label, 'p99_ms'):6.2f} ms under load;  sequential keep-alive "
            f"p50 {median(seq_p50[label]):.3f} ms  p99 {median(seq_p99[label]):.3f} ms"
        )
    print(
        "per-round ratios to bare: zhongtai "
        + " ".join(f"{x:.2f}" for x in ratios(zt))
        + "; zhongtai (no log) "
        + " ".join(f"{x:.2f}" for x in ratios(nolog))
    )
    cpu = {label: med(label, "cpu_us_per_request") for label in (zt, nolog, bare)}
    print(
        f"server CPU per request under load (median, diagnostic): zhongtai {cpu[zt]:.0f} µs, "
        f"zhongtai (no log) {cpu[nolog]:.0f} µs, bare litestar {cpu[bare]:.0f} µs; "
        f"bare/zhongtai {cpu[bare] / cpu[zt]:.2f} (no target)"
    )
    print(
        f"http access log cost: {log_cost * 100:.0f}% of zhongtai's throughput "
        f"(ratio with ZHONGTAI_ACCESS_LOG=false: {r_nolog:.2f})"
    )
    print(
        f"http throughput ({loadgen}, {args.connections} connections): "
        f"zhongtai {med(zt, 'rps'):.0f} rps (access log on, default), "
        f"bare litestar {med(bare, 'rps'):.0f} rps, ratio {r_log:.2f} "
        f"(target >= {TARGET_RATIO}) {verdict(r_log >= TARGET_RATIO)}"
    )
    print(
        f"http keep-alive sequential p50 (1 connection, N={args.seq_requests}): "
        f"zhongtai {zt_seq:.2f} ms, bare litestar {median(seq_p50[bare]):.2f} ms "
        f"(target <= {TARGET_SEQ_P50_MS:g} ms) {verdict(zt_seq <= TARGET_SEQ_P50_MS)}"
    )


if __name__ == "__main__":
    main()
