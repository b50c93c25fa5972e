"""Where ``zhongtai serve``'s start-up time goes: a diagnostic, not a benchmark with a target.

Two views, both on a warm (already migrated) data directory, medians of ``--repeat``
fresh interpreters each:

1. **Phases** — the steps of ``zhongtai serve`` (``zhongtai.cli.main.serve``) timed in
   one process: imports, ``operator_errors`` (which imports the exception classes of
   the database and migration modules), settings, and inside ``bootstrap`` each call:
   plugin loading, the storage driver, the database ping, collecting migrations, the
   schema check/upgrade (on a warm restart only the fingerprint check: Alembic is not
   imported unless a version folder or the recorded revisions changed); then
   ``build_app`` and the ASGI lifespan start-up.
   Time spent importing a module lands in the phase that first imports it.
2. **Imports** — the real ``zhongtai serve`` and ``bench/bare_app.py`` run with
   ``-X importtime`` until their first 200; the self time of every module is summed
   per top-level package and the packages zhongtai imports on top of the bare app
   are listed, most expensive first.

Run::

    .venv/bin/python bench/profile_startup.py [--repeat 5] [--cprofile 40]

``--cprofile N`` adds the N most expensive functions (cumulative) of one in-process run.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    PYCACHE,
    bare_server,
    median,
    scratch_dir,
    zhongtai_server,
)

# --------------------------------------------------------------------------- phases (child)


def phases(home: str, top: int) -> dict[str, float]:
    """Run serve's start-up steps in this fresh process; return {phase: seconds}."""
    os.environ["ZHONGTAI_HOME"] = home
    out: dict[str, float] = {}
    last = [time.perf_counter()]

    def mark(name: str) -> None:
        now = time.perf_counter()
        out[name] = out.get(name, 0.0) + now - last[0]
        last[0] = now

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            mark("bootstrap: other")
            try:
                return fn(*args, **kwargs)
            finally:
                mark(name)

        return wrapper

    profiler = None
    if top:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()

    import click  # noqa: F401
    import uvicorn  # noqa: F401

    mark("import click, uvicorn")
    import zhongtai.cli.main as cli_main

    mark("import zhongtai.cli.main")
    from zhongtai.logs import configure_logging
    from zhongtai.platform import bootstrap
    from zhongtai.web.app import build_app

    mark("import zhongtai.platform, zhongtai.web.app (litestar)")
    with cli_main.operator_errors():
        mark("operator_errors(): imports metadata.database -> sqlalchemy")
        from zhongtai.settings import load_settings

        settings = load_settings()
        mark("load_settings")
    configure_logging("WARNING", settings.log_format)
    mark("configure_logging")

    import zhongtai.drivers
    import zhongtai.metadata.database
    import zhongtai.platform as platform_mod

    platform_mod.load_plugins = timed("bootstrap: load_plugins", platform_mod.load_plugins)
    drivers = zhongtai.drivers
    drivers.load_driver = timed("bootstrap: load_driver (storage)", drivers.load_driver)
    db_cls = zhongtai.metadata.database.Database
    db_cls.ping = timed("bootstrap: db.ping", db_cls.ping)
    platform_mod.collect_migrations = timed(
        "bootstrap: collect_migrations", platform_mod.collect_migrations
    )
    platform_mod.prepare_schema = timed(
        "bootstrap: prepare_schema (fingerprint; alembic if changed)", platform_mod.prepare_schema
    )
    mark("(instrumentation)")
    platform = bootstrap(settings)
    mark("bootstrap: other")
    app = build_app(platform)
    mark("build_app (Litestar app)")
    if "alembic" in sys.modules:
        out["(alembic was imported: the schema fingerprint did not match)"] = 0.0

    import asyncio

    async def lifespan() -> None:
        queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        await queue.put({"type": "lifespan.startup"})

        async def receive() -> dict[str, str]:
            return await queue.get()

        async def send(message: dict[str, str]) -> None:
            if message["type"].startswith("lifespan.startup"):
                mark("lifespan startup (plugins' startup hooks)")
                await queue.put({"type": "lifespan.shutdown"})

        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)

    asyncio.run(lifespan())
    out.pop("(instrumentation)", None)
    if profiler is not None:
        profiler.disable()
        import pstats

        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(top)
    return out


# --------------------------------------------------------------------------- imports


def import_self_times(stderr: str) -> dict[str, int]:
    """Parse ``-X importtime`` output into {module: self microseconds}."""
    times: dict[str, int] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cumulative, name = line.split(":", 1)[1].split("|")
        times[name.strip()] = int(self_us)
    return times


def server_imports(kind: str, home: Path, work: Path) -> dict[str, int]:
    """Module self import times of one real start (zhongtai or bare) until its first 200."""
    log = work / f"imports-{kind}.log"
    log.unlink(missing_ok=True)
    server = (
        zhongtai_server(home, log, bytecode_cache=True)
        if kind == "zhongtai"
        else bare_server(log, bytecode_cache=True)
    )
    server.env["PYTHONPROFILEIMPORTTIME"] = "1"
    with server:
        server.wait_ready()
    return import_self_times(log.read_text(errors="replace"))


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description="zhongtai start-up, phase by phase")
    parser.add_argument("--repeat", type=int, default=5, help="fresh processes per view")
    parser.add_argument("--cprofile", type=int, default=0, metavar="N", help="top N functions")
    parser.add_argument("--child", metavar="HOME", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(phases(args.child, args.cprofile)))
        return

    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    with scratch_dir("zt-profile-") as work:
        home = work / "home"

        def child(top: int = 0) -> dict[str, float]:
            cmd = [sys.executable, __file__, "--child", str(home), "--cprofile", str(top)]
            done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            if top:
                print(done.stderr)
            return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

        child()  # cold start: migrates the home and fills the bytecode cache
        runs = [child() for _ in range(args.repeat)]
        print(f"phases of a warm restart, in process (median of {args.repeat} processes):")
        total = 0.0
        for name in runs[0]:
            value = median([r.get(name, 0.0) for r in runs])
            total += value
            print(f"  {name:<70} {value * 1000:7.1f} ms")
        label = "sum (after interpreter start, before uvicorn binds)"
        print(f"  {label:<70} {total * 1000:7.1f} ms")

        zt_runs: list[dict[str, int]] = []
        bare_runs: list[dict[str, int]] = []
        for _ in range(args.repeat):  # interleaved, so machine noise falls on both
            zt_runs.append(server_imports("zhongtai", home, work))
            bare_runs.append(server_imports("bare", home, work))

        def by_package(runs: list[dict[str, int]], exclude: set[str]) -> dict[str, float]:
            per_run = []
            for r in runs:
                agg: collections.Counter[str] = collections.Counter()
                for module, us in r.items():
                    if module not in exclude:
                        agg[module.split(".")[0]] += us
                per_run.append(agg)
            names = set().union(*per_run)
            return {n: median([r.get(n, 0) for r in per_run]) / 1000 for n in names}

        bare_modules = set().union(*bare_runs)
        zt_total = median([sum(r.values()) for r in zt_runs]) / 1000
        bare_total = median([sum(r.values()) for r in bare_runs]) / 1000
        extra = by_package(zt_runs, bare_modules)
        print(
            f"\nimports during a real start (-X importtime, self times, median of {args.repeat}):"
        )
        print(
            f"  zhongtai serve {zt_total:.0f} ms, bare app {bare_total:.0f} ms, "
            f"modules only zhongtai imports: {sum(extra.values()):.0f} ms, by package:"
        )
        for name, ms in sorted(extra.items(), key=lambda kv: -kv[1])[:20]:
            print(f"    {name:<28} {ms:7.1f} ms")
        if args.cprofile:
            child(args.cprofile)


if __name__ == "__main__":
    main()
