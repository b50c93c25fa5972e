"""Start-up time: from process start of ``zhongtai serve`` to its first ``GET /readyz`` 200.

Three kinds of sample, interleaved round by round (the order rotates each round so
drift on a shared machine falls on all three alike):

* **warm restart** — ``zhongtai serve`` on a data directory that already exists and is
  migrated (the figure the targets apply to);
* **cold first start** — a fresh, empty ``ZHONGTAI_HOME`` each sample, so start-up also
  creates the database and runs every migration (reported, no target);
* **baseline** — ``bench/bare_app.py``: a one-route Litestar app served by uvicorn the
  same way (uvloop + httptools, one worker), from process start to its first 200.

Readiness is polled every ``--poll-ms`` (5 ms) with a raw socket. All installed
plugins load (zhongtai's default). Targets (from the issue): warm restart <= 1.5 s
absolute and <= 2x the bare app. Exits 0 whatever the verdict.

Run: ``.venv/bin/python bench/startup.py [--samples 9]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from _common import (
    RESULTS,
    Server,
    bare_server,
    machine,
    median,
    scratch_dir,
    verdict,
    zhongtai_server,
)

TARGET_ABSOLUTE_S = 1.5
TARGET_RATIO = 2.0


def measure(server: Server, poll: float) -> float:
    """Start ``server``, return seconds to its first 200, stop it."""
    with server:
        return server.wait_ready(poll=poll)


def main() -> None:
    parser = argparse.ArgumentParser(description="zhongtai serve start-up vs a bare Litestar app")
    parser.add_argument("--samples", type=int, default=9, help="samples of each kind (default 9)")
    parser.add_argument("--poll-ms", type=float, default=5.0, help="readiness poll interval")
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="run the servers without a .pyc cache (as this sandbox's environment does)",
    )
    args = parser.parse_args()
    poll = args.poll_ms / 1000
    cache = not args.no_bytecode_cache

    times: dict[str, list[float]] = {"warm": [], "cold": [], "bare": []}
    with scratch_dir("zt-bench-startup-") as work:
        log = work / "server.log"
        warm_home = work / "warm-home"

        def run(kind: str) -> float:
            if kind == "bare":
                return measure(bare_server(log, bytecode_cache=cache), poll)
            if kind == "warm":
                return measure(zhongtai_server(warm_home, log, bytecode_cache=cache), poll)
            home = Path(tempfile.mkdtemp(prefix="cold-home-", dir=work))
            try:
                return measure(zhongtai_server(home, log, bytecode_cache=cache), poll)
            finally:
                shutil.rmtree(home, ignore_errors=True)

        # Unmeasured warm-up: fills the bytecode cache and the OS page cache, and
        # creates + migrates the warm home (its first start is a cold start).
        print("warm-up (unmeasured) ...", flush=True)
        measure(bare_server(log, bytecode_cache=cache), poll)
        measure(zhongtai_server(warm_home, log, bytecode_cache=cache), poll)

        kinds = ["bare", "warm", "cold"]
        for i in range(args.samples):
            order = kinds[i % 3 :] + kinds[: i % 3]
            row = []
            for kind in order:
                seconds = run(kind)
                times[kind].append(seconds)
                row.append(f"{kind} {seconds:.3f} s")
            print(f"round {i + 1}/{args.samples}: " + ", ".join(row), flush=True)

    warm, cold, bare = (median(times[k]) for k in ("warm", "cold", "bare"))
    ratio = warm / bare
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "startup.json").write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "machine": machine(),
                "bytecode_cache": cache,
                "samples_s": times,
                "median_s": {"warm": warm, "cold": cold, "bare": bare},
                "ratio_warm_to_bare": ratio,
            },
            indent=2,
        )
    )

    print()
    print(
        f"machine: {machine()}; {args.samples} samples each, medians; "
        f"bytecode cache {'on (as an installed package)' if cache else 'OFF'}"
    )
    labels = {"warm": "warm restart ", "cold": "cold start   ", "bare": "bare litestar"}
    for kind, label in labels.items():
        v = times[kind]
        print(f"  {label}: min {min(v):.3f}  median {median(v):.3f}  max {max(v):.3f} s")
    print(
        f"startup cold first start (creates + migrates the database): zhongtai {cold:.2f} s, "
        f"{cold / bare:.2f}x bare (no target)"
    )
    print(
        f"startup warm restart: zhongtai {warm:.3f} s (target <= {TARGET_ABSOLUTE_S} s) "
        f"{verdict(warm <= TARGET_ABSOLUTE_S)}"
    )
    print(
        f"startup warm restart: zhongtai {warm:.2f} s, bare litestar {bare:.2f} s, "
        f"ratio {ratio:.2f}x (target <= {TARGET_RATIO:g}x) {verdict(ratio <= TARGET_RATIO)}"
    )


if __name__ == "__main__":
    main()
